"""Named locks in the database: whoever holds an unexpired one may act (the one reconciler
sweeping, the one beat sending)."""

from __future__ import annotations

import logging
import threading

from db import locks
from service.context import Ctx

log = logging.getLogger(__name__)


def take(ctx: Ctx, name: str, owner: str, seconds: float) -> bool:
    """Take or renew the lock `name` for `owner` for `seconds`; False while another holds it."""
    with ctx.tx() as s:
        return locks.acquire(s, name, owner, seconds)


def holder(ctx: Ctx, name: str) -> str | None:
    """Who holds `name` now (None: nobody, or the lease ran out)."""
    with ctx.reads() as s:
        return locks.holder(s, name)


def release(ctx: Ctx, name: str, owner: str) -> None:
    with ctx.tx() as s:
        locks.release(s, name, owner)


class Renewing:
    """Renews the lock `name` for `owner` every third of `seconds` while the block runs, so a
    holder that is slow but alive keeps it (and one that died loses it a lease later)."""

    def __init__(self, ctx: Ctx, name: str, owner: str, seconds: float):
        self.ctx, self.name, self.owner, self.seconds = ctx, name, owner, seconds
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"labelq-lock-{name}", daemon=True)

    def __enter__(self) -> Renewing:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._done.wait(self.seconds / 3):
            try:
                if not take(self.ctx, self.name, self.owner, self.seconds):
                    log.warning(
                        "lock %s was taken by another while %s held it", self.name, self.owner
                    )
                    return
            except Exception as exc:  # the database is away: try again; the lease may lapse
                log.warning("could not renew lock %s: %s", self.name, exc)
