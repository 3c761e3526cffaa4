"""The data backfills' share of the reconciler (the system context): rows that an older
release's worker writes during a rolling upgrade, or that `labelq db upgrade --no-backfill`
left, are filled a bounded number a sweep, one short transaction a batch (`db.backfills`)."""

from __future__ import annotations

from db import backfills
from service.context import Ctx


def sweep(ctx: Ctx) -> int:
    """Fill at most LABELQ_BACKFILL_PER_SWEEP rows; returns how many."""
    budget, batch = ctx.settings.backfill_per_sweep, ctx.settings.backfill_batch
    done = 0
    while done < budget:
        with ctx.tx() as s:
            n = backfills.fill_scored_columns(s, min(batch, budget - done))
        if not n:
            break
        done += n
    return done
