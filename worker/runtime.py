"""What one worker process holds: its services (settings, database, dispatcher), engines, the
chunk runner and the heartbeat that tells the API its queue is served. Built once at the edge
(the CLI or the embedded app) from `Services` passed in, and stopped before the process exits.
Every use case it calls runs in the system context."""

from __future__ import annotations

import logging
import os
import socket
import threading

from service import calibrations, pipelines, workers
from service.chunks import ChunkRunner, Health
from service.context import Ctx, Services
from service.dispatch import queue_for
from service.reconcile import SweepReport, sweep_if_leader
from worker.engine import Engines

log = logging.getLogger(__name__)


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

    def score_chunk(self, job_id: str, seq: int) -> bool:
        return self.runner.run(job_id, seq)

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
        if sweep:
            self.sweeper.start()

    def stop(self) -> None:
        """Leave the worker list and stop the engines; no engine process outlives this."""
        self.sweeper.stop()
        self.heartbeat.stop()
        self.engines.close()
