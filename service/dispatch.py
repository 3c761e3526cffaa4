"""How work reaches workers: task names, one queue per model, and the dispatcher that sends.

The broker is only a doorbell: every task names a row in the database (a chunk, a calibration),
the row says whether there is work, and a lost or duplicated task is harmless (see
`service.reconcile`).
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Protocol

from db import calibrations, chunks

# A job's first chunks go first (`db.chunks.PRIORITY_BANDS`, which the reconciler reads too).
from db.chunks import chunk_priority as chunk_priority
from db.session import db_now
from labelq.backends.identity import canonical_model

if TYPE_CHECKING:
    from service.context import Ctx

log = logging.getLogger(__name__)

TASK_SCORE_CHUNK = "labelq.score_chunk"
TASK_FIT_CALIBRATION = "labelq.fit_calibration"
TASK_RECONCILE = "labelq.reconcile"
TASK_RUN_PIPELINE = "labelq.run_pipeline"

# Every worker also listens here, for tasks that need no model (the reconciler).
CONTROL_QUEUE = "labelq.control"


def queue_for(model: str) -> str:
    """One Celery queue per model, so workers with different models serve one deployment;
    named from the model's canonical spelling (`/models/m/` and `/models/m` are one queue)."""
    model = canonical_model(model)
    digest = hashlib.sha1(model.encode()).hexdigest()[:10]
    tail = "".join(
        c if c.isalnum() or c in "-_." else "-" for c in model.rstrip("/").split("/")[-1]
    )
    return f"labelq.{tail[:60]}.{digest}"


class Dispatcher(Protocol):
    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None: ...

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None: ...

    def ping(self) -> bool: ...


class CeleryDispatcher:
    """Sends one `labelq.score_chunk` task per chunk to the model's queue."""

    def __init__(self, broker_url: str):
        from celery import Celery

        self.app = Celery("labelq-dispatch", broker=broker_url)
        self.app.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=True)

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        with self.app.producer_or_acquire() as producer:
            for seq in seqs:
                self.app.send_task(
                    TASK_SCORE_CHUNK,
                    args=[job_id, seq],
                    queue=queue_name,
                    producer=producer,
                    priority=chunk_priority(seq),
                )

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        """Fitting runs on the model's queue: contextual calibration needs the model."""
        self.app.send_task(
            TASK_FIT_CALIBRATION, args=[calibration_id], queue=queue_name, priority=0
        )

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False


def send(ctx: Ctx, job_id: str, queue: str, seqs: list[int]) -> bool:
    """Send chunk tasks and record when. A failure to send is logged, not raised: unsent
    chunks are the reconciler's to send."""
    if not seqs:
        return True
    # Taken before sending: a worker may claim a chunk before dispatch() returns, and a send
    # recorded after the claim would hide the chunk from the reconciler if that worker died.
    # The database's clock, as the claim's.
    with ctx.reads() as s:
        sent_at = db_now(s)
    try:
        ctx.dispatcher.dispatch(job_id, queue, seqs)
    except Exception as exc:
        log.warning(
            "could not send %d chunk(s) of job %s to %s (%s); the reconciler will",
            len(seqs),
            job_id,
            queue,
            exc,
        )
        return False
    with ctx.tx() as s:
        chunks.mark_dispatched(s, job_id, seqs, sent_at)
    return True


def send_fit(ctx: Ctx, calibration_id: int, queue: str) -> bool:
    """Send a fit task and record when (the database's clock, taken before sending, as for
    chunks); a failure to send is logged, and the reconciler sends it."""
    with ctx.reads() as s:
        sent_at = db_now(s)
    try:
        ctx.dispatcher.dispatch_fit(calibration_id, queue)
    except Exception as exc:
        log.warning(
            "could not send fit %d to %s (%s); the reconciler will", calibration_id, queue, exc
        )
        return False
    with ctx.tx() as s:
        calibrations.mark_fit_sent(s, calibration_id, sent_at)
    return True
