"""A shortened week of a scheduled SQL pipeline against a busy PostgreSQL table, on the fake
engine in this process (a soak, not a test: it checks the outcome and prints figures).

Each tick stands for one 5-minute run (a week is 2016; `--ticks` shortens it). Between ticks
writers insert rows; some take their id and commit only after the next run read past it (a
late commit), some carry a NULL watermark that an operator fills a few ticks later, and some
make the engine fail on them for a run or two. The webhook receiver is down for a stretch of
ticks. At the end the sink must hold every source row exactly once, each with a label (or an
input error), and the receiver every failed-run event at least once.

    .venv/bin/python bench/pipeline_soak.py [--ticks 300] [--rows-per-tick 40]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Receiver:
    """Counts webhook events by id; answers 503 while `down`."""

    def __init__(self) -> None:
        self.down = False
        self.events: dict[str, int] = {}
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                if outer.down:
                    self.send_response(503)
                else:
                    key = self.headers["webhook-id"]
                    outer.events[key] = outer.events.get(key, 0) + 1
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _insert(conn: Any, title: str, seen: bool = True) -> int:
    """A row; its watermark `seen` is its id (taken from the sequence at insert), or NULL."""
    from sqlalchemy import text

    row = int(
        conn.execute(
            text("INSERT INTO feed (title) VALUES (:t) RETURNING id"), {"t": title}
        ).scalar_one()
    )
    if seen:
        conn.execute(text("UPDATE feed SET seen = id WHERE id = :i"), {"i": row})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=300)
    parser.add_argument("--rows-per-tick", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    import os

    from sqlalchemy import create_engine, func, select, text
    from sqlalchemy.orm import sessionmaker

    from db.migrate import upgrade
    from db.models import PipelineRun, WebhookDelivery
    from labelq.backends.fake import FakeBackend
    from labelq.scoring import Scorer
    from service import webhooks
    from service.context import Ctx
    from service.reconcile import sweep
    from tests.conftest import make_client
    from tests.test_pipelines import scratch_postgres

    rng = random.Random(args.seed)
    engine_fault = FakeBackend(fail_marker="flaky")
    receiver = Receiver()
    with tempfile.TemporaryDirectory() as home, scratch_postgres() as source_url:
        own = f"sqlite:///{home}/labelq.db"
        upgrade(own)
        factory = sessionmaker(create_engine(own), expire_on_commit=False)
        os.environ["SOAK_DB"] = source_url
        c, _ = make_client(
            factory,
            Scorer(engine_fault),
            webhook_allow=["127.0.0.1/32"],
            webhook_retry_backoff=0,
            # Time is compressed: a chunk the engine failed whole (a lone flaky row read again
            # by key is one) is due again at the next sweep, not after a real backoff.
            engine_retry_backoff=0,
            pipeline_connections={"src": {"url": "${SOAK_DB}", "write": True}},
        )
        src = create_engine(source_url)
        with src.begin() as conn:
            conn.execute(
                text("CREATE TABLE feed (id BIGSERIAL PRIMARY KEY, title TEXT, seen BIGINT)")
            )
        spec = {
            "name": "soak",
            "classifier": "soak",
            "schedule": {"every": 300},
            "source": {
                "kind": "sql",
                "connection": "src",
                "table": "feed",
                "key": "id",
                "watermark": "seen",
                "fields": {"text": "title"},
                "page_size": 500,
            },
            "sink": {"kind": "sql", "connection": "src", "table": "feed_labels"},
            "webhook": receiver.url,
        }
        classifier = {
            "name": "soak",
            "template": "{{ text }}",
            "labels": {"positive": " positive", "negative": " negative"},
        }
        figures = {"late": 0, "nulls": 0, "flaky": 0}
        started = time.monotonic()
        with c:
            assert c.post("/v1/classifiers", json=classifier).status_code == 201
            assert c.post("/v1/pipelines", json=spec).status_code == 201, spec
            ctx = Ctx.system(c.app.state.labelq.services)
            skipped = 0
            held: list[tuple[Any, Any]] = []  # open transactions, committed after a run
            nulls: list[tuple[int, int]] = []  # (id, tick to fill it at)
            down_from = args.ticks // 3
            down_until = down_from + max(3, args.ticks // 20)
            for tick in range(args.ticks):
                receiver.down = down_from <= tick < down_until
                if tick % 7 == 3:
                    engine_fault.fail_marker = None  # the engine takes them now
                elif tick % 7 == 0:
                    engine_fault.fail_marker = "flaky"
                # writers
                with src.begin() as conn:
                    for _ in range(args.rows_per_tick):
                        word = rng.choice(["good", "bad", "fine", "awful"])
                        if rng.random() < 0.01:
                            word = "flaky " + word
                            figures["flaky"] += 1
                        null = rng.random() < 0.003
                        row = _insert(conn, f"a {word} day", seen=not null)
                        if null:
                            nulls.append((row, tick + 3))
                            figures["nulls"] += 1
                if rng.random() < 0.2:  # a writer that takes an id and commits late
                    late = src.connect()
                    tx = late.begin()
                    _insert(late, "a late fine day")
                    with src.begin() as conn:  # a later id commits meanwhile
                        _insert(conn, "a good day")
                    held.append((late, tx))
                    figures["late"] += 1
                for row, at in list(nulls):  # the operator fills what a failed run named
                    if at <= tick:
                        with src.begin() as conn:
                            conn.execute(
                                text("UPDATE feed SET seen = id WHERE id = :i"), {"i": row}
                            )
                        nulls.remove((row, at))
                run = c.post("/v1/pipelines/soak/run").json()
                skipped = skipped + 1 if run["state"] == "skipped" else 0
                if skipped == 20:  # stuck: say on what
                    every = c.get("/v1/pipelines/soak/runs", params={"limit": 500}).json()
                    stuck = next(r for r in every if r["state"] == "running")
                    job = c.get(f"/v1/jobs/{stuck['job_id']}").json() if stuck["job_id"] else {}
                    from db.models import Chunk

                    with factory() as s:
                        chunk_rows = s.execute(
                            select(
                                Chunk.seq,
                                Chunk.state,
                                Chunk.attempts,
                                Chunk.available_at,
                                Chunk.dispatched_at,
                                Chunk.last_error,
                            ).where(Chunk.job_id == stuck["job_id"])
                        ).all()
                    print(f"tick {tick}: 20 ticks skipped behind run {stuck}, job {job}")
                    print(chunk_rows)
                for late, tx in held:
                    tx.commit()
                    late.close()
                held.clear()
                sweep(ctx)
                webhooks.deliver_due(ctx, "soak")
            # Drain: the last held rows, nulls and flaky rows, and the receiver back.
            engine_fault.fail_marker = None
            receiver.down = False
            with src.begin() as conn:
                conn.execute(text("UPDATE feed SET seen = id WHERE seen IS NULL"))
            for _ in range(30):  # until a run reads nothing new and ends
                last = c.post("/v1/pipelines/soak/run").json()
                sweep(ctx)
                while webhooks.deliver_due(ctx, "soak"):
                    pass
                state = c.get("/v1/pipelines/soak/runs").json()[0]
                if last["rows_read"] == 0 and state["state"] == "succeeded":
                    break
            with factory() as s:
                deliveries = list(s.scalars(select(WebhookDelivery)))
                by_state = {
                    state: n
                    for state, n in s.execute(
                        select(PipelineRun.state, func.count()).group_by(PipelineRun.state)
                    )
                }
        with src.connect() as conn:
            source = conn.execute(text("SELECT COUNT(*) FROM feed")).scalar_one()
            sink = conn.execute(text("SELECT COUNT(*), COUNT(DISTINCT key) FROM feed_labels")).one()
            labelled = conn.execute(
                text("SELECT COUNT(*) FROM feed_labels WHERE label IS NOT NULL")
            ).scalar_one()
            missing = conn.execute(
                text(
                    "SELECT COUNT(*) FROM feed f WHERE NOT EXISTS "
                    "(SELECT 1 FROM feed_labels l WHERE l.key::bigint = f.id)"
                )
            ).scalar_one()
        src.dispose()
    undelivered = [x.id for x in deliveries if x.status != "delivered"]
    received = sum(1 for x in deliveries if f"msg_{x.id}" in receiver.events)
    print(
        f"ticks {args.ticks} (5-minute runs: {args.ticks * 5 / 60 / 24:.2f} days), "
        f"{time.monotonic() - started:.0f} s"
    )
    print(
        f"source rows {source}, late commits {figures['late']}, NULL watermarks "
        f"{figures['nulls']}, rows the engine failed on {figures['flaky']}"
    )
    print(f"sink rows {sink[0]} ({sink[1]} distinct keys), labelled {labelled}, missing {missing}")
    print(
        f"runs by state {by_state}; failed-run events {len(deliveries)}, "
        f"received {received}, not delivered {len(undelivered)}"
    )
    ok = sink[0] == sink[1] == source and missing == 0 and not undelivered
    print("OK" if ok else "NOT OK")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
