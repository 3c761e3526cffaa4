"""The data backfills' share of the reconciler (the system context): rows that an older
release's worker writes during a rolling upgrade, or that `labelq db upgrade --no-backfill`
left, are filled a bounded number a sweep, one short transaction a batch (`db.backfills`)."""

from __future__ import annotations

from db import backfills
from service.context import Ctx


def sweep(ctx: Ctx) -> int:
    """Fill at most LABELQ_BACKFILL_PER_SWEEP rows; returns how many."""
    return backfills.run(ctx.tx, ctx.settings.backfill_batch, ctx.settings.backfill_per_sweep)
