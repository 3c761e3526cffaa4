"""Erasure and retention: `DELETE /v1/jobs/{id}` (a tombstone, or nothing), a tenant's erasure
(every table walked), retention by tenant and classifier, all in bounded batches that a
second sweep continues; a job erased while it is scored ends cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from db import chunks as chunk_rows
from db.models import Base, Chunk, Job, JobItem, utcnow
from service import erase
from service.context import Ctx
from service.reconcile import sweep
from tests.conftest import create_key, make_client

CLASSIFIER = {
    "name": "news",
    "template": "{{ text }}",
    "labels": {"positive": " positive", "negative": " negative"},
}
MARK = "zebra-7781"  # in every input and custom id: a row still holding content shows it


def _items(n: int, tag: str = MARK) -> list[dict[str, Any]]:
    word = ("positive", "negative")
    return [{"custom_id": f"{tag}-{i}", "text": f"{tag} a {word[i % 2]} day"} for i in range(n)]


@pytest.fixture
def api(factory: Any, fake_scorer: Any) -> Iterator[Any]:
    c, _ = make_client(factory, fake_scorer)
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER).status_code == 201
        yield c


def _submit(c: Any, n: int, tag: str = MARK, headers: Any = None) -> str:
    made = c.post("/v1/jobs", json={"classifier": "news", "items": _items(n, tag)}, headers=headers)
    assert made.status_code in (200, 201, 202), made.text
    return str(made.json()["id"])


def _every_row(factory: Any) -> str:
    """Every row of every table, as text."""
    out = []
    with factory() as s:
        for table in Base.metadata.sorted_tables:
            out += [repr(tuple(row)) for row in s.execute(select(table))]
    return "\n".join(out)


def _rounded(value: Any) -> Any:
    """`value` with every float to 10 digits, in dicts and lists alike."""
    if isinstance(value, float):
        return round(value, 10)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _ctx(c: Any) -> Ctx:
    return Ctx.system(c.app.state.labelq.services)


def test_a_tombstone_keeps_counts_dashboard_and_metrics_and_no_content(
    api: Any, factory: Any
) -> None:
    c = api
    job_id = _submit(c, 6)
    labels = {f"{MARK}-{i}": ("positive", "negative")[i % 2] for i in range(6)}
    assert c.post(f"/v1/jobs/{job_id}/labels", json=labels).status_code == 200
    reliability = c.get("/v1/classifiers/news/reliability").json()
    predictions = [x for x in c.get("/metrics").text.splitlines() if "labelq_predictions" in x]
    assert reliability["n"] == 6 and reliability["accuracy"] is not None

    unsaid = c.delete(f"/v1/jobs/{job_id}")
    assert unsaid.status_code == 422 and "keep" in unsaid.text, "the choice is explicit"
    done = c.delete(f"/v1/jobs/{job_id}", params={"keep": "tombstone"})
    assert done.status_code == 200 and done.json() == {
        "job_id": job_id,
        "erase": "content",
        "done": True,
    }
    status = c.get(f"/v1/jobs/{job_id}").json()
    assert (status["state"], status["total"], status["succeeded"]) == ("succeeded", 6, 6)
    for path in ("results", "results?format=jsonl", "results?calibration=none"):
        gone = c.get(f"/v1/jobs/{job_id}/{path}")
        assert gone.status_code == 410 and gone.json()["field"] == "job_id", (path, gone.text)
    assert c.post(f"/v1/jobs/{job_id}/retry").status_code == 410
    assert MARK not in _every_row(factory), "no input, result, id or error is left"
    # the same figures (a float sum's last digit may differ with the rows' order)
    assert _rounded(c.get("/v1/classifiers/news/reliability").json()) == _rounded(reliability)
    after = [x for x in c.get("/metrics").text.splitlines() if "labelq_predictions" in x]
    assert after == predictions
    again = c.delete(f"/v1/jobs/{job_id}", params={"keep": "tombstone"})
    assert again.status_code == 200 and again.json()["done"], "idempotent"


def test_keep_nothing_leaves_no_row_and_a_submit_key_cannot_erase(
    factory: Any, fake_scorer: Any
) -> None:
    c, _ = make_client(factory, fake_scorer, no_auth=False)
    admin = {"Authorization": f"Bearer {create_key(factory, 'admin', 'acme')}"}
    submit = {"Authorization": f"Bearer {create_key(factory, 's', 'acme', ('submit', 'read'))}"}
    other = {"Authorization": f"Bearer {create_key(factory, 'o', 'bolt')}"}
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER, headers=admin).status_code == 201
        job_id = _submit(c, 5, headers=submit)
        refused = c.delete(f"/v1/jobs/{job_id}", params={"keep": "nothing"}, headers=submit)
        assert refused.status_code == 403, "a submit key cannot erase"
        hidden = c.delete(f"/v1/jobs/{job_id}", params={"keep": "nothing"}, headers=other)
        assert hidden.status_code == 404, "another tenant's job is not there"
        done = c.delete(f"/v1/jobs/{job_id}", params={"keep": "nothing"}, headers=admin)
        assert done.status_code == 200 and done.json()["done"]
        assert c.get(f"/v1/jobs/{job_id}", headers=admin).status_code == 404
    with factory() as s:
        for model in (Job, JobItem, Chunk):
            assert s.scalar(select(func.count()).select_from(model)) == 0
    assert MARK not in _every_row(factory)


@pytest.mark.parametrize("keep", ["nothing", "tombstone"])
def test_a_large_erasure_goes_on_batch_by_batch_across_sweeps(
    factory: Any, fake_scorer: Any, keep: str
) -> None:
    """LABELQ_ERASE_PER_SWEEP rows a sweep, LABELQ_ERASE_BATCH a transaction: a 23-item job is
    erased over sweeps; what stopped between two (a process that died) goes on in the next,
    and the erasure ends (a scrubbed row holds SQL NULL, not JSON null, so it is not found
    again)."""
    c, _ = make_client(factory, fake_scorer, erase_batch=4, erase_per_sweep=10)
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        job_id = _submit(c, 23)
        first = c.delete(f"/v1/jobs/{job_id}", params={"keep": keep})
        assert first.status_code == 202 and not first.json()["done"]

        def left() -> int:
            with factory() as s:
                count = select(func.count()).select_from(JobItem)
                if keep == "tombstone":
                    count = count.where(JobItem.result.is_not(None))
                return int(s.scalar(count.where(JobItem.job_id == job_id)) or 0)

        assert left() == 13
        reports = []
        while left():
            reports.append(sweep(_ctx(c)).erased)
            assert len(reports) < 5
        assert [r.rows for r in reports] == [10, 3] and reports[-1].jobs_done == 1
        assert sweep(_ctx(c)).erased.rows == 0, "done: nothing is found again"
        gone = c.get(f"/v1/jobs/{job_id}").status_code
        assert gone == (404 if keep == "nothing" else 200)


def test_a_job_erased_while_a_worker_scores_it_ends_cleanly(factory: Any) -> None:
    """A chunk is being scored when the job is erased: the job is cancelled (pending chunks
    stop), the worker's results are written as usual, the job ends, and then the sweep erases
    it. Nothing is left, and nothing fails."""
    from db.chunks import ItemOutcome

    c, _ = make_client(factory, None)  # no scorer: chunks stay queued
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        job_id = _submit(c, 8)  # chunk_size 4: two chunks
        with factory.begin() as s:
            work = chunk_rows.claim_chunk(
                s, job_id, 0, "worker-1", lease_seconds=60, max_attempts=3
            )
        assert work is not None
        answer = c.delete(f"/v1/jobs/{job_id}", params={"keep": "tombstone"})
        assert answer.status_code == 202 and not answer.json()["done"]
        assert c.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelling"
        assert c.get(f"/v1/jobs/{job_id}/results").status_code == 410, "its content stops at once"
        sweep(_ctx(c))
        assert MARK in _every_row(factory), "not before the chunk being scored ends"
        results = {
            item_id: ItemOutcome(result={"label": "positive", "confidence": 0.9})
            for item_id, _ in work.items
        }
        with factory.begin() as s:
            assert chunk_rows.complete_chunk(s, work, results, None)
        sweep(_ctx(c))  # ends the job, then erases it
        status = c.get(f"/v1/jobs/{job_id}").json()
        assert status["state"] == "cancelled" and status["succeeded"] == 4
    assert MARK not in _every_row(factory)


def test_retention_by_tenant_and_classifier_removes_exactly_what_expired(
    factory: Any, fake_scorer: Any
) -> None:
    """`*`: results after 10 days; classifier `chat`: items after 3. Jobs of 40, 5 and 1 days
    old: the 40-day news job loses its content, the 5-day chat job its items, the rest stay.
    The counts /metrics reads are kept."""
    retention = {"*": {"results_days": 10, "classifiers": {"chat": {"items_days": 3}}}}
    c, _ = make_client(factory, fake_scorer, retention=retention)
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        c.post("/v1/classifiers", json={**CLASSIFIER, "name": "chat"})
        old_news, new_news = _submit(c, 4, "oldnews"), _submit(c, 4, "newnews")
        chat_made = c.post(
            "/v1/jobs", json={"classifier": "chat", "items": _items(4, "oldchat")}
        ).json()["id"]
        fresh_chat = c.post(
            "/v1/jobs", json={"classifier": "chat", "items": _items(4, "newchat")}
        ).json()["id"]
        with factory.begin() as s:
            for job_id, days in ((old_news, 40), (new_news, 1), (chat_made, 5), (fresh_chat, 1)):
                s.execute(
                    update(Job)
                    .where(Job.id == job_id)
                    .values(created_at=utcnow() - timedelta(days=days))
                )
        metrics = [x for x in c.get("/metrics").text.splitlines() if "predictions" in x]
        report = sweep(_ctx(c)).erased
        assert report.marked == 2 and report.jobs_done == 2
        rows = _every_row(factory)
        assert "oldnews" not in rows and "oldchat" not in rows
        assert "newnews" in rows and "newchat" in rows
        with factory() as s:
            kept = select(func.count()).select_from(JobItem)
            assert s.scalar(kept.where(JobItem.job_id == old_news)) == 4  # numbers stay
            assert s.scalar(kept.where(JobItem.job_id == chat_made)) == 0
            assert s.get_one(Job, chat_made).total == 4  # the tombstone keeps its counts
        assert c.get(f"/v1/jobs/{old_news}/results").status_code == 410
        assert c.get(f"/v1/jobs/{new_news}/results").status_code == 200
        assert [x for x in c.get("/metrics").text.splitlines() if "predictions" in x] == metrics
        assert sweep(_ctx(c)).erased.marked == 0, "marked once"


def test_erasing_a_tenant_leaves_no_row_of_it_in_any_table(
    factory: Any, fake_scorer: Any, tmp_path: Any
) -> None:
    """Two tenants with keys, classifiers, jobs, gold labels, a calibration, a pipeline with a
    run and a webhook secret; `acme` is erased. Every table is walked: no row names
    acme or holds its content; bolt's rows are all there."""
    roots = {"inbox": {"path": str(tmp_path)}}
    c, _ = make_client(factory, fake_scorer, no_auth=False, pipeline_roots=roots)
    acme = {"Authorization": f"Bearer {create_key(factory, 'a', 'acme')}"}
    bolt = {"Authorization": f"Bearer {create_key(factory, 'b', 'bolt')}"}
    with c:
        for who, tag in ((acme, "acmecontent"), (bolt, "boltcontent")):
            assert c.post("/v1/classifiers", json=CLASSIFIER, headers=who).status_code == 201
            pipeline = {
                "name": f"{tag}-pipe",
                "classifier": "news",
                "schedule": {"every": 3600},
                "source": {"kind": "files", "root": "inbox", "fields": {"text": "text"}},
            }
            made = c.post("/v1/pipelines", json=pipeline, headers=who)
            assert made.status_code == 201, made.text
            assert c.post(f"/v1/pipelines/{tag}-pipe/run", headers=who).status_code == 202
            job_id = _submit(c, 6, tag, headers=who)
            labels = {f"{tag}-{i}": ("positive", "negative")[i % 2] for i in range(6)}
            c.post(f"/v1/jobs/{job_id}/labels", json=labels, headers=who)
            fit = c.post(
                "/v1/classifiers/news/calibrations",
                json={"method": "temperature", "job_id": job_id},
                headers=who,
            )
            assert fit.status_code in (200, 201, 202), fit.text
            assert c.get("/v1/webhooks/secret", headers=who).status_code == 200
        before = _every_row(factory)
        bolt_rows = [line for line in before.splitlines() if "bolt" in line]
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.tenant == "acme"))
    done = erase.erase_tenant(Ctx.of(c.app.state.labelq.services, "acme"), wait=5)
    assert done.done and done.keys_revoked == 1 and done.removed["classifiers"] == 1
    after = _every_row(factory)
    assert "acme" not in after and "acmecontent" not in after
    assert all(line in after for line in bolt_rows), "the other tenant's rows are untouched"
    again = erase.erase_tenant(Ctx.of(c.app.state.labelq.services, "acme"), wait=5)
    assert again.done and again.jobs_erased == 0, "idempotent"
    with c:
        assert c.get("/v1/jobs", headers=acme).status_code == 401, "its keys are gone"


def test_tenants_erase_asks_for_the_name_twice(tmp_path: Any) -> None:
    from labelq.cli import main

    assert main(["tenants", "erase", "acme", "--confirm", "acne"]) == 2


def _dashboard(c: Any, ids: dict[str, Any]) -> dict[str, Any]:
    """Every dashboard query's answer, over the classifier and over each job."""
    from tests.test_dashboard import DASH

    thresholds = ",".join(f"{i * 0.05:.2f}" for i in range(21))
    out = {}
    for scope in ({}, {"job": ids["old"]}, {"job": ids["new"]}):
        for path, params in (
            ("reliability", {"binning": "width"}),
            ("reliability", {"binning": "mass"}),
            ("timeseries", {"bucket": "day"}),
            ("timeseries", {"bucket": "hour"}),
            ("confidence-histogram", {}),
            ("confusion", {}),
            ("label-distribution", {"bucket": "day"}),
            ("selective", {"thresholds": thresholds, "target_accuracy": 0.6}),
            ("estimated-performance", {"calibration": "stored"}),
        ):
            answer = c.get(f"{DASH}/{path}", params={**scope, **params})
            assert answer.status_code == 200, answer.text
            out[f"{path} {params} {scope}"] = _rounded(answer.json())
    return out


def test_rows_erased_at_the_items_level_keep_every_dashboard_figure(
    factory: Any, fake_scorer: Any
) -> None:
    """Retention's `items_days` deletes a job's item rows (a tombstone keeps the job): every
    dashboard query, over the classifier and by job, answers exactly as before, from the
    numbers each scored row left in `items_archive`; erasing the job whole (`keep=nothing`)
    then takes those too."""
    from db import erase as erase_rows
    from db.models import ArchivedItem, Erase
    from tests.test_dashboard import _classifier_series, _seed

    with _seed(factory, fake_scorer) as (c, ids):
        before = _dashboard(c, ids)
        metrics = _classifier_series(c)
        with factory() as s:
            job = s.get(Job, ids["old"])
            assert job is not None and erase_rows.request(s, job, Erase.items)
            s.commit()
        ctx = Ctx.system(c.app.state.labelq.services)
        while not erase.sweep(ctx).jobs_done:
            pass
        with factory() as s:
            assert s.scalar(select(func.count()).where(JobItem.job_id == ids["old"])) == 0
            assert s.scalar(select(func.count()).select_from(ArchivedItem)) == 300
        assert c.get(f"/v1/jobs/{ids['old']}").json()["succeeded"] == 300  # the tombstone
        after = _dashboard(c, ids)
        for key, answer in before.items():
            assert after[key] == answer, key
        assert _classifier_series(c) == metrics

        gone = c.delete(f"/v1/jobs/{ids['old']}", params={"keep": "nothing"})
        assert gone.status_code in (200, 202), gone.text
        while erase.sweep(ctx).rows:
            pass
        with factory() as s:
            assert s.scalar(select(func.count()).select_from(ArchivedItem)) == 0
        from tests.test_dashboard import DASH

        assert c.get(f"{DASH}/reliability").json()["n"] == 100  # job `new`'s labelled alone
