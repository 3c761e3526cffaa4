"""The reconciler: the database is the source of truth, the broker only a doorbell.

One sweep, run periodically (Celery beat in the distributed set-up, a thread in the embedded
one), needs nothing from the broker's memory:
- sends chunks that have no task: never sent (the broker was down at submission), handed back
  after an engine failure and now due, or running under a lease that expired (their worker died);
- re-sends a pending chunk whose task is lost: its queue went past it (a chunk sent after it
  was claimed a stall period ago), or the queue stalled although a worker serves it (nothing
  claimed, no live lease: the tasks were lost, e.g. with a Redis restart without
  persistence); each chunk at most once a stall period, and none to a queue no worker serves;
- sends a fit again whose task was lost or whose worker died (no live lease, not sent for a
  stall period), to a queue a worker serves, and fails a fit past the job deadline
  (LABELQ_JOB_EXPIRES_AFTER): no calibration stays `fitting` for good;
- ends jobs whose chunks are all done, jobs whose upload stopped (its lease ran out: the
  process receiving it died), jobs past their deadline (`expired`), cancelling jobs whose
  running chunks nobody holds any more, and pipeline runs whose job ended;
- fails pipeline runs whose reader died (their lease ran out before they handed their rows
  to a job), so the next tick runs instead of being `skipped` for good;
- queues a webhook delivery for every event that has none (deliverers POST them: never the
  sweep, so a slow receiver cannot hold it);
- forgets workers that stopped beating;
- marks jobs past their retention (LABELQ_RETENTION) and goes on with erasures asked for, a
  bounded number of rows a sweep (`service.erase`);
- fills the dashboard's columns of scored rows that lack them (an older release's worker wrote
  them during a rolling upgrade, or an upgrade left its backfill), a bounded number a sweep;
- checks the drift monitors that are due, and queues their alarms (`service.drift`).

A task sent twice is harmless: a chunk is claimed under a lease and written once.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import timedelta

from pydantic import BaseModel

from db import calibrations, chunks, workers
from db import jobs as job_rows
from db import pipelines as pipeline_rows
from db.session import db_now
from service import backfills, drift, erase, locks, pipelines, webhooks
from service.context import Ctx
from service.dispatch import queue_for, send, send_fit
from service.erase import ErasureReport

log = logging.getLogger(__name__)


class SweepReport(BaseModel):
    sent: int = 0
    unsent: int = 0
    jobs_ended: list[str] = []
    uploads_ended: list[str] = []
    jobs_expired: list[str] = []
    workers_forgotten: int = 0
    runs_ended: list[int] = []
    runs_expired: list[int] = []
    webhooks_queued: int = 0
    fits_sent: int = 0
    fits_expired: list[int] = []
    erased: ErasureReport = ErasureReport()
    backfilled: int = 0
    drift_checked: int = 0


LOCK = "reconciler"


def sweep_if_leader(ctx: Ctx, owner: str) -> SweepReport | None:
    """Sweep if `owner` holds (or takes) the reconciler's lock; None when another holds it.
    Every worker tries every period, so the sweep never waits behind a busy queue, and the
    lock, renewed while the sweep runs, keeps two from sending or writing sinks at once."""
    seconds = max(3 * ctx.settings.reconcile_interval, 10)
    if not locks.take(ctx, LOCK, owner, seconds):
        return None
    with locks.renewing(ctx, LOCK, owner, seconds):  # a long sweep (a slow sink) keeps it
        return sweep(ctx)


def sweep(ctx: Ctx) -> SweepReport:
    """One pass over every tenant's unfinished work (the system context)."""
    settings = ctx.settings
    report = SweepReport()
    with ctx.tx() as s:
        now = db_now(s)  # the database's clock judges leases, not this host's
        report.uploads_ended = job_rows.expire_uploads(s, now)
        report.jobs_expired = chunks.expire_jobs(s, now)
        report.jobs_ended = chunks.finish_done_jobs(s) + chunks.cancel_abandoned(s, now)
        report.runs_expired = pipeline_rows.expire_runs(s, now, settings.pipeline_run_lease)
        gone_before = now - timedelta(seconds=10 * settings.worker_stale_after)
        report.workers_forgotten = workers.forget_stale(s, gone_before)
        if ctx.services.features.has(s, "loads"):
            workers.forget_stale_loads(s, gone_before)
        served = workers.live_workers(s, now - timedelta(seconds=settings.worker_stale_after))
        stalled_before = now - timedelta(seconds=settings.stall_after)
        due = chunks.chunks_to_send(s, now, stalled_before, served=served)
        if settings.job_expires_after:
            report.fits_expired = calibrations.expire_fits(
                s, now, now - timedelta(seconds=settings.job_expires_after)
            )
        fits = [
            (row.id, queue)
            for row in calibrations.fits_to_send(s, now, stalled_before)
            if (queue := queue_for(str(row.fitted_on.get("model", "")))) in served
        ]
    by_job: dict[tuple[str, str], list[int]] = defaultdict(list)
    for ref in due:
        by_job[(ref.job_id, ref.queue)].append(ref.seq)
    for (job_id, queue), seqs in by_job.items():
        if send(ctx, job_id, queue, seqs):
            report.sent += len(seqs)
        else:
            report.unsent += len(seqs)
    report.fits_sent = sum(send_fit(ctx, calibration_id, queue) for calibration_id, queue in fits)
    # Pipeline runs whose job ended: sink, then watermark. Then the notifications.
    report.runs_ended = pipelines.finish_runs(ctx)
    report.webhooks_queued = webhooks.enqueue(ctx)
    report.erased = erase.sweep(ctx)  # retention, then erasures asked for, in batches
    report.backfilled = backfills.sweep(ctx)
    report.drift_checked = drift.sweep(ctx)  # monitors due, alarms into the outbox
    if report.sent or report.unsent or report.jobs_ended:
        log.info(
            "reconciler: sent %d chunk(s), %d could not be sent, ended %d job(s)",
            report.sent,
            report.unsent,
            len(report.jobs_ended),
        )
    return report


def requeue_after_restart(ctx: Ctx, queue: str) -> int:
    """For the embedded default, whose task queue lived in the memory of a process that is
    gone: every unfinished chunk of `queue` needs a new task, and leases held by that process
    are void. Returns how many chunks are affected."""
    with ctx.tx() as s:
        return chunks.requeue_after_restart(s, queue)
