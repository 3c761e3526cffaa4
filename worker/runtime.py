"""What one worker process holds: its services (settings, database, dispatcher), engines, the
chunk runner and the heartbeat that tells the API its queue is served. Built once at the edge
(the CLI or the embedded app) from `Services` passed in, and stopped before the process exits.
Every use case it calls runs in the system context."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from labelq.backends import reaper
from service import calibrations, pipelines, webhooks, workers
from service.chunks import ChunkRunner, Health
from service.context import Ctx, Services
from service.dispatch import queue_for
from service.reconcile import SweepReport, sweep_if_leader
from worker.engine import Engines
from worker.metrics import WorkerMetrics

log = logging.getLogger(__name__)


def _one_line(exc: BaseException, limit: int = 500) -> str:
    """An exception as one line a job's warning can carry: its type, and the last line of
    its message (vLLM's start-up errors end with the cause), at most `limit` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def say_why(path: Path | None, text: str) -> None:
    """Write `text` to `path` whole (a probe reading it never sees half a line): why a
    worker is not ready (its ready file's `.why`)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text + "\n")
    partial.replace(path)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """Records this worker in the database every `interval` seconds until stopped; while its
    engine is down (`health`: hung, killed, restarting) it leaves the worker list instead, at
    once, and comes back once the engine scores again."""

    def __init__(
        self,
        ctx: Ctx,
        name: str,
        queue: str,
        model: str,
        interval: float,
        health: Health | None = None,
    ):
        self.ctx, self.name, self.queue, self.model = ctx, name, queue, model
        self.interval = interval
        self.health = health
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labelq-heartbeat", daemon=True)
        if health is not None:
            health.listen(self._wake.set)

    def start(self) -> None:
        self._beat()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            workers.leave(self.ctx, self.name)
        except Exception as exc:
            log.warning("could not remove worker %s: %s", self.name, exc)

    def _beat(self) -> None:
        trouble = self.health.trouble if self.health is not None else None
        try:
            if trouble is None:
                workers.beat(self.ctx, self.name, self.queue, self.model)
            else:
                log.warning("worker %s reports no service: %s", self.name, trouble)
                workers.leave(self.ctx, self.name)
        except Exception as exc:
            log.warning("heartbeat failed: %s", exc)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._beat()


class Sweeper:
    """The reconciler in a thread of the worker process, every `interval` seconds: recovery
    must not wait for a sweep task to get through a queue of chunks on a busy worker."""

    def __init__(self, runtime: WorkerRuntime, interval: float):
        self.runtime, self.interval = runtime, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labelq-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.runtime.reconcile()
            except Exception as exc:
                log.warning("reconciler sweep failed: %s", exc)


class Deliverer:
    """Delivers webhooks from the outbox in threads of the worker process: it keeps its
    `LABELQ_WEBHOOK_CONCURRENCY` slots full with due deliveries as they free up, so a
    receiver that drips its answer holds one slot (at most `LABELQ_WEBHOOK_PER_RECEIVER`),
    never the sweep or the other receivers' events. Looks again every `interval` seconds
    when idle."""

    def __init__(self, ctx: Ctx, owner: str, interval: float):
        self.ctx, self.owner, self.interval = ctx, owner, interval
        self.slots = ctx.settings.webhook_concurrency
        self._in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="labelq-webhook")
        self._thread = threading.Thread(target=self._run, name="labelq-deliverer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop claiming; requests under way end within their deadline or are abandoned to
        their leases."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                free = self.slots - self._in_flight
            claimed = []
            if free > 0:
                try:
                    claimed = webhooks.claim(self.ctx, self.owner, free)
                except Exception as exc:
                    log.warning("webhook claim failed: %s", exc)
            for delivery in claimed:
                with self._lock:
                    self._in_flight += 1
                self._pool.submit(self._attempt, delivery)
            if not claimed:
                self._wake.wait(self.interval)
                self._wake.clear()

    def _attempt(self, delivery: webhooks.Due) -> None:
        try:
            webhooks.attempt(self.ctx, self.owner, delivery)
        finally:
            with self._lock:
                self._in_flight -= 1
            self._wake.set()


class WorkerRuntime:
    def __init__(self, services: Services, model: str, name: str | None = None):
        self.services = services
        self.settings = services.settings
        self.ctx = Ctx.system(services)
        self.model = model
        self.queue = queue_for(model)
        self.name = name or worker_name()
        self.engines = Engines(self.settings)
        self.runner = ChunkRunner(
            self.ctx,
            self.engines.scorer_for,
            self.name,
            discard=self.engines.discard,
            kill=self.engines.kill,
        )
        self.heartbeat = Heartbeat(
            self.ctx,
            self.name,
            self.queue,
            model,
            self.settings.worker_heartbeat,
            self.runner.health,
        )
        self.sweeper = Sweeper(self, self.settings.reconcile_interval)
        self.deliverer = Deliverer(self.ctx, self.name, self.settings.reconcile_interval)
        self.metrics = WorkerMetrics(self.queue, lambda: self.runner.meter.busy_seconds)

    def score_chunk(self, job_id: str, seq: int) -> bool:
        with self.metrics.chunk() as seen:
            scored = self.runner.run(job_id, seq)
            seen["outcome"] = "scored" if scored else "skipped"
        return scored

    def load_model(
        self, why: Path | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> float:
        """Load this worker's model before it takes any task, trying again (5 s, then twice as
        long each time, up to a minute) while it cannot: a model cache still being filled, a
        path mistyped and then fixed. Each failure is logged, recorded for the API (a job
        waiting on this queue says why) and written to `why` (the readiness probe prints it);
        nothing is consumed meanwhile. The seconds the load took."""
        delays = workers.load_retry_delays()
        attempt = 0
        while True:
            attempt += 1
            before = reaper.children_now()
            started = time.monotonic()
            try:
                self.engines.scorer_for(self.model)
            except BaseException as exc:
                # An engine that died starting may leave its processes: none outlives a try
                # (nor a SIGTERM that stops the worker mid-load).
                reaper.kill_tree(reaper.new_children(before))
                if not isinstance(exc, Exception):
                    raise
                error = _one_line(exc)
                delay = next(delays)
                log.error(
                    "could not load %s (attempt %d): %s; not ready, taking no tasks; trying "
                    "again in %g s",
                    self.model,
                    attempt,
                    error,
                    delay,
                )
                self.metrics.load_failures.inc()
                say_why(why, f"not ready: could not load {self.model} (attempt {attempt}): {error}")
                self._record_load(error, None)
                sleep(delay)
                continue
            seconds = time.monotonic() - started
            self.metrics.load_seconds.set(seconds)
            self._record_load(None, seconds)
            say_why(why, f"loaded {self.model} in {seconds:.1f} s; ready once tasks are consumed")
            return seconds

    def _record_load(self, error: str | None, seconds: float | None) -> None:
        try:
            workers.record_load(self.ctx, self.name, self.queue, self.model, error, seconds)
        except Exception as exc:  # the database may be what is down: the log says it all
            log.warning("could not record the model load in the database: %s", exc)

    def fit_calibration(self, calibration_id: int) -> None:
        calibrations.fit(self.ctx, self.engines.scorer_for, calibration_id)

    def reconcile(self) -> SweepReport | None:
        """A sweep, if no other worker is sweeping (see `sweep_if_leader`)."""
        return sweep_if_leader(self.ctx, self.name)

    def run_pipeline(self, name: str, trigger: str = "schedule", tenant: str = "default") -> None:
        """A run of `tenant`'s pipeline, the system acting for that tenant."""
        pipelines.start_run(self.ctx.acting_for(tenant), name, trigger)

    def start(self, sweep: bool = True) -> None:
        self.heartbeat.start()
        self.deliverer.start()
        if sweep:
            self.sweeper.start()

    def stop(self) -> None:
        """Leave the worker list and stop the engines; no engine process outlives this."""
        self.sweeper.stop()
        self.deliverer.stop()
        self.heartbeat.stop()
        self.engines.close()
