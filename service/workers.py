"""Workers and queues: heartbeats, and which queues have work but no live worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from pydantic import BaseModel

from db import chunks, workers
from db.session import db_now
from service.context import Ctx


class QueueHealth(BaseModel):
    queue: str
    live_workers: int
    unfinished_jobs: int
    pending_chunks: int = 0  # waiting for a worker
    running_chunks: int = 0  # being scored (under a lease)
    failing_to_load: int = 0  # workers that cannot load the queue's model (taking no tasks)


def beat(ctx: Ctx, name: str, queue: str, model: str) -> None:
    """Record that worker `name` is alive and serving `queue`."""
    with ctx.tx() as s:
        workers.beat(s, name, queue, model)


def leave(ctx: Ctx, name: str) -> None:
    with ctx.tx() as s:
        workers.remove(s, name)
        if ctx.services.features.has(s, "loads"):
            workers.remove_load(s, name)


# A worker that cannot load its model tries again after 5 s, then twice as long each time, up
# to this: the model cache may be filled after the worker started (a loader still copying).
LOAD_RETRY_MAX = 60.0


def load_retry_delays() -> Iterator[float]:
    delay = 5.0
    while True:
        yield delay
        delay = min(2 * delay, LOAD_RETRY_MAX)


def record_load(
    ctx: Ctx, name: str, queue: str, model: str, error: str | None, seconds: float | None
) -> None:
    """Worker `name` loaded `model` in `seconds`, or could not (`error`); kept only on a
    database at revision 0026 or later."""
    with ctx.tx() as s:
        if ctx.services.features.has(s, "loads"):
            workers.record_load(s, name, queue, model, error, seconds)


def _still_trying_since(ctx: Ctx, now: datetime) -> datetime:
    """A failed load recorded since then is a worker still trying: it records each attempt,
    at most LOAD_RETRY_MAX apart, until it is gone (LABELQ_WORKER_STALE_AFTER)."""
    return now - timedelta(seconds=ctx.settings.worker_stale_after + LOAD_RETRY_MAX)


class FailedLoad(BaseModel):
    worker: str
    error: str
    attempts: int


def failed_loads(ctx: Ctx) -> dict[str, FailedLoad]:
    """Queue -> the latest failure to load its model by a worker still trying."""
    with ctx.reads() as s:
        if not ctx.services.features.has(s, "loads"):
            return {}
        since = _still_trying_since(ctx, db_now(s))
        return {
            queue: FailedLoad(worker=name, error=error, attempts=attempts)
            for queue, (name, error, attempts) in workers.failed_loads(s, since).items()
        }


def live_queues(ctx: Ctx) -> dict[str, int]:
    """Queue -> workers seen in the last LABELQ_WORKER_STALE_AFTER seconds."""
    with ctx.reads() as s:
        seen_since = db_now(s) - timedelta(seconds=ctx.settings.worker_stale_after)
        return workers.live_workers(s, seen_since)


def queues(ctx: Ctx) -> list[QueueHealth]:
    """Every queue that has a live worker, unfinished jobs or a worker failing to load."""
    live = live_queues(ctx)
    with ctx.reads() as s:
        waiting = chunks.unfinished_queues(s)
        work = chunks.chunks_by_queue(s)
        failing: dict[str, int] = {}
        if ctx.services.features.has(s, "loads"):
            failing = workers.failed_load_counts(s, _still_trying_since(ctx, db_now(s)))
    return [
        QueueHealth(
            queue=q,
            live_workers=live.get(q, 0),
            unfinished_jobs=waiting.get(q, 0),
            pending_chunks=work.get(q, {}).get("pending", 0),
            running_chunks=work.get(q, {}).get("running", 0),
            failing_to_load=failing.get(q, 0),
        )
        for q in sorted(set(live) | set(waiting) | set(failing))
    ]


class LiveQueues:
    """Queue -> live workers, read from the database at most once a `ttl` (one process's
    cache): every status poll of an unfinished job asks, and the answer moves only at
    heartbeat pace (LABELQ_WORKER_HEARTBEAT, 10 s by default) anyway."""

    def __init__(self, ttl: float = 1.0, timer: Callable[[], float] = time.monotonic):
        self.ttl, self.timer = ttl, timer
        self._lock = threading.Lock()
        self._value: dict[str, int] = {}
        self._until = float("-inf")

    def of(self, ctx: Ctx) -> dict[str, int]:
        now = self.timer()
        with self._lock:
            if now < self._until:
                return self._value
        value = live_queues(ctx)
        with self._lock:
            self._value, self._until = value, now + self.ttl
        return value
