"""Webhooks: a JSON event POSTed when a job ends (succeeded, failed, cancelled) or a pipeline
run fails, signed with HMAC-SHA256 (`X-Labelq-Signature: sha256=<hex>` over the body, keyed
with LABELQ_WEBHOOK_SECRET), retried with backoff, every attempt recorded.

Events are found in the database by the reconciler's sweep (one delivery per event: a unique
key), so nothing is lost to a crash between a job's end and its notification.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    Job,
    JobState,
    Pipeline,
    PipelineRun,
    RunState,
    WebhookDelivery,
    utcnow,
)
from db.session import transaction
from labelq.settings import Settings

log = logging.getLogger(__name__)

ENDED = (JobState.succeeded, JobState.failed, JobState.cancelled)


class DeliveryOut(BaseModel):
    id: int
    event: str
    url: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    next_attempt_at: datetime | None


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _add(s: Session, key: str, event: str, url: str, payload: dict[str, Any], **refs: Any) -> None:
    try:
        with s.begin_nested():
            s.add(WebhookDelivery(event_key=key, event=event, url=url, payload=payload, **refs))
    except IntegrityError:
        pass  # already queued


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
        _add(s, f"job:{job.id}", f"job.{job.state}", job.webhook_url or "", payload, job_id=job.id)
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
        _add(s, f"run:{run.id}", "pipeline.run_failed", url, payload, pipeline_run_id=run.id)
        added += 1
    return added


def deliver_due(factory: sessionmaker[Session], settings: Settings) -> int:
    """Attempt every delivery that is due; returns how many were delivered."""
    import httpx

    with transaction(factory) as s:
        enqueue(s)
    with factory() as s:
        due = s.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= utcnow()
            )
        ).all()
    delivered = 0
    for delivery in due:
        body = json.dumps({**delivery.payload, "delivery": delivery.id}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Labelq-Event": delivery.event,
            "X-Labelq-Delivery": str(delivery.id),
        }
        if settings.webhook_secret:
            headers["X-Labelq-Signature"] = signature(settings.webhook_secret, body)
        status, error = None, None
        try:
            response = httpx.post(delivery.url, content=body, headers=headers, timeout=10)
            status = response.status_code
            if status >= 300:
                error = f"answered {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        with transaction(factory) as s:
            row = s.get_one(WebhookDelivery, delivery.id)
            row.attempts += 1
            row.last_status = status
            row.last_error = error
            if error is None:
                row.status = "delivered"
                row.delivered_at = utcnow()
                delivered += 1
            elif row.attempts >= settings.webhook_max_attempts:
                row.status = "failed"
                log.warning("webhook %d to %s failed for good: %s", row.id, row.url, error)
            else:
                wait = settings.webhook_retry_backoff * 2 ** (row.attempts - 1)
                row.next_attempt_at = utcnow() + timedelta(seconds=min(wait, 3600))
    return delivered


def of_job(s: Session, job_id: str, tenant: str | None = None) -> list[DeliveryOut]:
    """A job's deliveries (NotFound for an unknown job, or another tenant's)."""
    from db.jobs import get_job

    get_job(s, job_id, tenant=tenant)
    return deliveries(s, job_id=job_id)


def deliveries(
    s: Session, *, job_id: str | None = None, run_ids: list[int] | None = None
) -> list[DeliveryOut]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.id)
    if job_id is not None:
        query = query.where(WebhookDelivery.job_id == job_id)
    if run_ids is not None:
        query = query.where(WebhookDelivery.pipeline_run_id.in_(run_ids))
    return [
        DeliveryOut(
            id=d.id,
            event=d.event,
            url=d.url,
            status=d.status,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        )
        for d in s.scalars(query)
    ]
