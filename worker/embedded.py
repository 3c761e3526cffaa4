"""An in-process worker for the embedded default: a thread that runs tasks as they come."""

from __future__ import annotations

import logging
import queue
import threading

from sqlalchemy.orm import Session, sessionmaker

from labelq.scoring import Scorer
from labelq.settings import Settings
from worker.calibrate import apply_active_calibration, fit_calibration
from worker.chunks import process_chunk
from worker.engine import scorer_for

log = logging.getLogger(__name__)

Task = tuple[str, str, int] | tuple[str, int]


class ThreadDispatcher:
    """Runs dispatched chunks and fits in one background thread, in order (no broker)."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings):
        self.factory = factory
        self.settings = settings
        self._queue: queue.Queue[Task | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="labelq-worker", daemon=True)
        self._thread.start()

    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        for seq in seqs:
            self._queue.put(("chunk", job_id, seq))

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        self._queue.put(("fit", calibration_id))

    def ping(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _scorer(self, model: str) -> Scorer:
        return scorer_for(model, self.settings)

    def _run(self) -> None:
        while (task := self._queue.get()) is not None:
            for attempt in range(1, self.settings.max_chunk_attempts + 1):
                try:
                    if task[0] == "fit":
                        fit_calibration(self.factory, self._scorer, int(task[1]))
                    else:
                        _, job_id, seq = task  # type: ignore[misc]
                        process_chunk(
                            self.factory,
                            self._scorer,
                            str(job_id),
                            int(seq),
                            self.settings.max_chunk_attempts,
                            calibrate=apply_active_calibration,
                        )
                    break
                except Exception:
                    log.exception("task %s failed (attempt %d)", task, attempt)
