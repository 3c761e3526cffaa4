"""Scheduled pipelines through the API: SQL and files sources, SQL and files sinks, watermarks
committed only after success, overlap, checks at creation, schedules, webhooks and the job
event stream. Chunks are scored inline by the fake backend; runs end in the sweep."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from standardwebhooks import Webhook

from labelq.pipeline import Schedule
from service import webhooks
from service.context import Ctx
from service.reconcile import sweep
from service.schedules import due, tick_expiry
from tests.conftest import make_client

CLASSIFIER = {
    "name": "news",
    "template": "{{ title }}: {{ description }}",
    "labels": {"positive": " positive", "negative": " negative"},
}


class Source:
    """A table of articles in a SQL database of the test's own (SQLite or PostgreSQL)."""

    def __init__(self, url: str):
        self.url = url
        self.engine = create_engine(url)
        with self.engine.begin() as c:
            c.execute(text("DROP TABLE IF EXISTS articles"))
            c.execute(text("DROP TABLE IF EXISTS article_labels"))
            c.execute(text("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT, body TEXT)"))
        self.next_id = 1

    def add(self, n: int) -> None:
        rows = []
        for _ in range(n):
            word = "positive" if self.next_id % 2 else "negative"
            rows.append({"id": self.next_id, "t": f"story {self.next_id}", "b": f"a {word} day"})
            self.next_id += 1
        with self.engine.begin() as c:
            c.execute(text("INSERT INTO articles (id, title, body) VALUES (:id, :t, :b)"), rows)

    def sink_rows(self) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            return [
                dict(r)
                for r in c.execute(text("SELECT * FROM article_labels ORDER BY key")).mappings()
            ]


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A PostgreSQL database of the test's own, never labelq's (a pipeline may not name
    that one), dropped afterwards."""
    import uuid

    from tests.conftest import PG_ADMIN_URL

    name = f"labelq_src_{uuid.uuid4().hex[:8]}"
    # pre-ping: an end-to-end test restarts PostgreSQL, which cuts pooled connections.
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Source]:
    if request.param == "sqlite":
        src = Source(f"sqlite:///{tmp_path / 'news.db'}")
        yield src
        src.engine.dispose()
        return
    with scratch_postgres() as url:
        src = Source(url)
        yield src
        src.engine.dispose()


# The operator's names for what pipelines may use: the source database (read by table or by
# query, and written to by the sink) from the environment, a second name for it that is read
# by table only, a sink database of its own, an inbox and a writable outbox.
CONNECTIONS = {
    "news": {"url": "${NEWS_DB_URL}", "queries": True, "write": True},
    "news-tables": "${NEWS_DB_URL}",
    "sink": {"url": "${SINK_URL}", "write": True},
}


def operator_targets(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "in").mkdir(exist_ok=True)
    (tmp_path / "out").mkdir(exist_ok=True)
    return {
        "pipeline_connections": CONNECTIONS,
        "pipeline_roots": {
            "inbox": str(tmp_path / "in"),
            "outbox": {"path": str(tmp_path / "out"), "write": True},
        },
    }


def _pipeline(name: str, **changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "classifier": "news",
        "schedule": {"cron": "*/15 * * * *", "timezone": "Europe/Berlin"},
        "source": {
            "kind": "sql",
            "connection": "news",
            "table": "articles",
            "key": "id",
            "watermark": "id",
            "fields": {"title": "title", "description": "body"},
            "page_size": 7,
        },
        "sink": {"kind": "sql", "connection": "news", "table": "article_labels"},
    }
    spec.update(changes)
    return spec


@pytest.fixture
def api(factory: Any, fake_scorer: Any, tmp_path: Path) -> Iterator[Any]:
    c, d = make_client(
        factory,
        fake_scorer,
        webhook_retry_backoff=0,
        webhook_allow=["127.0.0.0/8"],  # the test's receiver is on loopback
        **operator_targets(tmp_path),
    )
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER).status_code == 201
        yield c, d, factory


def _settle(client: Any, dispatcher: Any, factory: Any) -> None:
    """A sweep, then a round of webhook deliveries (a worker's deliverer does it)."""
    ctx = Ctx.system(client.app.state.labelq.services)
    sweep(ctx)
    webhooks.deliver_due(ctx, "test-deliverer")


def test_sql_pipeline_runs_twice_then_survives_a_failed_sink(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(20)
    created = c.post("/v1/pipelines", json=_pipeline("news-topics"))
    assert created.status_code == 201, created.text
    run = c.post("/v1/pipelines/news-topics/run").json()
    assert run["state"] == "running" and run["rows_read"] == 20 and run["job_id"]
    _settle(c, d, factory)
    rows = source.sink_rows()
    assert [int(r["key"]) for r in rows] == list(range(1, 21))
    assert all(r["label"] == ("positive" if int(r["key"]) % 2 else "negative") for r in rows)
    assert {r["run_id"] for r in rows} == {run["id"]} and rows[0]["classifier_version"] == 1

    source.add(5)
    second = c.post("/v1/pipelines/news-topics/run").json()
    assert second["rows_read"] == 5
    assert second["watermark_before"]["order"]["value"] == 20
    _settle(c, d, factory)
    assert len(source.sink_rows()) == 25

    # The sink goes away: the run fails and the watermark stays where it was.
    source.add(3)
    monkeypatch.setenv("SINK_URL", source.url)
    new_sink = {"sink": {"kind": "sql", "connection": "sink", "table": "article_labels"}}
    unsaid = c.patch("/v1/pipelines/news-topics", json=new_sink)
    assert unsaid.status_code == 422 and unsaid.json()["field"] == "watermark"
    patched = c.patch("/v1/pipelines/news-topics", json=new_sink, params={"watermark": "keep"})
    assert patched.status_code == 200, patched.text
    monkeypatch.setenv("SINK_URL", "sqlite:////nonexistent/folder/sink.db")
    c.post("/v1/pipelines/news-topics/run")
    _settle(c, d, factory)
    failed = c.get("/v1/pipelines/news-topics/runs").json()[0]
    assert failed["state"] == "failed" and "unable to open database file" in failed["error"]
    assert c.get("/v1/pipelines/news-topics").json()["watermark"]["order"]["value"] == 25
    # Back: the next run catches up, nothing written twice.
    monkeypatch.setenv("SINK_URL", source.url)
    again = c.post("/v1/pipelines/news-topics/run").json()
    assert again["rows_read"] == 3
    _settle(c, d, factory)
    keys = [int(r["key"]) for r in source.sink_rows()]
    assert keys == list(range(1, 29))
    history = c.get("/v1/pipelines/news-topics/runs").json()
    assert [r["state"] for r in history] == ["succeeded", "failed", "succeeded", "succeeded"]


def test_a_run_still_going_makes_the_next_one_skipped(
    factory: Any, source: Source, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(3)
    # chunks stay queued: the first run keeps going
    c, _ = make_client(factory, None, **operator_targets(tmp_path))
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        c.post("/v1/pipelines", json=_pipeline("slow"))
        first = c.post("/v1/pipelines/slow/run").json()
        second = c.post("/v1/pipelines/slow/run").json()
        assert first["state"] == "running"
        assert second["state"] == "skipped" and f"run {first['id']}" in second["error"]


def test_checked_at_creation(api: Any, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    c, _, _ = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    cases = [
        ({"schedule": {"cron": "61 * * * *"}}, "schedule.cron", "invalid cron"),
        ({"schedule": {"cron": "* * *"}}, "schedule.cron", "5 fields"),
        ({"schedule": {"cron": "* * * * *", "timezone": "Mars/Olympus"}}, "schedule.timezone", ""),
        ({"schedule": {"every": 0}}, "schedule.every", ""),
        ({"classifier": "nope"}, "classifier", "does not exist"),
        (
            {
                "source": {
                    **_pipeline("x")["source"],
                    "table": None,
                    "query": "DELETE FROM articles",
                }
            },
            "source.query",
            "read-only",
        ),
        (
            {"source": {**_pipeline("x")["source"], "fields": {"title": "headline"}}},
            "source.fields.title",
            "no column 'headline'",
        ),
        (
            {"source": {**_pipeline("x")["source"], "connection": "${NEWS_DB_URL}"}},
            "source.connection",
            "is not read from a pipeline",
        ),
        (
            {"source": {**_pipeline("x")["source"], "connection": "elsewhere"}},
            "source.connection",
            "no connection named 'elsewhere'",
        ),
        (
            {
                "source": {
                    **_pipeline("x")["source"],
                    "connection": "news-tables",
                    "table": None,
                    "query": "SELECT * FROM articles",
                }
            },
            "source.query",
            "read by table, not by query",
        ),
        (
            {"sink": {"kind": "sql", "connection": "news-tables", "table": "t"}},
            "sink.connection",
            "read-only",
        ),
        ({"source": {**_pipeline("x")["source"], "url": source.url}}, "source.url", "Extra"),
    ]
    for changes, field, words in cases:
        r = c.post("/v1/pipelines", json=_pipeline("bad", **changes))
        assert r.status_code == 422, (changes, r.text)
        assert r.json()["field"] == field and words in r.json()["error"], r.json()


def test_webhook_credentials_are_masked(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    from labelq.pipeline import mask_url

    c, _, _ = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    spec = _pipeline("masked", webhook="https://hooks.example/x?token=hunter2")
    r = c.post("/v1/pipelines", json=spec)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["webhook"] == "https://hooks.example/x?token=%2A%2A%2A"
    for page in ("/v1/pipelines", "/v1/pipelines/masked"):
        assert "hunter2" not in c.get(page).text and source.url not in c.get(page).text
    assert mask_url("mysql://u:p%40ss@h/db") == "mysql://u:***@h/db"


def test_files_source_never_twice_and_waits_for_a_file_being_written(
    api: Any, tmp_path: Path
) -> None:
    c, d, factory = api
    inbox, outbox = tmp_path / "in", tmp_path / "out" / "topics" / "2026"
    old = time.time() - 3600

    def write(name: str, rows: list[str], settled: bool) -> None:
        path = inbox / name
        path.write_text(
            "".join(json.dumps({"id": f"{name}-{i}", "title": t, "description": t}) + "\n"
                    for i, t in enumerate(rows)),
            encoding="utf-8",
        )  # fmt: skip
        if settled:
            os.utime(path, (old, old))

    write("a.jsonl", ["positive one", "negative two"], settled=True)
    write("b.jsonl", ["still being written"], settled=False)
    spec = _pipeline(
        "files",
        source={
            "kind": "files",
            "root": "inbox",
            "glob": "*.jsonl",
            "key": "id",
            "settle_seconds": 30,
        },
        sink={"kind": "files", "root": "outbox", "path": "topics/2026", "format": "jsonl"},
    )
    assert c.post("/v1/pipelines", json=spec).status_code == 201
    first = c.post("/v1/pipelines/files/run").json()
    assert first["rows_read"] == 2 and [f["path"] for f in first["files"]] == ["a.jsonl"]
    _settle(c, d, factory)
    os.utime(inbox / "b.jsonl", (old, old))
    second = c.post("/v1/pipelines/files/run").json()
    assert [f["path"] for f in second["files"]] == ["b.jsonl"]
    _settle(c, d, factory)
    third = c.post("/v1/pipelines/files/run").json()
    assert third["rows_read"] == 0 and third["state"] == "succeeded"
    written = sorted(p.name for p in outbox.iterdir())  # no partial file is left
    assert written == [f"files-run{first['id']}.jsonl", f"files-run{second['id']}.jsonl"]
    rows = [json.loads(x) for x in (outbox / written[0]).read_text().splitlines()]
    assert [r["custom_id"] for r in rows] == ["a.jsonl-0", "a.jsonl-1"]
    assert [r["label"] for r in rows] == ["positive", "negative"]


def test_schedules() -> None:
    now = datetime.now(UTC)
    every = Schedule(every=60)
    assert due(every, now - timedelta(seconds=30), now)[0] is False
    assert due(every, now - timedelta(seconds=61), now)[0] is True
    cron = Schedule(cron="0 3 * * *", timezone="Asia/Tokyo")
    is_due, next_in = due(cron, now - timedelta(minutes=1), now)
    assert not is_due and 0 < next_in <= 24 * 3600
    # A tick lives one period (at least a minute), so ticks queued while no worker takes them
    # do not fire in a burst when one comes back.
    assert tick_expiry(Schedule(every=3600)) == 3600 and tick_expiry(Schedule(every=5)) == 60
    assert tick_expiry(cron) == 24 * 3600
    assert tick_expiry(Schedule(cron="*/15 * * * *", timezone="Europe/Berlin")) == 900
    assert tick_expiry(Schedule(cron="0 9 * * 1", timezone="UTC")) == 7 * 24 * 3600


def test_beat_sends_each_pipeline_tick_with_its_expiry(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.keys import LOCAL
    from worker.app import make_celery
    from worker.scheduler import DatabaseScheduler

    c, _, _ = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    assert c.post("/v1/pipelines", json=_pipeline("ticking")).status_code == 201  # */15
    services = c.app.state.labelq.services
    settings = services.settings
    monkeypatch.setattr(DatabaseScheduler, "settings", settings)
    monkeypatch.setattr("worker.scheduler.wiring.build", lambda _: services)  # the test's db
    beat = DatabaseScheduler(app=make_celery(settings), lazy=True)
    beat.setup_schedule()
    entry = beat.schedule[f"pipeline:{LOCAL.tenant}/ticking"]
    assert entry.options["expires"] == 900 and entry.options["queue"] == "labelq.control"


class Receiver:
    """A webhook receiver on loopback: answers 500 the first time, then 200."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if not receiver.calls else 200
                receiver.calls.append((dict(self.headers), body, status))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()


def test_webhook_is_signed_and_retried_after_a_500(api: Any) -> None:
    c, d, factory = api
    receiver = Receiver()
    try:
        job = c.post(
            "/v1/jobs",
            json={"classifier": "news", "items": [{"title": "a", "description": "b"}],
                  "webhook_url": receiver.url},
        ).json()  # fmt: skip
        assert job["state"] == "succeeded"
        _settle(c, d, factory)
        _settle(c, d, factory)
        _settle(c, d, factory)  # delivered: nothing more is sent
    finally:
        receiver.close()
    assert [status for _, _, status in receiver.calls] == [500, 200]
    secret = c.get("/v1/webhooks/secret").json()["secret"]
    ids = set()
    for headers, body, _ in receiver.calls:
        event = Webhook(secret).verify(body, headers)  # as a receiver checks it
        assert event["event"] == "job.succeeded" and event["job"]["id"] == job["id"]
        ids.add(headers["webhook-id"])
    assert len(ids) == 1, "a retry carries the same id: a receiver drops repeats by it"
    deliveries = c.get(f"/v1/jobs/{job['id']}/webhooks").json()
    assert [(x["status"], x["attempts"], x["last_status"]) for x in deliveries] == [
        ("delivered", 2, 200)
    ]


def test_webhook_urls_are_checked_when_given(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer)
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        for url, words in [
            ("http://127.0.0.1:9/x", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://10.1.2.3/x", "private"),
            ("http://[::1]:9/x", "loopback"),
            ("https://user:pw@hooks.example/x", "no credentials"),
            ("ftp://hooks.example/x", "http(s)"),
        ]:
            r = c.post("/v1/jobs", json={"classifier": "news", "items": [], "webhook_url": url})
            assert r.status_code == 422 and r.json()["field"] == "webhook_url", url
            assert words in r.json()["error"], (url, r.json())


def test_event_stream_shows_counts_rising_and_ends(factory: Any, fake_scorer: Any) -> None:
    c, d = make_client(factory, None)
    with c:
        c.post("/v1/classifiers", json=CLASSIFIER)
        items = [{"title": f"t{i}", "description": "x"} for i in range(12)]  # 3 chunks of 4
        job = c.post("/v1/jobs", json={"classifier": "news", "items": items}).json()
        d.scorer = fake_scorer

        def run_chunks() -> None:
            for seq in range(3):
                time.sleep(0.4)
                d.runner.run(job["id"], seq)

        worker = threading.Thread(target=run_chunks)
        worker.start()
        events = []
        with c.stream("GET", f"/v1/jobs/{job['id']}/events", params={"interval": 0.1}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    events.append((event, json.loads(line.split(":", 1)[1])))
        worker.join()
    done = [data["succeeded"] for kind, data in events if kind == "progress"]
    assert done == sorted(done) and done[0] == 0 and done[-1] == 12 and len(set(done)) >= 3
    assert events[-1][0] == "end" and events[-1][1]["state"] == "succeeded"


@pytest.fixture
def short_lease(factory: Any, fake_scorer: Any, tmp_path: Path) -> Iterator[Any]:
    """The API with a one-second run lease (labelq's own timer, shortened)."""
    c, d = make_client(factory, fake_scorer, pipeline_run_lease=1.0, **operator_targets(tmp_path))
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER).status_code == 201
        yield c, d, factory


def test_a_run_whose_reader_died_fails_and_the_next_tick_runs(
    short_lease: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process reading a run's source is killed (here: its run is opened, and nothing
    more happens): once the run's lease runs out the sweep fails it, saying why, and the next
    run reads the rows. Before, the run stayed `running` with no job forever and every later
    tick was `skipped`."""
    from db import pipelines as pipeline_rows
    from db.session import db_now

    c, d, factory = short_lease
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(10)
    assert c.post("/v1/pipelines", json=_pipeline("dies")).status_code == 201
    with factory.begin() as s:  # what start_run does first; then the process dies
        row = pipeline_rows.get_pipeline(s, "dies", tenant="default", for_update=True)
        dead = pipeline_rows.open_run(s, row, "schedule", db_now(s), 1.0).id
    assert c.post("/v1/pipelines/dies/run").json()["state"] == "skipped"  # still leased
    time.sleep(1.2)
    report = sweep(Ctx.system(c.app.state.labelq.services))
    assert report.runs_expired == [dead]
    runs = {r["id"]: r for r in c.get("/v1/pipelines/dies/runs").json()}
    assert runs[dead]["state"] == "failed" and "lease ran out" in runs[dead]["error"]
    run = c.post("/v1/pipelines/dies/run").json()
    assert (run["state"], run["rows_read"]) == ("running", 10)
    _settle(c, d, factory)
    assert [int(r["key"]) for r in source.sink_rows()] == list(range(1, 11))


def test_a_slow_reader_keeps_its_run(
    short_lease: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that is slow but alive renews its run's lease: a sweep while it reads leaves
    the run alone, and the run ends with every row."""
    from labelq.sources import SqlReader

    c = short_lease[0]
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(10)
    assert c.post("/v1/pipelines", json=_pipeline("slow")).status_code == 201
    reading, go_on = threading.Event(), threading.Event()
    pages = SqlReader.pages

    def slow_pages(self: SqlReader, after: Any) -> Any:
        reading.set()
        assert go_on.wait(30)
        yield from pages(self, after)

    monkeypatch.setattr(SqlReader, "pages", slow_pages)
    ctx = Ctx.system(c.app.state.labelq.services).acting_for("default")
    from service import pipelines

    out: list[Any] = []
    runner = threading.Thread(target=lambda: out.append(pipelines.start_run(ctx, "slow")))
    runner.start()
    assert reading.wait(30)
    time.sleep(2.5)  # more than two leases
    assert sweep(Ctx.system(c.app.state.labelq.services)).runs_expired == []
    go_on.set()
    runner.join(30)
    assert out and (out[0].state, out[0].rows_read) == ("running", 10)


def test_a_null_watermark_fails_the_run_naming_the_column_and_count(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with a NULL watermark are rows no position passes (PostgreSQL sorts them last,
    and a stored NULL watermark made every later run read 0 rows in silence): the run fails
    and says which column and how many rows; the watermark does not move."""
    c = api[0]
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    with source.engine.begin() as conn:
        conn.execute(text("ALTER TABLE articles ADD COLUMN seen INTEGER"))
    source.add(4)
    with source.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET seen = id WHERE id <= 2"))
    source_spec = {**_pipeline("nulls")["source"], "watermark": "seen"}
    assert c.post("/v1/pipelines", json=_pipeline("nulls", source=source_spec)).status_code == 201
    run = c.post("/v1/pipelines/nulls/run").json()
    assert run["state"] == "failed" and run["job_id"] is None
    assert "2 source row(s) have NULL in column 'seen'" in run["error"], run["error"]
    assert c.get("/v1/pipelines/nulls").json()["watermark"] is None


def test_text_keys_stay_text_in_the_sink_and_a_failed_write_leaves_nothing(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A table keyed by text ('007', '7', 'A-17'): three rows in the sink, keys as the
    source has them (the sink guessed an integer key from the first key: '007' and '7'
    overwrote each other, and 'A-17' failed every write). A sink write that fails midway
    leaves none of the run's rows visible (batches committed one by one before)."""
    from labelq import sinks

    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    with source.engine.begin() as conn:
        conn.execute(text("CREATE TABLE coded (code VARCHAR(20) PRIMARY KEY, title TEXT)"))
        conn.execute(
            text("INSERT INTO coded VALUES ('007', 'a'), ('7', 'b'), ('A-17', 'c'), ('8', 'd')")
        )
    spec = _pipeline("coded")
    spec["source"] = {
        **spec["source"],
        "table": "coded",
        "key": "code",
        "watermark": None,
        "fields": {"title": "title", "description": "title"},
    }
    spec["sink"] = {"kind": "sql", "connection": "news", "table": "coded_labels"}
    assert c.post("/v1/pipelines", json=spec).status_code == 201, spec

    upsert, calls = sinks.SqlWriter._upsert, []

    def failing(self: Any, connection: Any, table: Any, rows: Any) -> None:
        calls.append(len(rows))
        if len(calls) % 2 == 0:  # every attempt (the sink is retried) fails at its 2nd batch
            raise RuntimeError("the sink server went away")
        upsert(self, connection, table, rows)

    monkeypatch.setattr(sinks, "BATCH", 2)
    monkeypatch.setattr(sinks.SqlWriter, "_upsert", failing)
    c.post("/v1/pipelines/coded/run")
    _settle(c, d, factory)
    failed = c.get("/v1/pipelines/coded/runs").json()[0]
    assert failed["state"] == "failed" and "went away" in failed["error"]
    with source.engine.connect() as conn:
        tables = conn.dialect.get_table_names(conn)
        visible = (
            conn.execute(text("SELECT COUNT(*) FROM coded_labels")).scalar_one()
            if ("coded_labels" in tables)
            else 0
        )
    assert visible == 0, "a failed run left part of its writes visible"

    monkeypatch.setattr(sinks.SqlWriter, "_upsert", upsert)
    again = c.post("/v1/pipelines/coded/run").json()
    assert again["rows_read"] == 4
    _settle(c, d, factory)
    with source.engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT key FROM coded_labels ORDER BY key"))]
    assert keys == ["007", "7", "8", "A-17"]


@pytest.mark.slow
def test_a_row_committed_late_behind_the_watermark_is_delivered_by_the_next_run(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, real: a writer takes id 21 from the sequence and holds its transaction
    open while 22..26 commit; the run reads 1..20 and 22..26 and commits watermark 26; then
    21 commits. The next run re-reads the overlap window behind the watermark and classifies
    21 alone (the rest are delivered unchanged); five more runs find nothing. The sink ends
    with every source row exactly once. Before, 21 was never read."""
    c, d, factory = api
    with scratch_postgres() as url:
        monkeypatch.setenv("NEWS_DB_URL", url)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("CREATE TABLE feed (id SERIAL PRIMARY KEY, title TEXT)"))
                conn.execute(
                    text(
                        "INSERT INTO feed (title) SELECT 'early ' || g"
                        " FROM generate_series(1, 20) g"
                    )
                )
            spec = _pipeline("late")
            spec["source"] = {
                **spec["source"],
                "table": "feed",
                "fields": {"title": "title", "description": "title"},
            }
            spec["sink"] = {"kind": "sql", "connection": "news", "table": "feed_labels"}
            assert c.post("/v1/pipelines", json=spec).status_code == 201
            held = engine.connect()
            slow = held.begin()
            late_id = held.execute(text("INSERT INTO feed (title) VALUES ('late') RETURNING id"))
            assert late_id.scalar_one() == 21
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO feed (title) SELECT 'on time ' || g"
                        " FROM generate_series(1, 5) g"
                    )
                )
            first = c.post("/v1/pipelines/late/run").json()
            assert first["rows_read"] == 25
            _settle(c, d, factory)
            assert c.get("/v1/pipelines/late").json()["watermark"]["order"]["value"] == 26
            slow.commit()
            held.close()
            second = c.post("/v1/pipelines/late/run").json()
            assert second["rows_read"] == 1, second
            _settle(c, d, factory)
            for _ in range(5):
                again = c.post("/v1/pipelines/late/run").json()
                assert (again["state"], again["rows_read"], again["job_id"]) == (
                    "succeeded",
                    0,
                    None,
                )
            with engine.connect() as conn:
                keys = [int(r[0]) for r in conn.execute(text("SELECT key FROM feed_labels"))]
                labelled = conn.execute(
                    text("SELECT COUNT(*) FROM feed_labels WHERE label IS NOT NULL")
                ).scalar_one()
            assert sorted(keys) == list(range(1, 27)) and labelled == 26
        finally:
            engine.dispose()


def test_rows_the_engine_failed_on_are_tried_again_then_written_as_errors(
    factory: Any, tmp_path: Path, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row the engine fails on (not the row's fault) is not written to the sink as final:
    the next run reads it again by key and delivers it once the engine takes it. One the
    engine keeps failing on is tried in LABELQ_PIPELINE_ENGINE_RETRIES runs, then written as
    an error row, and that run fails naming it. Before, the sink got `label = NULL, error` and
    the watermark moved past the row for good."""
    from labelq.backends.fake import FakeBackend
    from labelq.scoring import Scorer

    engine = FakeBackend(fail_marker="flaky")
    c, d = make_client(
        factory, Scorer(engine), pipeline_engine_retries=3, **operator_targets(tmp_path)
    )
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(10)
    with source.engine.begin() as conn:
        conn.execute(text("UPDATE articles SET title = 'a flaky story' WHERE id = 5"))

    def labels() -> dict[int, tuple[Any, Any]]:
        return {int(r["key"]): (r["label"], r["error"]) for r in source.sink_rows()}

    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER).status_code == 201
        assert c.post("/v1/pipelines", json=_pipeline("flaky")).status_code == 201
        first = c.post("/v1/pipelines/flaky/run").json()
        _settle(c, d, factory)
        assert c.get(f"/v1/jobs/{first['job_id']}").json()["failures"] == {"engine": 1}
        assert sorted(labels()) == [1, 2, 3, 4, 6, 7, 8, 9, 10], "no error row for row 5"
        assert c.get("/v1/pipelines/flaky/runs").json()[0]["state"] == "succeeded"

        engine.fail_marker = None  # the engine takes it now
        second = c.post("/v1/pipelines/flaky/run").json()
        assert second["rows_read"] == 1, "row 5 alone, read again by key"
        _settle(c, d, factory)
        assert labels()[5][0] is not None and labels()[5][1] is None

        engine.fail_marker = "flaky"
        source.add(3)  # among others: a batch the engine fails whole is the engine's fault
        with source.engine.begin() as conn:
            conn.execute(text("UPDATE articles SET title = 'flaky again' WHERE id = 11"))
        states = []
        for read in (3, 1, 1):
            if read == 1:
                source.add(2)  # company for row 11 again
            run = c.post("/v1/pipelines/flaky/run").json()
            assert run["rows_read"] == read + (2 if read == 1 else 0), run
            _settle(c, d, factory)
            states.append(c.get("/v1/pipelines/flaky/runs").json()[0])
        assert [r["state"] for r in states] == ["succeeded", "succeeded", "failed"]
        assert "the engine failed on 1 row(s) in 3 runs" in states[-1]["error"]
        assert "'11'" in states[-1]["error"]
        label, error = labels()[11]
        assert label is None and "the engine failed on this item" in error
        assert c.post("/v1/pipelines/flaky/run").json()["rows_read"] == 0
    assert sorted(labels()) == list(range(1, 18))


def test_an_edit_mid_run_keeps_the_run_on_its_own_version_and_the_watermark_as_chosen(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run reads the old table; before it ends the pipeline is pointed at a new table and
    sink, resetting its position. The run's rows go to the old sink (its own version), its
    watermark is not applied over the reset, and the next run reads the new table from its
    start into the new sink. Before, the old source's rows went to the new sink and its
    watermark was applied to the new source."""
    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(10)
    with source.engine.begin() as conn:
        conn.execute(text("CREATE TABLE fresh (id INTEGER PRIMARY KEY, title TEXT, body TEXT)"))
        conn.execute(text("INSERT INTO fresh VALUES (1, 'new one', 'x'), (2, 'new two', 'y')"))
    assert c.post("/v1/pipelines", json=_pipeline("moving")).status_code == 201
    first = c.post("/v1/pipelines/moving/run").json()
    assert first["rows_read"] == 10  # its job is scored; the sweep has not ended the run
    moved = {
        "source": {**_pipeline("moving")["source"], "table": "fresh"},
        "sink": {"kind": "sql", "connection": "news", "table": "fresh_labels"},
    }
    r = c.patch("/v1/pipelines/moving", json=moved, params={"watermark": "reset"})
    assert r.status_code == 200, r.text
    _settle(c, d, factory)
    runs = c.get("/v1/pipelines/moving/runs").json()
    ended = next(run for run in runs if run["id"] == first["id"])
    assert ended["state"] == "succeeded" and "changed during this run" in ended["error"]
    assert c.get("/v1/pipelines/moving").json()["watermark"] is None
    assert len(source.sink_rows()) == 10, "the run's rows went to its own (old) sink"
    second = c.post("/v1/pipelines/moving/run").json()
    assert second["rows_read"] == 2
    _settle(c, d, factory)
    with source.engine.connect() as conn:
        keys = [r[0] for r in conn.execute(text("SELECT key FROM fresh_labels ORDER BY key"))]
    assert [int(k) for k in keys] == [1, 2]
    assert len(source.sink_rows()) == 10


def test_a_watermark_set_by_hand_is_where_the_next_run_starts(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    source.add(12)
    spec = _pipeline("by-hand")
    spec["source"] = {**spec["source"], "overlap": 0}
    assert c.post("/v1/pipelines", json=spec).status_code == 201
    set_ = c.put("/v1/pipelines/by-hand/watermark", json={"order": 9})
    assert set_.status_code == 200, set_.text
    assert set_.json()["trigger"] == "watermark" and set_.json()["watermark_before"] is None
    run = c.post("/v1/pipelines/by-hand/run").json()
    assert run["rows_read"] == 3 and run["watermark_before"]["order"]["value"] == 9
    _settle(c, d, factory)
    assert [int(r["key"]) for r in source.sink_rows()] == [10, 11, 12]
    bad = c.put("/v1/pipelines/by-hand/watermark", json={"order": "soon", "type": "datetime"})
    assert bad.status_code == 422 and bad.json()["field"] == "order"
    cleared = c.put("/v1/pipelines/by-hand/watermark", json={"order": None}).json()
    assert cleared["watermark_after"] is None
    # From the start again: rows 1-9, never read; 10-12 are delivered unchanged already.
    assert c.post("/v1/pipelines/by-hand/run").json()["rows_read"] == 9


def test_a_failing_sink_does_not_make_runs_read_and_score_again(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the sink is down each run takes over the last run's scored job instead of
    reading and scoring its rows again (stored items grew quadratically: 100, 300, 600, ...);
    once the sink is back that job is written, and the next run reads what came meanwhile.
    A pipeline that keeps failing says so: its own `failures_in_a_row`, a count in /readyz,
    `labelq_pipelines_failing` on /metrics, and in each failure's webhook."""
    from sqlalchemy import func, select

    from db.models import JobItem, WebhookDelivery

    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    monkeypatch.setenv("SINK_URL", "sqlite:////nonexistent/folder/sink.db")
    source.add(10)
    spec = _pipeline(
        "down",
        sink={"kind": "sql", "connection": "sink", "table": "article_labels"},
        webhook="http://127.0.0.1:9/hook",
    )
    assert c.post("/v1/pipelines", json=spec).status_code == 201
    jobs = set()
    for n, added in enumerate((0, 5, 0), start=1):
        if added:
            source.add(added)  # meanwhile: read once the sink is back
        run = c.post("/v1/pipelines/down/run").json()
        assert run["rows_read"] == 10, run
        jobs.add(run["job_id"])
        _settle(c, d, factory)
        assert c.get("/v1/pipelines/down/runs").json()[0]["state"] == "failed"
        assert c.get("/v1/pipelines/down").json()["failures_in_a_row"] == n
        # failing after LABELQ_PIPELINE_FAILING_AFTER (3) in a row: a count for the probe,
        # the names on /metrics
        assert c.get("/readyz").json()["failing_pipelines"] == (1 if n == 3 else 0)
    assert len(jobs) == 1, "every run took the first run's job over"
    with factory() as s:
        events = s.scalars(select(WebhookDelivery.payload).order_by(WebhookDelivery.id)).all()
    assert [e["failures_in_a_row"] for e in events] == [1, 2, 3], "the receiver sees it too"
    assert "labelq_pipelines_failing 1.0" in c.get("/metrics").text
    monkeypatch.setenv("SINK_URL", source.url)
    back = c.post("/v1/pipelines/down/run").json()
    assert back["job_id"] in jobs
    _settle(c, d, factory)
    assert len(source.sink_rows()) == 10
    assert c.get("/v1/pipelines/down").json()["failures_in_a_row"] == 0
    assert c.get("/readyz").json()["failing_pipelines"] == 0
    newer = c.post("/v1/pipelines/down/run").json()
    assert newer["rows_read"] == 5
    _settle(c, d, factory)
    assert sorted(int(r["key"]) for r in source.sink_rows()) == list(range(1, 16))
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(JobItem)) == 15, "no row scored twice"


def test_a_time_watermark_reads_only_rows_older_than_its_lag(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time watermark waits `lag` (default 120 s, by the source's own clock) before it reads
    a row: a writer whose `updated_at = now()` was taken before a later commit's is not
    passed. Rows 30 s old wait; once they are older than the lag the next run reads them, and
    every row reaches the sink once."""
    c, d, factory = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    zoned = "TIMESTAMPTZ" if source.url.startswith("postgresql") else "TIMESTAMP"
    now = datetime.now(UTC)
    with source.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT, at {zoned})"))
        conn.execute(
            text("INSERT INTO posts (id, title, at) VALUES (:id, :t, :at)"),
            [
                {"id": i, "t": f"post {i}", "at": now - timedelta(minutes=20 - i)}
                for i in range(1, 6)
            ]
            + [{"id": i, "t": f"fresh {i}", "at": now - timedelta(seconds=30)} for i in (6, 7)],
        )
    spec = _pipeline("timed")
    spec["source"] = {
        **spec["source"],
        "table": "posts",
        "watermark": "at",
        "fields": {"title": "title", "description": "title"},
    }
    spec["sink"] = {"kind": "sql", "connection": "news", "table": "post_labels"}
    assert c.post("/v1/pipelines", json=spec).status_code == 201, spec
    first = c.post("/v1/pipelines/timed/run").json()
    assert first["rows_read"] == 5, "the two 30 s old rows wait for the lag"
    _settle(c, d, factory)
    with source.engine.begin() as conn:  # time passes: they are older than the lag now
        conn.execute(
            text("UPDATE posts SET at = :at WHERE id IN (6, 7)"),
            {"at": now - timedelta(minutes=3)},
        )
    second = c.post("/v1/pipelines/timed/run").json()
    assert second["rows_read"] == 2, second
    _settle(c, d, factory)
    assert c.post("/v1/pipelines/timed/run").json()["rows_read"] == 0
    with source.engine.connect() as conn:
        keys = [int(r[0]) for r in conn.execute(text("SELECT key FROM post_labels"))]
    assert sorted(keys) == list(range(1, 8))
    no_lag = {**spec, "name": "at-once", "source": {**spec["source"], "lag": 0}}
    no_lag["sink"] = {**spec["sink"], "table": "post_labels_2"}
    with source.engine.begin() as conn:
        conn.execute(text("UPDATE posts SET at = :at WHERE id = 7"), {"at": now})
    assert c.post("/v1/pipelines", json=no_lag).status_code == 201
    assert c.post("/v1/pipelines/at-once/run").json()["rows_read"] == 7, "lag 0: no wait"


def test_snapshot_consistency_is_postgresql_only_and_named_when_refused(
    api: Any, source: Source, monkeypatch: pytest.MonkeyPatch
) -> None:
    c, _, _ = api
    monkeypatch.setenv("NEWS_DB_URL", source.url)
    spec = _pipeline("exact")
    spec["source"] = {**spec["source"], "consistency": "snapshot"}
    refused = c.post("/v1/pipelines", json=spec)
    assert refused.status_code == 422
    if source.url.startswith("sqlite"):
        assert refused.json()["field"] == "source.consistency", refused.text
    else:  # an integer id is not a transaction id
        assert refused.json()["field"] == "source.watermark", refused.text
        assert "xid8" in refused.text
    with_overlap = {**spec, "source": {**spec["source"], "overlap": 100}}
    assert "exact" in c.post("/v1/pipelines", json=with_overlap).text


@pytest.mark.slow
def test_snapshot_consistency_reads_a_late_commit_exactly_once_without_an_overlap(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, real, the exact mode: the watermark is the writer's transaction id (xid8).
    A transaction holds row 21 open while 22..26 commit: the run reads 1..20 only (22..26's
    transactions began after 21's, which had not ended), then 21..26 once it commits; an
    update (its trigger sets a new transaction id) is read again. Nothing is read twice: no
    overlap window, no de-duplication needed."""
    c, d, factory = api
    with scratch_postgres() as url:
        monkeypatch.setenv("NEWS_DB_URL", url)
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE TABLE feed (id SERIAL PRIMARY KEY, title TEXT,"
                        " txid xid8 NOT NULL DEFAULT pg_current_xact_id())"
                    )
                )
                conn.execute(
                    text(
                        "CREATE FUNCTION feed_txid() RETURNS trigger AS $$ BEGIN"
                        " NEW.txid := pg_current_xact_id(); RETURN NEW; END $$ LANGUAGE plpgsql"
                    )
                )
                conn.execute(
                    text(
                        "CREATE TRIGGER feed_txid BEFORE UPDATE ON feed"
                        " FOR EACH ROW EXECUTE FUNCTION feed_txid()"
                    )
                )
                conn.execute(
                    text(
                        "INSERT INTO feed (title)"
                        " SELECT 'early ' || g FROM generate_series(1, 20) g"
                    )
                )
            spec = _pipeline("exact")
            spec["source"] = {
                **spec["source"],
                "table": "feed",
                "watermark": "txid",
                "consistency": "snapshot",
                "fields": {"title": "title", "description": "title"},
            }
            spec["sink"] = {"kind": "sql", "connection": "news", "table": "feed_labels"}
            created = c.post("/v1/pipelines", json=spec)
            assert created.status_code == 201, created.text
            held = engine.connect()
            slow = held.begin()
            held.execute(text("INSERT INTO feed (title) VALUES ('late')"))
            with engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO feed (title)"
                        " SELECT 'on time ' || g FROM generate_series(1, 5) g"
                    )
                )
            first = c.post("/v1/pipelines/exact/run").json()
            assert first["rows_read"] == 20, first
            _settle(c, d, factory)
            slow.commit()
            held.close()
            second = c.post("/v1/pipelines/exact/run").json()
            assert second["rows_read"] == 6, second
            _settle(c, d, factory)
            with engine.begin() as conn:
                conn.execute(text("UPDATE feed SET title = 'edited' WHERE id = 3"))
            third = c.post("/v1/pipelines/exact/run").json()
            assert third["rows_read"] == 1, third
            _settle(c, d, factory)
            for _ in range(3):
                assert c.post("/v1/pipelines/exact/run").json()["rows_read"] == 0
            with engine.connect() as conn:
                keys = [int(r[0]) for r in conn.execute(text("SELECT key FROM feed_labels"))]
            assert sorted(keys) == list(range(1, 27))
        finally:
            engine.dispose()
