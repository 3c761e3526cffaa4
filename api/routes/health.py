"""Liveness, readiness and metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.deps import DbDep, StateDep
from db.jobs import count_jobs_by_state
from service import workers

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(response: Response, st: StateDep) -> dict[str, Any]:
    """Ready when the database and the broker answer. Queues with unfinished jobs and no live
    worker are listed under `unserved_queues` (the service is still ready: it takes jobs)."""

    def database() -> tuple[bool, list[str]]:
        try:
            with st.factory() as s:
                s.execute(text("SELECT 1"))
                health = workers.queues(s, st.settings.worker_stale_after)
            return True, [q.queue for q in health if q.unfinished_jobs and not q.live_workers]
        except Exception:
            return False, []

    db_ok, unserved = await run_in_threadpool(database)
    checks = {"database": db_ok, "broker": await run_in_threadpool(st.dispatcher.ping)}
    ready = all(checks.values())
    response.status_code = 200 if ready else 503
    return {
        "status": "ready" if ready else "not ready",
        "checks": checks,
        "unserved_queues": unserved,
    }


@router.get("/metrics")
async def metrics(db: DbDep, st: StateDep) -> Response:
    """The app's own counters, plus gauges read from the database at scrape time."""
    body = await db(_database_gauges, st.settings.worker_stale_after)
    return Response(generate_latest(st.metrics.registry) + body, media_type=CONTENT_TYPE_LATEST)


def _database_gauges(s: Session, stale_after: float) -> bytes:
    registry = CollectorRegistry()
    jobs = Gauge("labelq_jobs", "Jobs by state", ["state"], registry=registry)
    for job_state, count in count_jobs_by_state(s).items():
        jobs.labels(job_state).set(count)
    live = Gauge(
        "labelq_queue_workers", "Live workers per model queue", ["queue"], registry=registry
    )
    waiting = Gauge(
        "labelq_queue_unfinished_jobs",
        "Unfinished jobs per model queue (with no live worker they cannot progress)",
        ["queue", "served"],
        registry=registry,
    )
    for q in workers.queues(s, stale_after):
        live.labels(q.queue).set(q.live_workers)
        waiting.labels(q.queue, "yes" if q.live_workers else "no").set(q.unfinished_jobs)
    return bytes(generate_latest(registry))
