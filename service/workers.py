"""Workers and queues: heartbeats, and which queues have work but no live worker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

from pydantic import BaseModel
from sqlalchemy.orm import Session

from db import jobs as job_rows
from db import workers
from db.models import utcnow


class QueueHealth(BaseModel):
    queue: str
    live_workers: int
    unfinished_jobs: int


def beat(s: Session, name: str, queue: str, model: str) -> None:
    workers.beat(s, name, queue, model)
    s.commit()


def leave(s: Session, name: str) -> None:
    workers.remove(s, name)
    s.commit()


def live_queues(s: Session, stale_after: float) -> dict[str, int]:
    """Queue -> workers seen in the last `stale_after` seconds."""
    return workers.live_workers(s, utcnow() - timedelta(seconds=stale_after))


def queues(s: Session, stale_after: float) -> list[QueueHealth]:
    """Every queue that has a live worker or unfinished jobs."""
    live = live_queues(s, stale_after)
    waiting = job_rows.unfinished_queues(s)
    return [
        QueueHealth(queue=q, live_workers=live.get(q, 0), unfinished_jobs=waiting.get(q, 0))
        for q in sorted(set(live) | set(waiting))
    ]


class LiveQueues:
    """Queue -> live workers, read from the database at most once a `ttl` (one API process's
    cache): every status poll of an unfinished job asks, and the answer moves only at
    heartbeat pace (LABELQ_WORKER_HEARTBEAT, 10 s by default) anyway."""

    def __init__(
        self, stale_after: float, ttl: float = 1.0, timer: Callable[[], float] = time.monotonic
    ):
        self.stale_after, self.ttl, self.timer = stale_after, ttl, timer
        self._lock = threading.Lock()
        self._value: dict[str, int] = {}
        self._until = float("-inf")

    def __call__(self, s: Session) -> dict[str, int]:
        now = self.timer()
        with self._lock:
            if now < self._until:
                return self._value
        value = live_queues(s, self.stale_after)
        with self._lock:
            self._value, self._until = value, now + self.ttl
        return value
