"""Webhooks: a JSON event POSTed when a job ends (succeeded, failed, cancelled) or a pipeline
run fails, signed with the tenant's own secret by the Standard Webhooks scheme (`webhook-id`,
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`),
sent to public addresses only (`labelq.outbound`), retried with backoff for
`LABELQ_WEBHOOK_RETRY_WINDOW` (3 days), every attempt recorded, then `failed`, listed and
replayable.

Events are found in the database by the reconciler's sweep (one delivery per event: a unique
key), so nothing is lost to a crash between a job's end and its notification. Delivering is
not the sweep's: deliverers (a thread in every worker process) claim due deliveries under a
lease and POST them in parallel, bounded per receiver, so a slow receiver delays neither a
sweep nor another receiver's events. Each job has one event (its end), so there is no order
between events of a job to keep.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from pydantic import BaseModel
from standardwebhooks import Webhook

from db import jobs as job_rows
from db import webhooks as deliveries_db
from db.models import WebhookDelivery
from db.session import db_now
from labelq import outbound
from labelq.pipeline import mask_url
from service.context import Ctx

log = logging.getLogger(__name__)

Due = deliveries_db.Due  # a claimed delivery, as a deliverer holds it


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


def enqueue(ctx: Ctx) -> int:
    """Queue a delivery for every event that has none (the reconciler's sweep: quick, and
    never a request)."""
    with ctx.tx() as s:
        return deliveries_db.enqueue(s)


def claim(ctx: Ctx, owner: str, limit: int) -> list[deliveries_db.Due]:
    """Claim up to `limit` due deliveries for `owner` (at most `LABELQ_WEBHOOK_PER_RECEIVER`
    in flight to one host, across deliverers), each under a lease that outlasts its request
    (`LABELQ_WEBHOOK_TIMEOUT` in all), so it needs no renewal: a deliverer that dies leaves
    its claims to the next once they run out (a receiver may then see a delivery twice, with
    one id)."""
    settings = ctx.settings
    with ctx.tx() as s:
        return deliveries_db.claim_due(
            s,
            db_now(s),
            owner,
            lease_seconds=2 * settings.webhook_timeout + 30,
            limit=limit,
            per_receiver=settings.webhook_per_receiver,
            window=settings.webhook_retry_window,
        )


def deliver_due(ctx: Ctx, owner: str) -> int:
    """One round: claim what is due (at most `LABELQ_WEBHOOK_CONCURRENCY`) and POST it at
    once; returns how many were claimed. The worker's deliverer keeps its slots full instead
    of going round by round."""
    claimed = claim(ctx, owner, ctx.settings.webhook_concurrency)
    if claimed:
        with ThreadPoolExecutor(len(claimed), thread_name_prefix="labelq-webhook") as pool:
            for delivery in claimed:
                pool.submit(attempt, ctx, owner, delivery)
    return len(claimed)


def attempt(ctx: Ctx, owner: str, delivery: deliveries_db.Due) -> None:
    """POST one claimed delivery and record the outcome (never raises: a failure to record
    leaves the claim to run out, and the next deliverer tries again)."""
    settings = ctx.settings
    try:
        body = json.dumps({**delivery.payload, "delivery": delivery.id}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Labelq-Event": delivery.event,
            **signed_headers(
                secret(ctx.acting_for(delivery.tenant)),
                f"msg_{delivery.id}",
                body,
                datetime.now(UTC),
            ),
        }
        status, error = outbound.post(delivery.url, body, headers, settings.webhook_policy())
        with ctx.tx() as s:
            row = deliveries_db.record_attempt(
                s,
                delivery.id,
                owner,
                db_now(s),
                status,
                error,
                backoff=settings.webhook_retry_backoff,
            )
            if row is not None and row.status == "failed":
                log.warning(
                    "webhook %d to %s failed for good after %d attempts: %s",
                    row.id,
                    mask_url(row.url),
                    row.attempts,
                    error,
                )
    except Exception:
        log.exception("webhook %d: the attempt could not be made or recorded", delivery.id)


def listing(
    ctx: Ctx, status: str | None = None, limit: int = 100, before: int | None = None
) -> list[DeliveryOut]:
    """The caller's deliveries, newest first (e.g. `status='failed'`: the ones to replay)."""
    with ctx.reads() as s:
        rows = deliveries_db.of_tenant(
            s, tenant=ctx.tenant, status=status, limit=limit, before=before
        )
        return [DeliveryOut.of(d) for d in rows]


def redeliver(ctx: Ctx, delivery_id: int) -> DeliveryOut:
    """Send one of the caller's deliveries again (a failed one, or a replay of a delivered
    one): due now, with a new retry window and the same id, so a receiver can de-duplicate."""
    with ctx.tx() as s:
        row = deliveries_db.redeliver(
            s, delivery_id, db_now(s), tenant=ctx.tenant, window=ctx.settings.webhook_retry_window
        )
        return DeliveryOut.of(row)


def of_job(ctx: Ctx, job_id: str) -> list[DeliveryOut]:
    """A job's deliveries (NotFound for an unknown job, or another tenant's)."""
    with ctx.reads() as s:
        job_rows.get_job(s, job_id, tenant=ctx.tenant)
        return [DeliveryOut.of(d) for d in deliveries_db.deliveries(s, job_id=job_id)]
