"""What a tenant holding a key can reach, tried as the attacks were: through HTTP against the
real app, with two tenants' keys. Each is refused with a 4xx naming the field, or has no
effect: nothing of another tenant's or of the server's in any answer, file or request."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from labelq.settings import Settings
from service import webhooks
from service.context import Ctx
from service.reconcile import sweep
from service.webhooks import signed_headers
from tests.conftest import create_key, make_client

CLASSIFIER = {
    "name": "news",
    "template": "{{ title }}",
    "labels": {"positive": " positive", "negative": " negative"},
}


class Tenants:
    """The app with keys for two tenants (`a`, `b`), each with `read`, `submit` and
    `pipelines`, and an operator key (`root`, the default tenant's admin)."""

    def __init__(self, c: TestClient, factory: Any):
        self.c = c
        self.root = {"Authorization": f"Bearer {create_key(factory, 'root')}"}
        scopes = ("read", "submit", "pipelines")
        self.a = {"Authorization": f"Bearer {create_key(factory, 'a', 'acme', scopes)}"}
        self.b = {"Authorization": f"Bearer {create_key(factory, 'b', 'bolt', scopes)}"}
        for who in (self.a, self.b):
            assert c.post("/v1/classifiers", json=CLASSIFIER, headers=who).status_code == 201

    def pipeline(self, who: dict[str, str], **parts: Any) -> Any:
        spec = {"name": "p", "classifier": "news", "schedule": {"every": 3600}, **parts}
        return self.c.post("/v1/pipelines", json=spec, headers=who)


@pytest.fixture
def tenants(factory: Any, fake_scorer: Any, tmp_path: Path) -> Iterator[Tenants]:
    own = tmp_path / "labelq.db"  # what db_url made, for the SQLite tier
    other = tmp_path / "other.db"
    engine = create_engine(f"sqlite:///{other}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE articles (id INTEGER PRIMARY KEY, title TEXT)"))
        conn.execute(text("INSERT INTO articles VALUES (1, 'a good day')"))
    engine.dispose()
    (tmp_path / "inbox" / "acme").mkdir(parents=True)
    (tmp_path / "outbox").mkdir()
    c, _ = make_client(
        factory,
        fake_scorer,
        no_auth=False,
        pipeline_connections={
            "news": {"url": f"sqlite:///{other}", "tenants": ["acme"]},
            "shared": f"sqlite:///{other}",
        },
        pipeline_roots={
            "inbox": str(tmp_path / "inbox"),
            "outbox": {"path": str(tmp_path / "outbox"), "write": True},
        },
    )
    del own
    with c:
        yield Tenants(c, factory)


SQL_SOURCE = {
    "kind": "sql",
    "connection": "news",
    "table": "articles",
    "key": "id",
    "fields": {"title": "title"},
}


def test_a_pipeline_names_the_operators_connections_only(tenants: Tenants) -> None:
    """No URL, no `${VAR}`: a tenant names a connection, and only one bound to it."""
    a, b = tenants.a, tenants.b
    own = os.environ.get("LABELQ_DATABASE_URL", "sqlite:////var/labelq.db")
    for source, field in [
        ({**SQL_SOURCE, "connection": None, "url": own}, "source.connection"),
        ({**SQL_SOURCE, "connection": "${LABELQ_DATABASE_URL}"}, "source.connection"),
        ({**SQL_SOURCE, "table": "${HOME}"}, "source.table"),
        ({**SQL_SOURCE, "connection": "news"}, "source.connection"),  # bound to acme only
    ]:
        r = tenants.pipeline(b, source={k: v for k, v in source.items() if v is not None})
        assert r.status_code == 422, (source, r.text)
        assert r.json()["field"] == field, (source, r.json())
        assert "/" not in r.json()["error"].replace("http(s)", ""), "no path or URL told back"
    assert tenants.pipeline(a, source=SQL_SOURCE).status_code == 201
    # Tenant b is told nothing of acme's connection: as if it did not exist.
    r = tenants.pipeline(b, source=SQL_SOURCE)
    assert "no connection named 'news'" in r.json()["error"] and "'shared'" in r.json()["error"]


def test_labelqs_own_database_is_never_a_connection(tmp_path: Path) -> None:
    own = f"sqlite:///{tmp_path / 'labelq.db'}"
    with pytest.raises(ValueError, match="'mine' is labelq's own database"):
        Settings(database_url=own, pipeline_connections={"mine": own})
    with pytest.raises(ValueError, match="'mine' is labelq's own database"):
        Settings(
            database_url="postgresql://labelq@db:5432/labelq",
            pipeline_connections={"mine": "postgresql+psycopg://reader:pw@db/labelq"},
        )
    with pytest.raises(ValueError, match="root 'home' holds labelq's own database"):
        Settings(database_url=own, pipeline_roots={"home": str(tmp_path)})
    Settings(
        database_url="postgresql://labelq@db:5432/labelq",
        pipeline_connections={"news": "postgresql://reader@db:5432/news"},
    )


def test_folders_stay_inside_their_root(tenants: Tenants, tmp_path: Path) -> None:
    a = tenants.a
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "x.jsonl").write_text(json.dumps({"title": "the server's"}) + "\n")
    inbox = tmp_path / "inbox" / "acme"
    (inbox / "leak").symlink_to(outside)  # a folder link leaving the root
    (inbox / "passwd.jsonl").symlink_to(outside / "x.jsonl")  # a file link
    for path, field in [
        ("/etc", "source.path"),
        ("../secret", "source.path"),
        ("acme/../../secret", "source.path"),
        ("acme/leak", "source.path"),
    ]:
        r = tenants.pipeline(a, source={"kind": "files", "root": "inbox", "path": path})
        assert r.status_code == 422 and r.json()["field"] == field, (path, r.text)
        assert str(tmp_path) not in r.json()["error"], "the host's paths are not told"
    r = tenants.pipeline(a, source={"kind": "files", "root": "nowhere"})
    assert r.status_code == 422 and r.json()["field"] == "source.root"
    # The folder itself: its link to a file outside is not a file of it, and is never read.
    r = tenants.pipeline(
        a, source={"kind": "files", "root": "inbox", "path": "acme", "settle_seconds": 0}
    )
    assert r.status_code == 201, r.text
    run = tenants.c.post("/v1/pipelines/p/run", headers=a).json()
    assert run["rows_read"] == 0 and not run["files"], run
    # A sink writes inside a writable root only.
    sink = {"kind": "files", "root": "inbox", "path": "x"}
    r = tenants.c.patch("/v1/pipelines/p", json={"sink": sink}, headers=a)
    assert r.status_code == 422 and "read-only" in r.json()["error"]
    sink = {"kind": "files", "root": "outbox", "path": "../escape"}
    r = tenants.c.patch("/v1/pipelines/p", json={"sink": sink}, headers=a)
    assert r.status_code == 422 and r.json()["field"] == "sink.path"
    assert not (tmp_path / "escape").exists()


def test_pipelines_need_their_own_scope(tenants: Tenants, factory: Any) -> None:
    submitter = {"Authorization": f"Bearer {create_key(factory, 's', 'acme', ('submit',))}"}
    r = tenants.pipeline(submitter, source=SQL_SOURCE)
    assert r.status_code == 403 and "'pipelines' scope" in r.json()["error"]

    # Setting a watermark, too; and another tenant's pipeline is not found, untouched.
    from db.pipelines import add_pipeline

    with factory.begin() as s:  # bolt's pipeline of the same name
        add_pipeline(s, "p", {"name": "p"}, True, tenant="bolt")
    move = {"order": 10**6}
    r = tenants.c.put("/v1/pipelines/p/watermark", json=move, headers=submitter)
    assert r.status_code == 403
    r = tenants.c.put("/v1/pipelines/p/watermark", json=move, headers=tenants.a)
    assert r.status_code == 404
    with factory() as s:
        untouched = s.execute(text("SELECT watermark, revision FROM pipelines")).all()
        assert untouched == [(None, 0)]


def test_a_source_that_never_answers_takes_the_connect_timeout(
    factory: Any, fake_scorer: Any
) -> None:
    """A database that accepts the connection and says nothing held an API thread for as
    long as it liked; now the check gives up after LABELQ_PIPELINE_CONNECT_TIMEOUT."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    port = silent.getsockname()[1]
    c, _ = make_client(
        factory,
        fake_scorer,
        pipeline_connect_timeout=1,
        pipeline_connections={"slow": f"postgresql://reader@127.0.0.1:{port}/news"},
    )
    try:
        with c:
            c.post("/v1/classifiers", json=CLASSIFIER)
            start = time.monotonic()
            spec = {
                "name": "p",
                "classifier": "news",
                "schedule": {"every": 60},
                "source": {**SQL_SOURCE, "connection": "slow"},
            }
            r = c.post("/v1/pipelines", json=spec)
            took = time.monotonic() - start
    finally:
        silent.close()
    assert r.status_code == 422 and r.json()["field"] == "source.connection", r.text
    assert "127.0.0.1" not in r.json()["error"], "the operator's hosts are not told"
    assert took < 20, f"the check waited {took:.0f} s"


@pytest.mark.slow
def test_a_postgres_source_is_read_only_and_bounded(
    factory: Any, fake_scorer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the query, a source's transaction is read-only (a function that writes fails)
    and a statement past LABELQ_PIPELINE_STATEMENT_TIMEOUT is cancelled by the server; URL
    options in the operator's URL (`options`, `autocommit`) do not lift either."""
    from labelq import targets
    from tests.test_pipelines import scratch_postgres

    limits = targets.Limits(connect_timeout=5, statement_timeout=1, lock_timeout=1)
    with scratch_postgres() as url:
        admin = create_engine(url)
        with admin.begin() as conn:
            conn.execute(text("CREATE SEQUENCE s; CREATE TABLE t (id int)"))
        admin.dispose()
        lifted = url + "?options=-c%20default_transaction_read_only%3Doff&autocommit=true"
        engine = targets.engine(lifted, limits, read_only=True)
        try:
            with engine.connect() as conn, pytest.raises(Exception, match="read-only transaction"):
                conn.execute(text("SELECT nextval('s')"))
            with engine.connect() as conn, pytest.raises(Exception, match="read-only transaction"):
                conn.execute(text("INSERT INTO t VALUES (1)"))
            start = time.monotonic()
            with engine.connect() as conn, pytest.raises(Exception, match="statement timeout"):
                conn.execute(text("SELECT pg_sleep(30)"))
            assert time.monotonic() - start < 10
        finally:
            engine.dispose()


class Listener:
    """An HTTP server on loopback that records whatever reaches it."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.calls: list[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.calls.append(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()


def _notified(c: TestClient, hook: str) -> tuple[dict[str, Any], float]:
    """A one-item job of the open client's tenant naming `hook`, scored, and one sweep: its
    delivery, and the seconds the sweep took."""
    c.post("/v1/classifiers", json=CLASSIFIER)
    body = {"classifier": "news", "items": [{"title": "a"}], "webhook_url": hook}
    job = c.post("/v1/jobs", json=body).json()
    start = time.monotonic()
    ctx = Ctx.system(c.app.state.labelq.services)
    sweep(ctx)
    webhooks.deliver_due(ctx, "test-deliverer")
    took = time.monotonic() - start
    return c.get(f"/v1/jobs/{job['id']}/webhooks").json()[0], took


def test_webhooks_never_reach_loopback_by_name(factory: Any, fake_scorer: Any) -> None:
    """A host name that resolves to loopback (here `localhost`) is refused when the request is
    made, at the address itself: the listener receives nothing, and the delivery says why
    without telling what answered."""
    listener = Listener()
    try:
        c, _ = make_client(factory, fake_scorer, webhook_retry_backoff=0)
        with c:
            delivery, _ = _notified(c, f"http://localhost:{listener.port}/hook")
    finally:
        listener.close()
    assert listener.calls == []
    assert delivery["last_status"] is None and "loopback address" in delivery["last_error"]


def test_webhooks_follow_no_redirect_and_sign_per_tenant(factory: Any, fake_scorer: Any) -> None:
    """With loopback allowed by the operator: a redirect is an error, not followed; each
    tenant's events verify with its own secret only."""
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError

    target = Listener()
    redirector = Listener(302, {"Location": f"http://127.0.0.1:{target.port}/stolen"})
    try:
        c, _ = make_client(
            factory, fake_scorer, webhook_retry_backoff=0, webhook_allow=["127.0.0.1/32"]
        )
        with c:
            t = Tenants(c, factory)
            hook = f"http://127.0.0.1:{redirector.port}/hook"
            jobs = {}
            for name, who in (("a", t.a), ("b", t.b)):
                body = {"classifier": "news", "items": [{"title": "x"}], "webhook_url": hook}
                jobs[name] = c.post("/v1/jobs", json=body, headers=who).json()["id"]
            ctx = Ctx.system(c.app.state.labelq.services)
            sweep(ctx)
            webhooks.deliver_due(ctx, "test-deliverer")
            secrets = {}
            for name, key in (("a", "acme"), ("b", "bolt")):
                admin = create_key(factory, f"admin-{key}", key, ("admin",))
                secrets[name] = c.get(
                    "/v1/webhooks/secret", headers={"Authorization": f"Bearer {admin}"}
                ).json()["secret"]
            deliveries = c.get(f"/v1/jobs/{jobs['a']}/webhooks", headers=t.a).json()
    finally:
        target.close()
        redirector.close()
    assert target.calls == [], "the redirect was not followed"
    assert "redirects are not followed" in deliveries[0]["last_error"]
    assert secrets["a"] != secrets["b"]
    assert len(redirector.calls) == 2
    # Each event verifies with its tenant's secret, and not with the other's.

    body = redirector.calls[0]
    event = json.loads(body)
    owner = "a" if event["job"]["id"] == jobs["a"] else "b"
    other = "b" if owner == "a" else "a"
    headers = signed_headers(secrets[owner], "msg_1", body, datetime.now(UTC))
    Webhook(secrets[owner]).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets[other]).verify(body, headers)


def test_a_dripping_receiver_is_cut_off_at_the_deadline(factory: Any, fake_scorer: Any) -> None:
    """A receiver that answers a byte every half second held the sweep indefinitely; the
    whole request now has LABELQ_WEBHOOK_TIMEOUT."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    stop = threading.Event()

    def drip() -> None:
        conn, _ = server.accept()
        conn.recv(65536)
        for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000:
            if stop.wait(0.5):
                break
            try:
                conn.send(bytes([byte]))
            except OSError:
                break
        conn.close()

    threading.Thread(target=drip, daemon=True).start()
    try:
        c, _ = make_client(
            factory,
            fake_scorer,
            webhook_allow=["127.0.0.1/32"],
            webhook_timeout=2,
            webhook_retry_backoff=0,
        )
        with c:
            delivery, took = _notified(c, f"http://127.0.0.1:{port}/hook")
    finally:
        stop.set()
        server.close()
    assert took < 10, f"the sweep waited {took:.0f} s"
    assert "no answer within 2 s" in delivery["last_error"]


def test_metrics_are_the_operators(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer, no_auth=False)
    with c:
        t = Tenants(c, factory)
        c.post("/v1/jobs", json={"classifier": "news", "items": [{"title": "a"}]}, headers=t.a)
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=t.a).status_code == 403  # no metrics scope
        scraper = create_key(factory, "scraper", "acme", ("metrics",))
        r = c.get("/metrics", headers={"Authorization": f"Bearer {scraper}"})
        assert r.status_code == 403 and "operator" in r.json()["error"]
        operator = create_key(factory, "prometheus", "default", ("metrics",))
        text_ = c.get("/metrics", headers={"Authorization": f"Bearer {operator}"}).text
    assert "labelq_predictions_total" in text_
    for name in ("acme", "bolt", "news", "positive", "negative"):
        assert name not in text_, f"{name!r} is named without LABELQ_METRICS_CLASSIFIER_LABELS"


def test_idempotency_keys_are_each_tenants_own(tenants: Tenants) -> None:
    c = tenants.c
    body = {"classifier": "news", "items": [{"title": "a"}]}
    key = {"Idempotency-Key": "nightly-2026-12-02"}
    first = c.post("/v1/jobs", json=body, headers={**tenants.a, **key})
    assert first.status_code == 202
    again = c.post("/v1/jobs", json=body, headers={**tenants.a, **key})
    assert again.json()["id"] == first.json()["id"]
    other = c.post("/v1/jobs", json=body, headers={**tenants.b, **key})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    assert c.get(f"/v1/jobs/{first.json()['id']}", headers=tenants.b).status_code == 404


def test_one_client_cannot_stall_or_exhaust_the_api(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(
        factory, fake_scorer, max_spec_bytes=4096, max_json_job_bytes=2048, no_auth=False
    )
    with c:
        t = Tenants(c, factory)
        yaml_type = {**t.a, "Content-Type": "application/yaml"}
        bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a]\n"
        r = c.post("/v1/classifiers", content=bomb, headers=yaml_type)
        assert r.status_code == 422 and "aliases" in r.json()["error"]
        big = "name: x\ntemplate: '" + "y" * 5000 + "'\nlabels: {a: ' a', b: ' b'}\n"
        r = c.post("/v1/classifiers", content=big, headers=yaml_type)
        assert r.status_code == 413 and "LABELQ_MAX_SPEC_BYTES" in r.json()["error"]
        loops = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        spec = {**CLASSIFIER, "name": "slow", "template": loops + "{{ title }}"}
        start = time.monotonic()
        r = c.post("/v1/classifiers", json=spec, headers=t.a)
        assert r.status_code == 422 and r.json()["field"] == "template", r.text
        assert time.monotonic() - start < 15
        many = {**CLASSIFIER, "name": "many", "labels": {f"l{i}": f" l{i}" for i in range(201)}}
        r = c.post("/v1/classifiers", json=many, headers=t.a)
        assert r.status_code == 422 and r.json()["field"] == "labels"
        items = [{"title": "x" * 100} for _ in range(50)]
        r = c.post("/v1/jobs", json={"classifier": "news", "items": items}, headers=t.a)
        assert r.status_code == 413 and "JSONL" in r.json()["error"]
        lines = "\n".join(json.dumps(i) for i in items).encode()
        r = c.post(
            "/v1/jobs?classifier=news",
            content=lines,
            headers={**t.a, "Content-Type": "application/x-ndjson"},
        )
        assert r.status_code == 202 and r.json()["total"] == 50


def test_the_rate_limit_is_the_keys_however_it_is_written(factory: Any, fake_scorer: Any) -> None:
    c, _ = make_client(factory, fake_scorer, submissions_per_minute=2, no_auth=False)
    with c:
        key = create_key(factory, "k")
        c.post("/v1/classifiers", json=CLASSIFIER, headers={"Authorization": f"Bearer {key}"})
        body = {"classifier": "news", "items": [{"title": "a"}]}
        codes = [
            c.post("/v1/jobs", json=body, headers={"Authorization": written}).status_code
            for written in (f"Bearer {key}", f"bearer {key}", f"BEARER   {key}  ")
        ]
    assert codes == [202, 202, 429]


def test_keys_create_names_its_tenant_and_scopes() -> None:
    from tests.conftest import run_cli

    done = run_cli("keys", "create", "--name", "x")
    assert done.returncode == 2 and "--tenant" in done.stderr and "--scopes" in done.stderr
