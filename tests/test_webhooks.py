"""Webhooks through the outbox (service/webhooks.py, worker.runtime.Deliverer): a slow
receiver holds neither the sweep nor other receivers' events, a receiver that is down for
hours gets every event when it is back, a deliverer that dies mid-request leaves its claim to
the next, failed deliveries are listed and replayable, each only by its own tenant."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import WebhookDelivery
from db.session import db_now
from labelq.settings import Settings
from service import locks, webhooks
from service.context import Ctx
from service.reconcile import sweep
from tests.conftest import create_key, make_client

CLASSIFIER = {
    "name": "news",
    "template": "{{ title }}",
    "labels": {"positive": " positive", "negative": " negative"},
}
Factory = sessionmaker[Session]


class Receiver:
    """A webhook receiver on a loopback address: answers 200, or (with `drip`) holds each
    request open, sending a header line every 0.2 s, until `release` is set."""

    def __init__(self, host: str = "127.0.0.1", drip: bool = False, port: int = 0) -> None:
        self.calls: list[tuple[str, bytes]] = []
        self.open = 0
        self.most_open = 0
        self.release = threading.Event()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer._lock:
                    outer.calls.append((self.headers["webhook-id"], body))
                    outer.open += 1
                    outer.most_open = max(outer.most_open, outer.open)
                try:
                    if drip:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        while not outer.release.wait(0.2):
                            self.wfile.write(b"X-Drip: 1\r\n")  # a header line at a time
                            self.wfile.flush()
                        self.wfile.write(b"Content-Length: 0\r\n\r\n")
                    else:
                        self.send_response(200)
                        self.end_headers()
                except OSError:
                    pass
                finally:
                    with outer._lock:
                        outer.open -= 1

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.fixture
def app(factory: Factory, fake_scorer: Any) -> Iterator[tuple[TestClient, Ctx]]:
    c, _ = make_client(
        factory,
        fake_scorer,
        webhook_allow=["127.0.0.0/8"],
        webhook_retry_backoff=10,
        webhook_timeout=60,
        webhook_per_receiver=2,
        webhook_concurrency=4,
    )
    with c:
        assert c.post("/v1/classifiers", json=CLASSIFIER).status_code == 201
        yield c, Ctx.system(c.app.state.labelq.services)


def _job(c: TestClient, hook: str, headers: dict[str, str] | None = None) -> str:
    body = {"classifier": "news", "items": [{"title": "a"}], "webhook_url": hook}
    r = c.post("/v1/jobs", json=body, headers=headers or {})
    assert r.status_code in (200, 201, 202), r.text
    job_id: str = r.json()["id"]
    return job_id


def _rows(factory: Factory) -> list[WebhookDelivery]:
    with factory() as s:
        return list(s.scalars(select(WebhookDelivery).order_by(WebhookDelivery.id)))


def test_a_dripping_receiver_holds_neither_the_sweep_nor_another_receivers_events(
    app: tuple[TestClient, Ctx], factory: Factory
) -> None:
    """Three events to a receiver that drips its answer and one to a quick one: the quick one
    is delivered while the slow ones hang, the slow host never has more than
    LABELQ_WEBHOOK_PER_RECEIVER requests at once, and a sweep (which re-sends a lost chunk)
    runs to its end meanwhile, and the next event reaches the quick receiver at once. Before
    the outbox the sweep POSTed them one by one: it waited
    out each drip, and the quick receiver waited behind them."""
    from worker.runtime import Deliverer

    c, ctx = app
    slow, quick = Receiver("127.0.0.2", drip=True), Receiver("127.0.0.3")
    deliverer = Deliverer(ctx, "deliverer-1", interval=0.1)
    try:
        for _ in range(3):
            _job(c, slow.url)
        _job(c, quick.url)
        assert sweep(ctx).webhooks_queued == 4
        deliverer.start()
        _wait(lambda: len(quick.calls) == 1, "the quick receiver's event")
        _wait(lambda: slow.open == 2, "two requests held by the slow receiver")
        assert slow.open == 2 and not slow.release.is_set()
        # The sweep (which re-sends lost chunks) runs to its end meanwhile, and queues the
        # next event, which the quick receiver gets at once.
        _job(c, quick.url)
        assert sweep(ctx).webhooks_queued == 1
        assert slow.open == 2, "the sweep ended while the slow receiver still held its two"
        _wait(lambda: len(quick.calls) == 2, "the quick receiver's second event")
        _wait(  # recorded once the receiver answered
            lambda: [r.status for r in _rows(factory) if r.url == quick.url] == ["delivered"] * 2,
            "the quick receiver's deliveries recorded",
        )
        assert slow.open == 2
        slow.release.set()
        _wait(
            lambda: [r.status for r in _rows(factory) if r.url == slow.url] == ["delivered"] * 3,
            "the slow receiver's three events",
        )
    finally:
        deliverer.stop()
        slow.close()
        quick.close()
    assert slow.most_open == 2, f"{slow.most_open} requests at once to one receiver"
    assert len(slow.calls) == 3 and len({i for i, _ in slow.calls}) == 3


def _pass_time(factory: Factory) -> float:
    """Make every pending delivery due now, as if its wait had passed: the retry window is
    moved back by the same amount. Returns the longest wait skipped, in seconds."""
    skipped = 0.0
    with factory.begin() as s:
        now = db_now(s)
        for row in s.scalars(select(WebhookDelivery).where(WebhookDelivery.status == "pending")):
            wait = max((row.next_attempt_at.replace(tzinfo=now.tzinfo) - now).total_seconds(), 0)
            skipped = max(skipped, wait)
            row.next_attempt_at = now
            if row.give_up_at is not None:
                row.give_up_at = row.give_up_at.replace(tzinfo=now.tzinfo) - timedelta(seconds=wait)
    return skipped


def _round(ctx: Ctx) -> int:
    """Deliver until nothing is due (LABELQ_WEBHOOK_PER_RECEIVER=2 a round to one host)."""
    total = 0
    while claimed := webhooks.deliver_due(ctx, "d"):
        total += claimed
    return total


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_receiver_down_for_two_hours_gets_every_event_after_it_comes_back(
    app: tuple[TestClient, Ctx], factory: Factory
) -> None:
    """A receiver that refuses connections for two hours of retries (the waits are skipped,
    the clock is not): every event stays pending, and all arrive once it is back, each with
    the one id all its attempts carried. Before, a delivery was dropped after 8 attempts,
    about 21 minutes."""
    c, ctx = app
    port = _closed_port()
    hook = f"http://127.0.0.1:{port}/hook"
    jobs = [_job(c, hook) for _ in range(3)]
    sweep(ctx)
    elapsed, attempts = 0.0, 0
    while elapsed < 2 * 3600:
        assert _round(ctx) == 3
        attempts += 1
        elapsed += _pass_time(factory)
    rows = _rows(factory)
    assert [r.status for r in rows] == ["pending"] * 3 and attempts > 8
    assert all(r.attempts == attempts and "ConnectError" in (r.last_error or "") for r in rows)
    receiver = Receiver(port=port)
    try:
        assert _round(ctx) == 3
    finally:
        receiver.close()
    assert [r.status for r in _rows(factory)] == ["delivered"] * 3
    assert sorted(i for i, _ in receiver.calls) == sorted(f"msg_{r.id}" for r in rows)
    for job_id in jobs:
        (delivery,) = c.get(f"/v1/jobs/{job_id}/webhooks").json()
        assert delivery["status"] == "delivered" and delivery["attempts"] == attempts + 1


def test_past_its_window_a_delivery_fails_is_listed_and_can_be_sent_again(
    app: tuple[TestClient, Ctx], factory: Factory
) -> None:
    c, ctx = app
    port = _closed_port()
    job_id = _job(c, f"http://127.0.0.1:{port}/hook")
    sweep(ctx)
    webhooks.deliver_due(ctx, "d")
    with factory.begin() as s:  # three days later
        s.execute(update(WebhookDelivery).values(give_up_at=db_now(s), next_attempt_at=db_now(s)))
    webhooks.deliver_due(ctx, "d")
    (failed,) = c.get("/v1/webhooks", params={"status": "failed"}).json()
    assert failed["attempts"] == 2 and failed["next_attempt_at"] is None
    assert c.get("/v1/webhooks", params={"status": "pending"}).json() == []
    receiver = Receiver(port=port)
    try:
        again = c.post(f"/v1/webhooks/{failed['id']}/redeliver")
        assert again.status_code == 200 and again.json()["status"] == "pending"
        assert webhooks.deliver_due(ctx, "d") == 1
    finally:
        receiver.close()
    (delivery,) = c.get(f"/v1/jobs/{job_id}/webhooks").json()
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3
    assert [i for i, _ in receiver.calls] == [f"msg_{failed['id']}"]
    assert c.post("/v1/webhooks/999999/redeliver").status_code == 404


def test_a_deliverer_that_dies_mid_request_leaves_its_claim_to_the_next(
    app: tuple[TestClient, Ctx], factory: Factory
) -> None:
    """A deliverer claims a delivery and dies before it records anything: nobody else POSTs
    it while that claim's lease holds; once it runs out, the next deliverer delivers it, and a
    late report from the dead one changes nothing."""
    from db import webhooks as deliveries_db

    c, ctx = app
    receiver = Receiver()
    try:
        _job(c, receiver.url)
        sweep(ctx)
        (claimed,) = webhooks.claim(ctx, "dead", 8)  # ...and the process dies here
        assert webhooks.deliver_due(ctx, "alive") == 0, "the live claim is left alone"
        assert receiver.calls == []
        with factory.begin() as s:  # the lease runs out (labelq's own timer, shortened)
            past = db_now(s) - timedelta(seconds=1)
            s.execute(update(WebhookDelivery).values(lease_expires_at=past))
        assert webhooks.deliver_due(ctx, "alive") == 1
    finally:
        receiver.close()
    with factory.begin() as s:
        late = deliveries_db.record_attempt(
            s, claimed.id, "dead", db_now(s), None, "gone", backoff=10
        )
    assert late is None
    (row,) = _rows(factory)
    assert (row.status, row.attempts, row.claimed_by) == ("delivered", 1, None)
    assert len(receiver.calls) == 1


def test_a_tenant_lists_and_replays_only_its_own_deliveries(
    factory: Factory, fake_scorer: Any
) -> None:
    """A `submit` key cannot replay a delivery; a tenant's admin lists and replays its own
    only: another tenant's delivery is not found, and stays as it was."""
    c, _ = make_client(factory, fake_scorer, no_auth=False, webhook_allow=["127.0.0.0/8"])
    with c:
        keys = {
            name: {"Authorization": f"Bearer {create_key(factory, name, tenant, scopes)}"}
            for name, tenant, scopes in (
                ("a-submit", "acme", ("read", "submit")),
                ("a-admin", "acme", ("read", "admin")),
                ("b-admin", "bolt", ("read", "submit", "admin")),
            )
        }
        for who in ("a-submit", "b-admin"):
            assert c.post("/v1/classifiers", json=CLASSIFIER, headers=keys[who]).status_code
        _job(c, f"http://127.0.0.1:{_closed_port()}/a", keys["a-submit"])
        _job(c, f"http://127.0.0.1:{_closed_port()}/b", keys["b-admin"])
        sweep(Ctx.system(c.app.state.labelq.services))
        (mine,) = c.get("/v1/webhooks", headers=keys["a-admin"]).json()
        (theirs,) = c.get("/v1/webhooks", headers=keys["b-admin"]).json()
        assert mine["id"] != theirs["id"] and mine["url"].endswith("/a")
        replay = f"/v1/webhooks/{mine['id']}/redeliver"
        assert c.post(replay, headers=keys["a-submit"]).status_code == 403
        assert c.post(replay, headers=keys["a-admin"]).status_code == 200
        other = c.post(f"/v1/webhooks/{theirs['id']}/redeliver", headers=keys["a-admin"])
        assert other.status_code == 404
    with factory() as s:
        row = s.get_one(WebhookDelivery, theirs["id"])
        assert row.give_up_at is None, "another tenant's delivery was not touched"


def test_the_sweep_lock_is_renewed_while_a_long_sweep_runs(factory: Factory) -> None:
    """A sweep that outlasts its lock's lease (a slow sink) keeps the lock: another worker
    does not start a second sweep beside it. Once it ends, renewal stops."""
    from tests.conftest import system

    ctx = system(factory, Settings())
    assert locks.take(ctx, "reconciler", "w1", 1.0)
    with locks.renewing(ctx, "reconciler", "w1", 1.0):
        time.sleep(2.0)
        assert not locks.take(ctx, "reconciler", "w2", 1.0)
        assert locks.holder(ctx, "reconciler") == "w1"
    time.sleep(1.2)
    assert locks.take(ctx, "reconciler", "w2", 1.0)
