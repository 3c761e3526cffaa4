"""Drift alarms (`labelq.drift`): a tenant sets a monitor on a classifier; the reconciler checks
each monitor every LABELQ_DRIFT_EVERY seconds over its window's traffic, under the active
calibration, and when signals cross their thresholds (either way) queues a webhook event
naming what moved. /metrics and the page show the last check."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, Field

from db import classifiers as classifier_rows
from db import drift as rows
from db.session import db_now
from labelq import drift
from labelq.errors import Conflict, LabelqError
from labelq.outbound import check_url
from service import dashboard
from service.context import Ctx

log = logging.getLogger(__name__)

EVENT_RAISED = "classifier.drift"
EVENT_CLEARED = "classifier.drift_cleared"


class MonitorIn(BaseModel):
    thresholds: drift.Thresholds = Field(default_factory=drift.Thresholds)
    window_hours: float = Field(24, gt=0, le=24 * 90, description="the traffic each check reads")
    min_items: int = Field(100, ge=1, description="fewer scored items in the window: no check")
    webhook_url: str | None = Field(None, description="where alarms are POSTed (signed)")
    enabled: bool = True


class MonitorOut(MonitorIn):
    classifier: str
    state: dict[str, Any] | None = Field(description="what the last check found")
    checked_at: Any = None


def _needs_table(ctx: Ctx, s: Any) -> None:
    if not ctx.services.features.has(s, "drift"):
        raise Conflict(
            "drift monitors need migration 0025: run `labelq db upgrade`", field="database"
        )


def _out(row: Any) -> MonitorOut:
    return MonitorOut(
        classifier=row.classifier,
        thresholds=drift.Thresholds(**row.thresholds),
        window_hours=row.window_seconds / 3600,
        min_items=row.min_items,
        webhook_url=row.webhook_url,
        enabled=row.enabled,
        state=row.state,
        checked_at=row.checked_at,
    )


def put(ctx: Ctx, name: str, body: MonitorIn) -> MonitorOut:
    """Set the caller's monitor on its classifier `name` (any version)."""
    if body.webhook_url is not None:
        check_url(body.webhook_url, ctx.settings.webhook_policy(), "webhook_url")
    with ctx.tx() as s:
        _needs_table(ctx, s)
        classifier_rows.classifier_versions(s, name, tenant=ctx.owner)  # NotFound if not its own
        row = rows.put(
            s,
            {
                "classifier": name,
                "thresholds": body.thresholds.model_dump(),
                "window_seconds": round(body.window_hours * 3600),
                "min_items": body.min_items,
                "webhook_url": body.webhook_url,
                "enabled": body.enabled,
            },
            tenant=ctx.owner,
        )
        return _out(row)


def get(ctx: Ctx, name: str) -> MonitorOut:
    with ctx.reads() as s:
        _needs_table(ctx, s)
        return _out(rows.get(s, name, tenant=ctx.owner))


def delete(ctx: Ctx, name: str) -> None:
    with ctx.tx() as s:
        _needs_table(ctx, s)
        rows.get(s, name, tenant=ctx.owner)
        rows.remove(s, name, tenant=ctx.owner)


def sweep(ctx: Ctx) -> int:
    """Check the monitors that are due (the system context); how many were checked."""
    with ctx.reads() as s:
        if not ctx.services.features.has(s, "drift"):
            return 0
    checked = 0
    with ctx.tx() as s:
        now = db_now(s)
        for monitor in rows.due(s, now, ctx.settings.drift_every):
            try:
                state, raised, cleared = _check(ctx, monitor, now)
            except LabelqError as exc:  # its classifier gone, say: the check says why
                state, raised, cleared = {"error": exc.message, "signals": {}}, [], []
            payload = {
                "classifier": monitor.classifier,
                "checked_at": now.isoformat(),
                "window_hours": monitor.window_seconds / 3600,
                **state,
            }
            if raised:
                rows.alarm(s, monitor, EVENT_RAISED, {**payload, "raised": raised})
                log.warning("drift on %s/%s: %s", monitor.tenant, monitor.classifier, raised)
            if cleared:
                rows.alarm(s, monitor, EVENT_CLEARED, {**payload, "cleared": cleared})
            rows.record(s, monitor, {**state, "at": now.isoformat()}, now)
            checked += 1
    return checked


def _check(ctx: Ctx, monitor: Any, now: Any) -> tuple[dict[str, Any], list[str], list[str]]:
    """One monitor's check: the window's label-free estimate, its signals, what moved."""
    tenant_ctx = Ctx.of(ctx.services, monitor.tenant)
    window = dashboard.Query(
        calibration="active", start=now - timedelta(seconds=monitor.window_seconds), end=now
    )
    found = dashboard.estimated_performance(tenant_ctx, monitor.classifier, window, 0.95)
    n = found.estimate.n
    if n < monitor.min_items:
        state = {"n": n, "signals": {}, "note": f"{n} items in the window: under min_items"}
        _, cleared = drift.moved(monitor.state, {})
        return state, [], cleared
    held_out = found.calibration.held_out_accuracy if found.calibration else None
    signals = drift.evaluate(
        drift.Thresholds(**monitor.thresholds), found.model_dump(mode="json"), held_out
    )
    raised, cleared = drift.moved(monitor.state, signals)
    state = {
        "n": n,
        "estimated_accuracy": found.estimate.accuracy,
        "calibration": found.calibration.id if found.calibration else None,
        "signals": {name: s.model_dump() for name, s in signals.items()},
        "reasons": found.validity.reasons,
    }
    return state, raised, cleared
