"""Worker heartbeats: which model queues have a live worker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from db.models import Worker
from db.session import db_now, rowcount


def beat(s: Session, name: str, queue: str, model: str) -> None:
    """Record that worker `name` is alive and serving `queue`."""
    row = s.get(Worker, name)
    now = db_now(s)
    if row is None:
        s.add(Worker(name=name, queue=queue, model=model, started_at=now, last_seen_at=now))
    else:
        row.queue, row.model, row.last_seen_at = queue, model, now


def remove(s: Session, name: str) -> None:
    s.execute(delete(Worker).where(Worker.name == name))


def live_workers(s: Session, seen_since: datetime) -> dict[str, int]:
    """Queue -> number of workers seen since `seen_since`."""
    return {
        queue: n
        for queue, n in s.execute(
            select(Worker.queue, func.count())
            .where(Worker.last_seen_at >= seen_since)
            .group_by(Worker.queue)
        )
    }


def forget_stale(s: Session, seen_before: datetime) -> int:
    """Drop workers not seen since `seen_before` (gone without saying so)."""
    return rowcount(s.execute(delete(Worker).where(Worker.last_seen_at < seen_before)))
