"""The beat scheduler: Celery beat's `Scheduler` with entries read from the database (the
reconciler, and one entry per enabled pipeline), so pipelines created, changed or disabled
through the API take effect at the next refresh, without a restart.

Only one beat may send: each tick takes or renews a lock in the database. A second beat started
beside it stays passive, logging who holds the lock, and takes over when that lock runs out
(the first beat died or stopped).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from datetime import UTC, datetime
from typing import Any

from celery.beat import ScheduleEntry, Scheduler

from labelq.settings import Settings
from service import locks, pipelines, wiring
from service.context import Ctx
from service.dispatch import CONTROL_QUEUE, TASK_RUN_PIPELINE
from service.schedules import celery_schedule, tick_expiry

log = logging.getLogger(__name__)

LOCK = "beat"
REFRESH_SECONDS = 5.0


class DatabaseScheduler(Scheduler):  # type: ignore[misc]
    # Set by `labelq beat` before Celery builds the scheduler.
    settings: Settings | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        assert self.settings is not None, "labelq beat sets DatabaseScheduler.settings"
        self.services = wiring.build(self.settings)
        self.ctx = Ctx.system(self.services)
        self.owner = f"beat-{socket.gethostname()}:{os.getpid()}"
        self._static: dict[str, Any] = {}
        self._refreshed = 0.0
        self._holding = False
        super().__init__(*args, **kwargs)

    def setup_schedule(self) -> None:
        self._static = dict(self.app.conf.beat_schedule or {})
        self.merge_inplace(self._static)
        self._refresh(force=True)

    def _refresh(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        self._refreshed = time.monotonic()
        specs, last = pipelines.schedule(self.ctx)
        wanted: dict[str, Any] = dict(self._static)
        for tenant, spec in specs:
            wanted[f"pipeline:{tenant}/{spec.name}"] = {
                "task": TASK_RUN_PIPELINE,
                "schedule": celery_schedule(spec.schedule),
                "args": [spec.name, tenant],
                "options": {"queue": CONTROL_QUEUE, "expires": tick_expiry(spec.schedule)},
            }
        previous = dict(self.schedule)
        self.merge_inplace(wanted)
        for name, entry in self.schedule.items():
            if not name.startswith("pipeline:"):
                continue
            tenant, _, pipeline = name.removeprefix("pipeline:").partition("/")
            known = last.get((tenant, pipeline))
            if known is not None and known.tzinfo is None:
                known = known.replace(tzinfo=UTC)
            mine = previous[name].last_run_at if name in previous else None
            # The later of what the database says ran and what this beat sent.
            candidates = [t for t in (known, mine) if t is not None]
            entry.last_run_at = max(candidates) if candidates else _created_now()

    def tick(self, *args: Any, **kwargs: Any) -> float:
        assert self.settings is not None
        try:
            held = locks.take(self.ctx, LOCK, self.owner, self.settings.beat_lock_seconds)
        except Exception as exc:
            log.warning("beat: cannot reach the database (%s); not sending", exc)
            return 5.0
        if held != self._holding:
            if held:
                log.warning("beat %s holds the lock and sends the schedule", self.owner)
            self._holding = held
        if not held:
            other = locks.holder(self.ctx, LOCK)
            log.info("beat %s is passive: %s holds the lock", self.owner, other)
            return min(5.0, self.settings.beat_lock_seconds / 3)
        try:
            self._refresh()
        except Exception as exc:
            log.warning("beat: could not read pipelines (%s); keeping the last schedule", exc)
        interval: float = super().tick(*args, **kwargs)
        return min(interval, REFRESH_SECONDS, self.settings.beat_lock_seconds / 3)

    def close(self) -> None:
        try:
            locks.release(self.ctx, LOCK, self.owner)
        except Exception as exc:
            log.warning("beat: could not release its lock: %s", exc)
        wiring.close(self.services)
        super().close()


def _created_now() -> datetime:
    return datetime.now(UTC)


__all__ = ["DatabaseScheduler", "ScheduleEntry"]
