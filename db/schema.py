"""Which of the revisions newer than this code's oldest schema (`db.migrate.OLDEST_SCHEMA`) the
database has: code of this release runs before its own migrations (a pod rolling out ahead of
the migration step), and uses what they add only once they are there. Looked up at most once a
minute per process, so a migration that runs while a process does is picked up without a
restart."""

from __future__ import annotations

import threading
import time

from sqlalchemy import inspect
from sqlalchemy.orm import Session

# feature -> (table, column) that migration adds
FEATURES = {
    "cost": ("jobs", "engine_seconds"),  # 0024: engine seconds and prompt tokens per job
    "drift": ("drift_monitors", "id"),  # 0025: drift alarms
}


class Features:
    """One process's view of the optional features (held by its `Services`)."""

    def __init__(self, ttl: float = 60.0):
        self.ttl = ttl
        self._known: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def has(self, s: Session, name: str) -> bool:
        now = time.monotonic()
        with self._lock:
            known = self._known.get(name)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        table, column = FEATURES[name]
        found = inspect(s.connection())
        present = found.has_table(table) and column in {c["name"] for c in found.get_columns(table)}
        with self._lock:
            self._known[name] = (now, present)
        return present
