"""Named locks in the database: whoever holds an unexpired one may act (the one reconciler
sweeping, the one beat sending)."""

from __future__ import annotations

import logging

from db import locks
from service.context import Ctx
from service.leases import KeepAlive

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


def renewing(ctx: Ctx, name: str, owner: str, seconds: float) -> KeepAlive:
    """Renews the lock `name` for `owner` every third of `seconds` while the block runs."""

    def renew() -> bool:
        held = take(ctx, name, owner, seconds)
        if not held:
            log.warning("lock %s was taken by another while %s held it", name, owner)
        return held

    return KeepAlive(renew, seconds / 3, f"lock-{name}")
