"""Liveness, readiness and metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from api.deps import AppState, state
from db.models import Job

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(response: Response, st: AppState = Depends(state)) -> dict[str, object]:
    def db_ok() -> bool:
        try:
            with st.factory() as s:
                s.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    checks = {
        "database": await run_in_threadpool(db_ok),
        "broker": await run_in_threadpool(st.dispatcher.ping),
    }
    ready = all(checks.values())
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "checks": checks}


@router.get("/metrics")
def metrics(st: AppState = Depends(state)) -> Response:
    from prometheus_client import CollectorRegistry, Gauge

    # Job counts by state come from the database at scrape time.
    registry = CollectorRegistry()
    gauge = Gauge("labelq_jobs", "Jobs by state", ["state"], registry=registry)
    with st.factory() as s:
        for job_state, count in s.execute(select(Job.state, func.count()).group_by(Job.state)):
            gauge.labels(job_state).set(count)
    body = generate_latest(st.metrics.registry) + generate_latest(registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
