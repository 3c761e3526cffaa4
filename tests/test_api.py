"""The HTTP API in-process over a real database, chunks scored inline: by the fake backend in
the fast tier, by the real engine on the tiny model in the slow tier."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from db.models import utcnow
from labelq.scoring import Item as ScoreItem
from labelq.scoring import ItemResult, Scorer
from labelq.settings import Settings
from labelq.spec import parse_spec
from service.context import Ctx
from tests.conftest import InlineDispatcher, create_key, make_client, services_of, system

SPEC = {
    "name": "api-test",
    "template": "Review: {{ text }}\nSentiment:",
    "labels": {"positive": [" positive", " good"], "negative": " negative"},
}


def test_classifiers_versions_and_errors(bare_client: Any) -> None:
    c, _ = bare_client
    r = c.post("/v1/classifiers", json=SPEC)
    assert r.status_code == 201 and r.json()["version"] == 1
    assert c.post("/v1/classifiers", json=SPEC).status_code == 200
    yaml_spec = "name: api-test\ntemplate: '{{ text }} =>'\nlabels: {a: ' a', b: ' b'}\n"
    r = c.post("/v1/classifiers", content=yaml_spec, headers={"Content-Type": "application/yaml"})
    assert r.status_code == 201 and r.json()["version"] == 2
    detail = c.get("/v1/classifiers/api-test").json()
    assert detail["latest_version"] == 2 and [v["version"] for v in detail["versions"]] == [1, 2]
    assert c.get("/v1/classifiers").json()[0]["latest_version"] == 2
    bad = c.post("/v1/classifiers", json={**SPEC, "labels": {"x": " x"}})
    assert bad.status_code == 422 and bad.json()["field"] == "labels"
    assert "at least two labels" in bad.json()["error"]
    missing = c.get("/v1/classifiers/nope")
    assert missing.status_code == 404 and "does not exist" in missing.json()["error"]
    assert c.get("/openapi.json").json()["info"]["title"] == "labelq"


def test_job_validation_errors_name_the_field(bare_client: Any) -> None:
    c, _ = bare_client
    c.post("/v1/classifiers", json=SPEC)
    r = c.post("/v1/jobs", json={"classifier": "api-test"})
    assert r.status_code == 422 and r.json()["field"] == "items"
    r = c.post("/v1/jobs", json={"classifier": "nope", "items": []})
    assert r.status_code == 404 and r.json()["field"] == "classifier"
    r = c.post(
        "/v1/jobs", content=b'{"text": "x"}\n', headers={"Content-Type": "application/x-ndjson"}
    )
    assert r.status_code == 422 and r.json()["field"] == "classifier"
    assert c.get("/v1/jobs/nope").status_code == 404
    r = c.get("/v1/jobs/x/results", params={"format": "xml"})
    assert r.status_code == 422 and r.json()["field"] == "query.format"


def test_json_job_end_to_end(client: Any, scorer: Scorer) -> None:
    c, dispatcher = client
    c.post("/v1/classifiers", json=SPEC)
    items = [{"custom_id": f"i{i}", "text": f"review number {i}", "src": i} for i in range(9)]
    items.insert(3, {"custom_id": "bad", "txt": "wrong field"})
    items.insert(5, "not an object")
    r = c.post("/v1/jobs", json={"classifier": "api-test", "items": items, "metadata": {"run": 1}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["total"] == 11 and job["metadata"] == {"run": 1}
    assert dispatcher.sent[0][1].startswith("labelq.tiny-model.")
    job = c.get(f"/v1/jobs/{job['id']}").json()
    assert (job["state"], job["succeeded"], job["failed"], job["progress"]) == (
        "partial",  # two items have no result, and the state says so
        9,
        2,
        1.0,
    )
    assert job["failures"] == {"input": 2}

    rows = []
    cursor = None
    while True:
        page = c.get(
            f"/v1/jobs/{job['id']}/results",
            params={"limit": 4, **({"cursor": cursor} if cursor else {})},
        ).json()
        rows += page["data"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [r["custom_id"] for r in rows] == [
        it["custom_id"] if isinstance(it, dict) else None for it in items
    ]
    assert rows[3]["status"] == "failed" and rows[3]["field"] == "text" and rows[3]["line"] == 4
    assert rows[5]["status"] == "failed" and "JSON object" in rows[5]["error"]
    direct = scorer.score(
        parse_spec(SPEC), [ScoreItem(fields={"text": "review number 0", "src": 0})]
    )[0]
    assert isinstance(direct, ItemResult)
    assert rows[0]["probs"] == pytest.approx(direct.probs, abs=1e-6)
    assert rows[0]["extra"] == {"src": 0}

    jsonl = c.get(f"/v1/jobs/{job['id']}/results", params={"format": "jsonl"})
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    # pages pass stored results through unparsed; the export parses them: the same rows
    assert [json.loads(line) for line in jsonl.text.splitlines()] == rows
    r = c.post(f"/v1/jobs/{job['id']}/labels", json={str(rows[0]["custom_id"]): "positive"})
    assert r.status_code == 200, r.text
    first = c.get(f"/v1/jobs/{job['id']}/results", params={"limit": 1}).json()["data"][0]
    assert first == {**rows[0], "gold_label": "positive"}
    table = list(
        csv.DictReader(
            io.StringIO(c.get(f"/v1/jobs/{job['id']}/results", params={"format": "csv"}).text)
        )
    )
    assert len(table) == 11 and float(table[0]["p_positive"]) == pytest.approx(
        rows[0]["probs"]["positive"]
    )
    assert table[3]["error"].startswith("missing field")
    assert c.get("/v1/jobs").json()["data"][0]["id"] == job["id"]


def test_jsonl_upload_with_idempotency_key(client: Any) -> None:
    c, dispatcher = client
    c.post("/v1/classifiers", json=SPEC)
    body = "\n".join(
        [json.dumps({"custom_id": i, "text": f"t {i}"}) for i in range(6)] + ["{oops", ""]
    )
    headers = {"Content-Type": "application/x-ndjson", "Idempotency-Key": "k-1"}
    r = c.post(
        "/v1/jobs", params={"classifier": "api-test"}, content=body.encode(), headers=headers
    )
    assert r.status_code == 202, r.text
    again = c.post(
        "/v1/jobs", params={"classifier": "api-test"}, content=body.encode(), headers=headers
    )
    assert again.status_code == 200 and again.json()["id"] == r.json()["id"]
    assert len(dispatcher.sent) == 1
    rows = list(
        map(json.loads, c.get(f"/v1/jobs/{r.json()['id']}/results?format=jsonl").text.splitlines())
    )
    assert [row["custom_id"] for row in rows] == [0, 1, 2, 3, 4, 5, None]
    assert rows[6]["line"] == 7 and "invalid JSON" in rows[6]["error"]


def test_cancel_stops_pending_chunks(bare_client: Any) -> None:
    c, _dispatcher = bare_client
    c.post("/v1/classifiers", json=SPEC)
    items = [{"text": f"t{i}"} for i in range(10)]
    job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
    assert job["state"] == "queued"
    r = c.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled" and r.json()["cancelled"] == 10
    assert c.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
    rows = c.get(f"/v1/jobs/{job['id']}/results").json()["data"]
    assert {row["status"] for row in rows} == {"cancelled"}


def test_no_key_no_service_and_revoking_every_key_never_opens_it(factory: Any) -> None:
    """Without `--no-auth` a request needs a key, on loopback too, before any key exists and
    after the last one is revoked."""
    from labelq.settings import Settings
    from service import keys

    c, _ = make_client(factory, None, no_auth=False)
    with c:
        r = c.get("/v1/classifiers")
        assert r.status_code == 401 and r.json()["field"] == "Authorization"
        key = create_key(factory, "t")
        assert c.get("/v1/classifiers", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            c.get("/v1/classifiers", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
        # The scheme in any case, any spaces: the same key (and the same rate window).
        spaced = {"Authorization": f"  bearer    {key} "}
        assert c.get("/v1/classifiers", headers=spaced).status_code == 200
        ctx = system(factory, Settings())
        for row in keys.listed(ctx):
            keys.revoke(ctx, row.id)
        c.app.state.labelq.services.trusted_keys.forget(keys.listed(ctx)[0].id)
        assert c.get("/v1/classifiers").status_code == 401, "no key left: still no service"
        assert (
            c.get("/v1/classifiers", headers={"Authorization": f"Bearer {key}"}).status_code == 401
        )
        assert c.get("/healthz").status_code == 200


def test_served_open_to_loopback_clients_that_name_loopback(factory: Any) -> None:
    """`--no-auth`: loopback clients only, and only when their Host header names loopback (a
    browser led by DNS rebinding, or a reverse proxy, sends another name)."""
    c, _ = make_client(factory, None)
    with c:
        assert c.get("/v1/classifiers").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/v1/classifiers", headers={"Host": host}).status_code == 200, host
        for host in ("labelq.example.com", "attacker.example:8000", "10.0.0.5"):
            r = c.get("/v1/classifiers", headers={"Host": host})
            assert r.status_code == 401 and r.json()["field"] == "Host", host
    app = create_app(
        services_of(factory, Settings(model="m", no_auth=True), InlineDispatcher(None))
    )
    with TestClient(app, base_url="http://127.0.0.1", client=("203.0.113.9", 5000)) as remote:
        r = remote.get("/v1/classifiers")
        assert r.status_code == 401 and r.json()["field"] == "Authorization"


def test_health_ready_metrics(bare_client: Any) -> None:
    c, _ = bare_client
    assert c.get("/healthz").json() == {"status": "ok"}
    ready = c.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": True, "broker": True}
    c.post("/v1/classifiers", json=SPEC)
    c.post("/v1/jobs", json={"classifier": "api-test", "items": [{"text": "x"}]})
    text = c.get("/metrics").text
    assert "labelq_jobs_submitted_total 1.0" in text
    assert 'labelq_jobs{state="queued"} 1.0' in text
    assert 'labelq_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text


def test_readyz_reports_a_dead_broker_and_stays_ready(factory: Any) -> None:
    """A broker that does not answer is reported, but the API stays ready (every pod would
    otherwise leave its Service at once on a Redis blip) and still takes a job: the reconciler
    sends its tasks when the broker is back. A database that does not answer is not ready."""
    from service.dispatch import CeleryDispatcher

    dead = CeleryDispatcher("redis://127.0.0.1:1/0")
    app = create_app(services_of(factory, Settings(model="m", no_auth=True), dead))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5)) as c:
        r = c.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["broker"] is False
        assert r.json()["degraded"] == ["broker"]
        c.post("/v1/classifiers", json=SPEC)
        taken = c.post("/v1/jobs", json={"classifier": "api-test", "items": [{"text": "x"}]})
        assert taken.status_code == 202, taken.text
    gone = create_app(services_of(_broken_database(), Settings(model="m"), dead))
    with TestClient(gone) as c:
        assert c.get("/readyz").status_code == 503


def _broken_database() -> Any:
    from sqlalchemy.orm import sessionmaker

    from tests.conftest import engine_at

    return sessionmaker(engine_at("postgresql+psycopg://nobody@127.0.0.1:1/none"))


def test_retry_resubmits_failed_and_cancelled_items(bare_client: Any) -> None:
    c, dispatcher = bare_client
    c.post("/v1/classifiers", json=SPEC)
    body = "\n".join(
        [json.dumps({"custom_id": f"k{i}", "text": f"t{i}"}) for i in range(5)]
        + ['{"custom_id": "bad", "txt": 1}', "{not json"]
    )
    job = c.post(
        "/v1/jobs",
        params={"classifier": "api-test"},
        content=body.encode(),
        headers={"Content-Type": "application/x-ndjson"},
    ).json()
    c.post(f"/v1/jobs/{job['id']}/cancel")
    retry = c.post(f"/v1/jobs/{job['id']}/retry")
    assert retry.status_code == 202
    assert retry.json()["state"] == "queued"  # its items are ingested after the answer
    new = c.get(f"/v1/jobs/{retry.json()['id']}").json()
    assert new["metadata"] == {"retry_of": job["id"]} and new["total"] == 6
    # Asked again: the same retry job, not a second one scoring the same items.
    assert c.post(f"/v1/jobs/{job['id']}/retry").json()["id"] == new["id"]
    rows = c.get(f"/v1/jobs/{new['id']}/results").json()["data"]
    assert [r["custom_id"] for r in rows] == ["k0", "k1", "k2", "k3", "k4", "bad"]
    assert rows[5]["status"] == "failed" and rows[5]["line"] == 6
    assert dispatcher.sent[-1][0] == new["id"]


def test_api_never_imports_the_engine() -> None:
    import subprocess
    import sys

    code = (
        "import sys, api.app, api.cli, api.server, embedded.cli, service.wiring; "
        "heavy = [m for m in ('vllm', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("with_key", [False, True], ids=["open", "key"])
def test_reads_go_on_when_postgres_closes_their_connections(
    factory: Any, fake_scorer: Scorer, db_url: str, with_key: bool
) -> None:
    """The event loop's read connections have no pre-ping: when the server closes them (a
    restart, an idle timeout, pg_terminate_backend), the next read on each fails, and must be
    run again on a new connection rather than answered with a 500. Every read route a poller
    uses, on the asyncpg driver path (status, a page as stored) and on SQLAlchemy's (a
    recomputed page, listings). Without a key the key check is the first read to find its
    connection dead (SQLAlchemy's path); with one, the key is trusted from the first request
    and the status poll is (the driver path)."""
    from sqlalchemy import create_engine, text

    c, _ = make_client(factory, fake_scorer)
    if with_key:
        c.headers["Authorization"] = f"Bearer {create_key(factory, 'poller')}"
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items = [{"custom_id": f"i{i}", "text": f"review {i}"} for i in range(12)]
        job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
        reads = [
            f"/v1/jobs/{job['id']}",
            f"/v1/jobs/{job['id']}/results?limit=5",
            f"/v1/jobs/{job['id']}/results?limit=5&calibration=none",
            "/v1/jobs",
            "/v1/classifiers",
        ]
        before = [c.get(path).json() for path in reads]
        admin = create_engine(db_url, isolation_level="AUTOCOMMIT")
        for _ in range(3):  # each time, every pooled connection is a dead one
            with admin.connect() as conn:
                closed = conn.execute(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert closed >= 1
            for path, seen in zip(reads, before, strict=True):
                r = c.get(path)
                assert r.status_code == 200, (path, r.text)
                assert _without_warnings(r.json()) == _without_warnings(seen), path
        admin.dispose()


def _without_warnings(body: Any) -> Any:
    return {k: v for k, v in body.items() if k != "warnings"} if isinstance(body, dict) else body


@pytest.mark.parametrize("access_log", [False, True])
def test_serve_hands_uvicorn_a_frozen_heap(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, access_log: bool
) -> None:
    """`labelq serve` freezes what startup made before it serves (so a full collection under
    load does not walk it, stopping the loop for 100+ ms), and logs a line per request only
    when asked to."""
    import argparse
    import gc

    import uvicorn

    from api import server
    from db.migrate import upgrade
    from embedded import cli

    url = f"sqlite:///{tmp_path / 'labelq.db'}"
    upgrade(url)
    seen: dict[str, Any] = {}

    def run(app: Any, **options: Any) -> None:
        seen.update(options, frozen=gc.get_freeze_count(), app=app)

    monkeypatch.setattr(uvicorn, "run", run)
    settings = Settings(database_url=url, model="tiny-model", api_access_log=access_log)
    args = argparse.Namespace(
        host="127.0.0.1", port=server._free_port(), embedded=False, no_auth=False
    )
    gc.unfreeze()
    try:
        assert cli._serve(args, settings) == 0
    finally:
        gc.unfreeze()  # the rest of the test session collects as usual
    assert seen["frozen"] > 10_000, "the app's objects are frozen before it serves"
    assert seen["access_log"] is access_log
    assert seen["proxy_headers"] is False, "X-Forwarded-For is believed from no one by default"


def test_a_retry_is_held_to_the_apps_limits_not_the_environments(
    factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry ingests its items under the settings the app was built with, as an upload
    does: not under whatever LABELQ_ variables the process's environment holds."""
    c, _ = make_client(factory, None)  # chunks stay queued
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items = [{"custom_id": f"k{i}", "text": f"t{i}"} for i in range(3)]
        job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
        c.post(f"/v1/jobs/{job['id']}/cancel")
        monkeypatch.setenv("LABELQ_MAX_ITEMS_PER_JOB", "2")  # not the app's limit
        retry = c.post(f"/v1/jobs/{job['id']}/retry")
        assert retry.status_code == 202, retry.text
        new = c.get(f"/v1/jobs/{retry.json()['id']}").json()
        assert (new["total"], new["state"], new["error"]) == (3, "queued", None)


def test_a_retry_waits_for_its_job_to_end(bare_client: Any) -> None:
    c, _ = bare_client
    c.post("/v1/classifiers", json=SPEC)
    job = c.post("/v1/jobs", json={"classifier": "api-test", "items": [{"text": "x"}]}).json()
    r = c.post(f"/v1/jobs/{job['id']}/retry")
    assert r.status_code == 409 and r.json()["field"] == "job_id"
    assert "queued" in r.json()["error"]


def test_an_upload_cut_off_ends_and_gives_its_key_back(factory: Any) -> None:
    """The process receiving an upload dies halfway (here: the items stop coming and nothing
    seals the job). Its upload lease runs out, the sweep fails the job with what it stored,
    and the Idempotency-Key makes a new job on the client's next try."""
    from db.models import Job
    from service import ingest
    from service.reconcile import sweep

    c, _ = make_client(factory, None, upload_lease_seconds=60)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        ctx = system(factory, c.app.state.labelq.settings).acting_for("default")
        request = ingest.JobRequest(classifier="api-test", idempotency_key="nightly-1")
        opened = ingest.open_job(ctx, request)
        assert opened.submission is not None
        entries = [ScoreItem(custom_id=f"i{i}", fields={"text": "x"}, line=i) for i in range(7)]
        ingest.add(ctx, opened.submission, entries)  # ... and then nothing more
        assert sweep(Ctx.system(ctx.services)).uploads_ended == []  # the lease still holds
        with factory.begin() as s:
            s.get_one(Job, opened.job_id).upload_expires_at = utcnow() - timedelta(seconds=1)
        assert sweep(Ctx.system(ctx.services)).uploads_ended == [opened.job_id]
        ended = c.get(f"/v1/jobs/{opened.job_id}").json()
        assert ended["state"] == "failed" and "interrupted after 7 items" in ended["error"]
        assert len(c.get(f"/v1/jobs/{opened.job_id}/results").json()["data"]) == 7
        again = c.post(
            "/v1/jobs",
            json={"classifier": "api-test", "items": [{"text": "x"}]},
            headers={"Idempotency-Key": "nightly-1"},
        ).json()
        assert again["id"] != opened.job_id and again["total"] == 1


def test_a_job_no_worker_takes_ends_expired_at_its_deadline(factory: Any) -> None:
    from db.models import Job
    from service.reconcile import sweep

    c, _ = make_client(factory, None)  # no worker: chunks stay queued
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items = [{"custom_id": f"k{i}", "text": "x"} for i in range(5)]
        body = {"classifier": "api-test", "items": items, "expires_after": 3600}
        job = c.post("/v1/jobs", json=body).json()
        ctx = Ctx.system(c.app.state.labelq.services)
        assert sweep(ctx).jobs_expired == []
        with factory.begin() as s:
            row = s.get_one(Job, job["id"])
            assert row.expires_at is not None  # an hour from its submission
            row.expires_at = utcnow() - timedelta(seconds=1)
        assert sweep(ctx).jobs_expired == [job["id"]]
        ended = c.get(f"/v1/jobs/{job['id']}").json()
        assert (ended["state"], ended["cancelled"]) == ("expired", 5)
        assert ended["error"].startswith("expired: not ended")
        rows = c.get(f"/v1/jobs/{job['id']}/results").json()["data"]
        assert {r["status"] for r in rows} == {"cancelled"}
        assert sweep(ctx).jobs_expired == []


def test_a_cancel_whose_worker_died_ends(factory: Any) -> None:
    """Cancelled while a worker scores a chunk, then that worker dies: nobody holds the
    chunk, and the job still ends `cancelled` once the lease ran out."""
    from db import chunks
    from db.models import Chunk
    from service.reconcile import sweep

    c, _ = make_client(factory, None)
    with c:
        c.post("/v1/classifiers", json=SPEC)
        items = [{"text": f"t{i}"} for i in range(6)]  # chunks of 4 and 2
        job = c.post("/v1/jobs", json={"classifier": "api-test", "items": items}).json()
        with factory.begin() as s:
            work = chunks.claim_chunk(s, job["id"], 0, "dies", lease_seconds=60, max_attempts=3)
        assert work is not None
        assert c.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelling"
        ctx = Ctx.system(c.app.state.labelq.services)
        sweep(ctx)
        assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "cancelling"  # lease live
        with factory.begin() as s:
            s.get_one(Chunk, work.chunk_id).lease_expires_at = utcnow() - timedelta(seconds=1)
        assert job["id"] in sweep(ctx).jobs_ended
        ended = c.get(f"/v1/jobs/{job['id']}").json()
        assert (ended["state"], ended["cancelled"]) == ("cancelled", 6)
