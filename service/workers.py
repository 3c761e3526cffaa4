"""Workers and queues: heartbeats, and which queues have work but no live worker."""

from __future__ import annotations

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


def queues(s: Session, stale_after: float) -> list[QueueHealth]:
    """Every queue that has a live worker or unfinished jobs."""
    live = workers.live_workers(s, utcnow() - timedelta(seconds=stale_after))
    waiting = job_rows.unfinished_queues(s)
    return [
        QueueHealth(queue=q, live_workers=live.get(q, 0), unfinished_jobs=waiting.get(q, 0))
        for q in sorted(set(live) | set(waiting))
    ]
