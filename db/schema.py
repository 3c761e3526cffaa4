"""Which of the revisions newer than this code's oldest schema (`db.migrate.OLDEST_SCHEMA`) the
database has: code of this release runs before its own migrations (a pod rolling out ahead of
the migration step), and uses what they add only once they are there. A feature found is
remembered for the process's life (a revision's table or column does not go away under a
running release); one missing is looked up again at each use, so a migration that runs while
the process does is used at once, and only the short window before it pays for the look-up."""

from __future__ import annotations

from sqlalchemy import inspect
from sqlalchemy.orm import Session

# feature -> (table, column) that migration adds
FEATURES = {
    "archive": ("items_archive", "id"),  # 0023: erased rows' dashboard numbers
    "cost": ("jobs", "engine_seconds"),  # 0024: engine seconds and prompt tokens per job
    "drift": ("drift_monitors", "id"),  # 0025: drift alarms
    "loads": ("worker_loads", "name"),  # 0026: workers' model loads (seconds, or why not)
}


class Features:
    """One process's view of the optional features (held by its `Services`)."""

    def __init__(self) -> None:
        self._present: set[str] = set()

    def has(self, s: Session, name: str) -> bool:
        if name in self._present:
            return True
        table, column = FEATURES[name]
        found = inspect(s.connection())
        if found.has_table(table) and column in {c["name"] for c in found.get_columns(table)}:
            self._present.add(name)  # a set's add is atomic: threads may race to it harmlessly
            return True
        return False
