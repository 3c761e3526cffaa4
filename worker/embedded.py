"""An in-process worker for the embedded default: a thread that runs chunks as they come."""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.orm import Session, sessionmaker

from labelq.settings import Settings
from worker.calibrate import apply_active_calibration
from worker.chunks import process_chunk
from worker.engine import scorer_for

log = logging.getLogger(__name__)


class ThreadDispatcher:
    """Runs dispatched chunks in one background thread, in order (no broker needed)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings):
        self.factory = factory
        self.settings = settings
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="labelq-worker", daemon=True)
        self._thread.start()

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        for seq in seqs:
            self._queue.put((job_id, seq))

    def ping(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            job_id, seq = task
            for attempt in range(1, self.settings.max_chunk_attempts + 1):
                try:
                    process_chunk(
                        self.factory,
                        lambda model: scorer_for(model, self.settings),
                        job_id,
                        seq,
                        self.settings.max_chunk_attempts,
                        calibrate=apply_active_calibration,
                    )
                    break
                except Exception:
                    log.exception("chunk %s/%d failed (attempt %d)", job_id, seq, attempt)
