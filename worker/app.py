"""The Celery app: Redis broker, late acks, one task at a time, one queue per model."""

from __future__ import annotations

from celery import Celery

from labelq.settings import Settings

TASK_SCORE_CHUNK = "labelq.score_chunk"
TASK_FIT_CALIBRATION = "labelq.fit_calibration"


def make_celery(settings: Settings) -> Celery:
    app = Celery("labelq", broker=settings.broker_url)
    app.conf.update(
        # A task is acknowledged only after it ran; a worker that dies mid-chunk (OOM, kill -9)
        # has its chunk redelivered. Chunks are idempotent, and claim_chunk caps redeliveries.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Must exceed the longest chunk, or Redis hands the task to a second worker meanwhile.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout},
        worker_cancel_long_running_tasks_on_connection_loss=True,
        broker_connection_retry_on_startup=True,
        # Results live in our database; Celery keeps no result state.
        task_ignore_result=True,
        result_backend=None,
        task_default_queue="labelq.default",
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )
    return app
