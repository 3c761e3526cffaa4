"""Worker heartbeats: which model queues have a live worker."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.orm import Session

from db.models import Worker, WorkerLoad
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


def record_load(
    s: Session, name: str, queue: str, model: str, error: str | None, seconds: float | None
) -> None:
    """Worker `name`'s latest attempt to load `model`: loaded in `seconds`, or `error`."""
    row = s.get(WorkerLoad, name)
    now = db_now(s)
    if row is None:
        s.add(
            WorkerLoad(
                name=name,
                queue=queue,
                model=model,
                error=error,
                load_seconds=seconds,
                attempts=1,
                tried_at=now,
            )
        )
    else:
        row.queue, row.model, row.error, row.load_seconds = queue, model, error, seconds
        row.attempts, row.tried_at = row.attempts + 1, now


def remove_load(s: Session, name: str) -> None:
    s.execute(delete(WorkerLoad).where(WorkerLoad.name == name))


def _failing(tried_since: datetime) -> tuple[ColumnElement[bool], ...]:
    """Load records whose latest attempt, since `tried_since`, failed."""
    return WorkerLoad.error.is_not(None), WorkerLoad.tried_at >= tried_since


def failed_loads(s: Session, tried_since: datetime) -> dict[str, tuple[str, str, int]]:
    """Queue -> (worker, error, attempts) of the worker that most recently failed to load
    that queue's model since `tried_since`."""
    rows = s.execute(
        select(WorkerLoad.queue, WorkerLoad.name, WorkerLoad.error, WorkerLoad.attempts)
        .where(*_failing(tried_since))
        .order_by(WorkerLoad.tried_at)
    )
    return {queue: (name, error or "", attempts) for queue, name, error, attempts in rows}


def forget_stale_loads(s: Session, tried_before: datetime) -> int:
    """Drop load records not renewed since `tried_before` (their worker is gone)."""
    return rowcount(s.execute(delete(WorkerLoad).where(WorkerLoad.tried_at < tried_before)))


def failed_load_counts(s: Session, tried_since: datetime) -> dict[str, int]:
    """Queue -> workers whose latest attempt to load its model, since `tried_since`, failed."""
    rows = s.execute(
        select(WorkerLoad.queue, func.count())
        .where(*_failing(tried_since))
        .group_by(WorkerLoad.queue)
    )
    return {queue: n for queue, n in rows}
