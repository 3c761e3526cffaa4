"""The in-process worker of the embedded default (`labelq serve --embedded`, `labelq demo`): a
thread that runs tasks as they come, a thread that runs the reconciler and one that runs the
pipelines' schedule, on a `WorkerRuntime` (no broker)."""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from dataclasses import dataclass

from labelq.settings import Settings
from service.dispatch import chunk_priority
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkTask:
    job_id: str
    seq: int


@dataclass(frozen=True)
class FitTask:
    calibration_id: int


Task = ChunkTask | FitTask


class ThreadDispatcher:
    """Runs dispatched chunks and fits in one background thread, by priority (a job's first
    chunks first, as the Redis queues do: `db.chunks.chunk_priority`), then in order.
    Its queue lives in memory: what a crash loses, the reconciler (a second thread, and a sweep
    at start-up) sends again from the database."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Task | None]] = queue.PriorityQueue()
        self._sent = itertools.count()
        self._stopping = threading.Event()
        self.runtime: WorkerRuntime | None = None
        self._worker = threading.Thread(target=self._run, name="labelq-worker", daemon=True)
        self._sweeper = threading.Thread(target=self._sweep, name="labelq-reconciler", daemon=True)
        self._scheduler = threading.Thread(
            target=self._schedule, name="labelq-scheduler", daemon=True
        )

    def start(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        runtime.start(sweep=False)  # this dispatcher runs the sweep in its own thread
        self._worker.start()
        self._sweeper.start()
        self._scheduler.start()

    # -- Dispatcher ------------------------------------------------------------------------
    def dispatch(self, job_id: str, queue_name: str, seqs: list[int]) -> None:
        for seq in seqs:
            self._put(chunk_priority(seq), ChunkTask(job_id, seq))

    def dispatch_fit(self, calibration_id: int, queue_name: str) -> None:
        self._put(0, FitTask(calibration_id))

    def _put(self, priority: int, task: Task | None) -> None:
        self._queue.put((priority, next(self._sent), task))

    def take(self) -> Task | None:
        """The next task to run (None: stop)."""
        return self._queue.get()[2]

    def ping(self) -> bool:
        return self._worker.is_alive()

    # -- life cycle ------------------------------------------------------------------------
    def close(self, timeout: float = 60) -> None:
        """Stop taking tasks; the chunk in flight finishes (or, past `timeout`, its lease is
        left to expire and the chunk runs again after a restart). Then stop the engines."""
        self._stopping.set()
        self._put(-1, None)
        if self._worker.is_alive():
            self._worker.join(timeout=timeout)
        for thread in (self._sweeper, self._scheduler):
            if thread.is_alive():
                thread.join(timeout=5)
        if self.runtime is not None:
            self.runtime.stop()

    def _run(self) -> None:
        assert self.runtime is not None
        while (task := self.take()) is not None and not self._stopping.is_set():
            try:
                if isinstance(task, FitTask):
                    self.runtime.fit_calibration(task.calibration_id)
                else:
                    self.runtime.score_chunk(task.job_id, task.seq)
            except Exception:
                # The chunk stays claimable (its lease expires); the reconciler sends it again.
                log.exception("task %s failed", task)

    def _schedule(self) -> None:
        """Pipelines, as beat runs them in the distributed set-up."""
        from service import pipelines

        assert self.runtime is not None
        while not self._stopping.wait(1.0):
            try:
                for tenant, name in pipelines.due_now(self.runtime.ctx):
                    self.runtime.run_pipeline(name, tenant=tenant)
            except Exception:
                log.exception("pipeline scheduler tick failed")

    def _sweep(self) -> None:
        assert self.runtime is not None
        settings: Settings = self.runtime.settings
        while True:
            try:
                self.runtime.reconcile()
            except Exception:
                log.exception("reconciler sweep failed")
            if self._stopping.wait(settings.reconcile_interval):
                return
