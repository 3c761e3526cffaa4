"""When a pipeline is due: Celery's own schedule classes (crontab in the pipeline's time zone,
or a fixed interval), used by the beat scheduler and by the embedded default alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from celery.schedules import BaseSchedule, crontab, schedule

from labelq.pipeline import Schedule


def celery_schedule(spec: Schedule) -> BaseSchedule:
    if spec.every is not None:
        return schedule(timedelta(seconds=spec.every), nowfun=lambda: datetime.now(UTC))
    assert spec.cron is not None
    minute, hour, day, month, weekday = spec.cron.split()
    zone = ZoneInfo(spec.timezone)
    return crontab(minute, hour, weekday, day, month, nowfun=lambda: datetime.now(zone))


def tick_expiry(spec: Schedule) -> float:
    """Seconds a sent tick stays good: one period (for a cron, the gap between its next two
    times), at least a minute. A tick no worker took by then is dropped (the next one reads
    everything since the watermark): a weekend without workers does not fire in a burst."""
    if spec.every is not None:
        return max(60.0, spec.every)
    cron = celery_schedule(spec)
    now = cron.now()
    first = now + cron.remaining_estimate(now)
    second = now + cron.remaining_estimate(first + timedelta(seconds=1))
    return max(60.0, float(round((second - first).total_seconds())))


def due(spec: Schedule, last_run_at: datetime | None, created_at: datetime) -> tuple[bool, float]:
    """(is it due now, seconds until it is next due). A pipeline that never ran counts from
    when it was created."""
    since = last_run_at or created_at
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    state = celery_schedule(spec).is_due(since)
    return bool(state.is_due), float(state.next)
