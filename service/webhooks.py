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
from datetime import datetime

from pydantic import BaseModel

from db import jobs as job_rows
from db import webhooks as deliveries_db
from db.models import WebhookDelivery
from service.context import Ctx

log = logging.getLogger(__name__)


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

    @classmethod
    def of(cls, d: WebhookDelivery) -> DeliveryOut:
        return cls(
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


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def deliver_due(ctx: Ctx) -> int:
    """Queue a delivery for every event that has none, then attempt every delivery that is
    due (the system context); returns how many were delivered."""
    import httpx

    settings = ctx.settings
    with ctx.tx() as s:
        deliveries_db.enqueue(s)
    with ctx.reads() as s:
        due = deliveries_db.due(s)
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
        with ctx.tx() as s:
            row = deliveries_db.record_attempt(
                s,
                delivery.id,
                status,
                error,
                max_attempts=settings.webhook_max_attempts,
                backoff=settings.webhook_retry_backoff,
            )
            if row.status == "failed":
                log.warning("webhook %d to %s failed for good: %s", row.id, row.url, error)
        delivered += error is None
    return delivered


def of_job(ctx: Ctx, job_id: str) -> list[DeliveryOut]:
    """A job's deliveries (NotFound for an unknown job, or another tenant's)."""
    with ctx.reads() as s:
        job_rows.get_job(s, job_id, tenant=ctx.tenant)
        return [DeliveryOut.of(d) for d in deliveries_db.deliveries(s, job_id=job_id)]
