"""Handing chunks to workers. The API only produces tasks; it never imports worker code."""

from __future__ import annotations

from typing import Protocol

from celery import Celery

TASK_SCORE_CHUNK = "labelq.score_chunk"
TASK_FIT_CALIBRATION = "labelq.fit_calibration"


class Dispatcher(Protocol):
    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None: ...

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None: ...

    def ping(self) -> bool: ...


class CeleryDispatcher:
    """Sends one `labelq.score_chunk` task per chunk to the model's queue on Redis."""

    def __init__(self, broker_url: str):
        self.app = Celery("labelq-api", broker=broker_url)
        self.app.conf.update(broker_connection_retry_on_startup=True, task_ignore_result=True)

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        with self.app.producer_or_acquire() as producer:
            for seq in seqs:
                self.app.send_task(
                    TASK_SCORE_CHUNK, args=[job_id, seq], queue=queue_name, producer=producer
                )

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        """Fitting runs on the model's queue: contextual calibration needs the model."""
        self.app.send_task(TASK_FIT_CALIBRATION, args=[calibration_id], queue=queue_name)

    def ping(self) -> bool:
        try:
            with self.app.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=2)
            return True
        except Exception:
            return False
