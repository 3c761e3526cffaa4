"""Webhook deliveries, an outbox: one row per event (a unique key), found from ended jobs and
failed pipeline runs, claimed by a deliverer under a lease, each attempt recorded on it.
Nothing here commits."""

from __future__ import annotations

import base64
import secrets
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import and_, func, or_, select, update
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
    as_utc,
    utcnow,
)
from db.pipelines import failures_in_a_row
from db.session import rowcount
from labelq.errors import NotFound

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
        payload: dict[str, Any] = {
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
            # the receiver sees a pipeline that keeps failing, not one bad run
            "failures_in_a_row": failures_in_a_row(s, run.pipeline_id, run.id),
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


def receiver(url: str) -> str:
    """The host a delivery goes to: the unit of `per_receiver`."""
    return (urlsplit(url).hostname or "").lower()


def claim_due(
    s: Session,
    now: datetime,
    owner: str,
    *,
    lease_seconds: float,
    limit: int,
    per_receiver: int,
    window: float,
) -> list[Due]:
    """Claim up to `limit` due deliveries for `owner` under a lease, oldest due first, at most
    `per_receiver` in flight to one host (counting live claims of every deliverer). A claim
    is a conditional update, so two deliverers never hold one delivery at once; a deliverer
    that died mid-request leaves it claimable once its lease runs out. A delivery from
    before the window existed gets `give_up_at` now."""
    live = s.scalars(
        select(WebhookDelivery.url).where(
            WebhookDelivery.status == "pending", WebhookDelivery.lease_expires_at >= now
        )
    )
    busy = Counter(receiver(url) for url in live)
    free = or_(WebhookDelivery.lease_expires_at.is_(None), WebhookDelivery.lease_expires_at < now)
    candidates = s.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now, free)
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit * 4)
    ).all()
    out: list[Due] = []
    for d in candidates:
        host = receiver(d.url)
        if len(out) >= limit or busy[host] >= per_receiver:
            continue
        claimed = s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id == d.id, WebhookDelivery.status == "pending", free)
            .values(
                claimed_by=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                give_up_at=func.coalesce(
                    WebhookDelivery.give_up_at, d.created_at + timedelta(seconds=window)
                ),
            )
            .execution_options(synchronize_session=False)
        )
        if rowcount(claimed) == 1:
            busy[host] += 1
            out.append(Due(d.id, d.tenant or DEFAULT_TENANT, d.event, d.url, d.payload))
    return out


def record_attempt(
    s: Session,
    delivery_id: int,
    owner: str,
    now: datetime,
    status: int | None,
    error: str | None,
    *,
    backoff: float,
) -> WebhookDelivery | None:
    """One attempt's outcome, if `owner` still holds the delivery (None when its lease ran out
    and another took it: that one records its own attempt): delivered; or due again after
    `backoff` seconds, doubling, at most an hour; or, past `give_up_at`, failed."""
    row = s.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.claimed_by == owner)
        .with_for_update()
    ).one_or_none()
    if row is None or row.status != "pending":
        return None
    row.attempts += 1
    row.last_status = status
    row.last_error = error
    row.claimed_by = row.lease_expires_at = None
    if error is None:
        row.status = "delivered"
        row.delivered_at = now
        return row
    wait = min(backoff * 2 ** min(row.attempts - 1, 20), 3600)
    next_at = now + timedelta(seconds=wait)
    if row.give_up_at is not None and as_utc(next_at) > as_utc(row.give_up_at):
        row.status = "failed"
    else:
        row.next_attempt_at = next_at
    return row


def redeliver(
    s: Session, delivery_id: int, now: datetime, *, tenant: str | None, window: float
) -> WebhookDelivery:
    """Send a delivery of `tenant` (None: any) again (failed, delivered or pending), now, with
    a new retry window; NotFound for another tenant's or an unknown one. Idempotent: twice is
    one resend that is due now."""
    row = s.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
    ).one_or_none()
    if row is None or (tenant is not None and (row.tenant or DEFAULT_TENANT) != tenant):
        raise NotFound(f"webhook delivery {delivery_id} not found", field="id")
    row.status = "pending"
    row.next_attempt_at = now
    row.give_up_at = now + timedelta(seconds=window)
    if row.lease_expires_at is not None and as_utc(row.lease_expires_at) < as_utc(now):
        row.claimed_by = row.lease_expires_at = None
    return row


def of_tenant(
    s: Session, *, tenant: str | None, status: str | None, limit: int, before: int | None
) -> list[WebhookDelivery]:
    """A tenant's deliveries (None: every tenant's), newest first, optionally by status;
    `before` an id to page on."""
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if tenant is not None:
        query = query.where(func.coalesce(WebhookDelivery.tenant, DEFAULT_TENANT) == tenant)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    if before is not None:
        query = query.where(WebhookDelivery.id < before)
    return list(s.scalars(query))


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


def count_by_status(s: Session) -> dict[str, int]:
    """Every tenant's deliveries by status (pending, delivered, failed), for /metrics."""
    return {
        str(status): int(n)
        for status, n in s.execute(
            select(WebhookDelivery.status, func.count()).group_by(WebhookDelivery.status)
        )
    }
