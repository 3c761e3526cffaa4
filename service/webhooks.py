"""Webhooks: a JSON event POSTed when a job ends (succeeded, failed, cancelled) or a pipeline
run fails, signed with the tenant's own secret by the Standard Webhooks scheme (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`),
sent to public addresses only (`labelq.outbound`), retried with backoff, every attempt
recorded.

Events are found in the database by the reconciler's sweep (one delivery per event: a unique
key), so nothing is lost to a crash between a job's end and its notification.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from pydantic import BaseModel
from standardwebhooks import Webhook

from db import jobs as job_rows
from db import webhooks as deliveries_db
from db.models import WebhookDelivery
from labelq import outbound
from labelq.pipeline import mask_url
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
            url=mask_url(d.url),
            status=d.status,
            attempts=d.attempts,
            last_status=d.last_status,
            last_error=d.last_error,
            created_at=d.created_at,
            delivered_at=d.delivered_at,
            next_attempt_at=d.next_attempt_at if d.status == "pending" else None,
        )


def signed_headers(secret: str, message_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt (the id stays the delivery's on every
    attempt, so a receiver can drop a repeat)."""
    signature = Webhook(secret).sign(message_id, now, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }


def secret(ctx: Ctx) -> str:
    """The caller's signing secret (made on first use), for its receivers to verify with."""
    with ctx.tx() as s:
        return deliveries_db.secret_of(s, tenant=ctx.owner)


def rotate_secret(ctx: Ctx) -> str:
    """A new signing secret for the caller: events from now on are signed with it."""
    with ctx.tx() as s:
        return deliveries_db.rotate_secret(s, tenant=ctx.owner)


def deliver_due(ctx: Ctx) -> int:
    """Queue a delivery for every event that has none, then attempt every delivery that is
    due (the system context); returns how many were delivered."""
    settings = ctx.settings
    policy = settings.webhook_policy()
    with ctx.tx() as s:
        deliveries_db.enqueue(s)
    with ctx.reads() as s:
        due = deliveries_db.due(s)
    secrets: dict[str, str] = {}
    delivered = 0
    for delivery in due:
        if delivery.tenant not in secrets:
            secrets[delivery.tenant] = secret(ctx.acting_for(delivery.tenant))
        body = json.dumps({**delivery.payload, "delivery": delivery.id}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Labelq-Event": delivery.event,
            **signed_headers(
                secrets[delivery.tenant], f"msg_{delivery.id}", body, datetime.now(UTC)
            ),
        }
        status, error = outbound.post(delivery.url, body, headers, policy)
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
                log.warning(
                    "webhook %d to %s failed for good: %s", row.id, mask_url(row.url), error
                )
        delivered += error is None
    return delivered


def of_job(ctx: Ctx, job_id: str) -> list[DeliveryOut]:
    """A job's deliveries (NotFound for an unknown job, or another tenant's)."""
    with ctx.reads() as s:
        job_rows.get_job(s, job_id, tenant=ctx.tenant)
        return [DeliveryOut.of(d) for d in deliveries_db.deliveries(s, job_id=job_id)]
