"""Drift monitors' rows: one per tenant and classifier name (`db.models.DriftMonitor`)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from db.models import DriftMonitor, WebhookDelivery
from db.session import upsert
from labelq.errors import NotFound


def put(s: Session, values: dict[str, Any], *, tenant: str) -> DriftMonitor:
    """Create or replace `tenant`'s monitor of `values["classifier"]`; its last state stays."""
    statement = upsert(s, DriftMonitor)
    s.execute(
        statement.values(tenant=tenant, **values).on_conflict_do_update(
            index_elements=["tenant", "classifier"],
            set_={k: getattr(statement.excluded, k) for k in values if k != "classifier"},
        )
    )
    return get(s, values["classifier"], tenant=tenant)


def get(s: Session, classifier: str, *, tenant: str) -> DriftMonitor:
    row = s.scalar(
        select(DriftMonitor)
        .where(DriftMonitor.tenant == tenant, DriftMonitor.classifier == classifier)
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"classifier {classifier!r} has no drift monitor", field="name")
    return row


def remove(s: Session, classifier: str, *, tenant: str) -> None:
    s.execute(
        delete(DriftMonitor).where(
            DriftMonitor.tenant == tenant, DriftMonitor.classifier == classifier
        )
    )


def due(s: Session, now: datetime, every: float, limit: int = 100) -> list[DriftMonitor]:
    """Enabled monitors of every tenant not checked for `every` seconds, oldest check first,
    locked for this check (a second reconciler skips them)."""
    query = (
        select(DriftMonitor)
        .where(
            DriftMonitor.enabled.is_(True),
            or_(
                DriftMonitor.checked_at.is_(None),
                DriftMonitor.checked_at < now - timedelta(seconds=every),
            ),
        )
        .order_by(DriftMonitor.checked_at.nulls_first(), DriftMonitor.id)
        .limit(limit)
    )
    if s.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return list(s.scalars(query))


def record(s: Session, monitor: DriftMonitor, state: dict[str, Any], now: datetime) -> None:
    monitor.state = state
    monitor.checked_at = now


def alarm(s: Session, monitor: DriftMonitor, event: str, payload: dict[str, Any]) -> None:
    """Queue `event` for the monitor's receiver (the webhook outbox; one delivery per check)."""
    if not monitor.webhook_url:
        return
    s.add(
        WebhookDelivery(
            event_key=f"drift:{monitor.id}:{payload['checked_at']}:{event}",
            tenant=monitor.tenant,
            event=event,
            url=monitor.webhook_url,
            payload=payload,
        )
    )


def every_state(s: Session) -> list[tuple[str, str, dict[str, Any] | None]]:
    """(tenant, classifier, last state) of every enabled monitor, for /metrics."""
    return [
        (t, c, st)
        for t, c, st in s.execute(
            select(DriftMonitor.tenant, DriftMonitor.classifier, DriftMonitor.state).where(
                DriftMonitor.enabled.is_(True)
            )
        )
    ]
