"""Webhook deliveries: one row per event (a unique key), found from ended jobs and failed
pipeline runs, each attempt recorded on it. Nothing here commits."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import (
    DEFAULT_TENANT,
    ENDED_STATES,
    Job,
    Pipeline,
    PipelineRun,
    RunState,
    WebhookDelivery,
    WebhookSecret,
    utcnow,
)

ENDED = tuple(ENDED_STATES)


def _add(s: Session, key: str, event: str, url: str, payload: dict[str, Any], **refs: Any) -> None:
    try:
        with s.begin_nested():
            s.add(WebhookDelivery(event_key=key, event=event, url=url, payload=payload, **refs))
    except IntegrityError:
        pass  # already queued


def secret_of(s: Session, *, tenant: str) -> str:
    """The tenant's signing secret (`whsec_` and 32 random bytes in base64), made on first use."""
    row = s.get(WebhookSecret, tenant)
    if row is None:
        try:
            with s.begin_nested():
                row = WebhookSecret(tenant=tenant, secret=_new_secret())
                s.add(row)
        except IntegrityError:  # made at once by another sweep or request
            row = s.get_one(WebhookSecret, tenant)
    return row.secret


def rotate_secret(s: Session, *, tenant: str) -> str:
    """A new signing secret for the tenant (events from now on are signed with it)."""
    row = s.get(WebhookSecret, tenant)
    if row is None:
        return secret_of(s, tenant=tenant)
    row.secret = _new_secret()
    row.created_at = utcnow()
    return row.secret


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def enqueue(s: Session) -> int:
    """Queue a delivery for every ended job with a webhook and every failed pipeline run whose
    pipeline has one, that has none yet."""
    added = 0
    jobs = s.scalars(
        select(Job)
        .outerjoin(WebhookDelivery, WebhookDelivery.job_id == Job.id)
        .where(Job.webhook_url.is_not(None), Job.state.in_(ENDED), WebhookDelivery.id.is_(None))
    ).all()
    for job in jobs:
        payload = {
            "event": f"job.{job.state}",
            "job": {
                "id": job.id,
                "state": job.state,
                "total": job.total,
                "succeeded": job.succeeded,
                "failed": job.failed,
                "error": job.error,
                "metadata": job.metadata_,
                "finished_at": job.finished_at.isoformat() if job.finished_at else None,
            },
        }
        _add(
            s,
            f"job:{job.id}",
            f"job.{job.state}",
            job.webhook_url or "",
            payload,
            job_id=job.id,
            tenant=job.tenant,
        )
        added += 1
    runs = s.execute(
        select(PipelineRun, Pipeline)
        .join(Pipeline, Pipeline.id == PipelineRun.pipeline_id)
        .outerjoin(
            WebhookDelivery,
            and_(WebhookDelivery.pipeline_run_id == PipelineRun.id),
        )
        .where(PipelineRun.state == RunState.failed, WebhookDelivery.id.is_(None))
    ).all()
    for run, pipeline in runs:
        url = pipeline.definition.get("webhook")
        if not url:
            continue
        payload = {
            "event": "pipeline.run_failed",
            "pipeline": pipeline.name,
            "run": {"id": run.id, "error": run.error, "job_id": run.job_id},
        }
        _add(
            s,
            f"run:{run.id}",
            "pipeline.run_failed",
            url,
            payload,
            pipeline_run_id=run.id,
            tenant=pipeline.tenant,
        )
        added += 1
    return added


@dataclass(frozen=True)
class Due:
    id: int
    tenant: str
    event: str
    url: str
    payload: dict[str, Any]


def due(s: Session) -> list[Due]:
    """Pending deliveries whose next attempt is due."""
    rows = s.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow()
        )
    )
    return [Due(d.id, d.tenant or DEFAULT_TENANT, d.event, d.url, d.payload) for d in rows]


def record_attempt(
    s: Session,
    delivery_id: int,
    status: int | None,
    error: str | None,
    *,
    max_attempts: int,
    backoff: float,
) -> WebhookDelivery:
    """One attempt's outcome: delivered, failed for good after `max_attempts`, or due again
    after `backoff` seconds, doubling (at most an hour)."""
    row = s.get_one(WebhookDelivery, delivery_id)
    row.attempts += 1
    row.last_status = status
    row.last_error = error
    if error is None:
        row.status = "delivered"
        row.delivered_at = utcnow()
    elif row.attempts >= max_attempts:
        row.status = "failed"
    else:
        wait = backoff * 2 ** (row.attempts - 1)
        row.next_attempt_at = utcnow() + timedelta(seconds=min(wait, 3600))
    return row


def deliveries(
    s: Session, *, job_id: str | None = None, run_ids: list[int] | None = None
) -> list[WebhookDelivery]:
    """Deliveries of one job, or of some pipeline runs (the caller checked they are its
    tenant's), oldest first."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if run_ids is not None:
        query = query.where(WebhookDelivery.pipeline_run_id.in_(run_ids))
    return list(s.scalars(query))
