"""The API with an in-process worker, reconciler and scheduler (no Redis)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from api.app import create_app
from labelq.settings import Settings
from service import wiring
from service.reconcile import requeue_after_restart
from worker.loops import ThreadDispatcher
from worker.runtime import WorkerRuntime, worker_name


@contextmanager
def embedded_app(settings: Settings, preload: bool = False) -> Iterator[Any]:
    """The API with an in-process worker on SQLite (no Redis), on the configured model or the
    demo model. Unfinished chunks of earlier runs are sent again, so a restart loses nothing.
    The worker and its engine stop when the app shuts down (SIGTERM, SIGINT: uvicorn's
    lifespan, before it re-raises the signal) or when this context ends, whichever is first."""
    from labelq.demo_model import default_model

    settings.home.mkdir(parents=True, exist_ok=True)
    settings.model = default_model(settings.model, settings.home, settings.data_dir)
    wiring.upgrade(settings)
    dispatcher = ThreadDispatcher()
    services = wiring.build(settings, dispatcher)
    runtime = WorkerRuntime(services, settings.model, name=f"embedded-{worker_name()}")
    requeue_after_restart(runtime.ctx, runtime.queue)
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            dispatcher.close()
            wiring.close(services)

    if preload:  # load the engine now, not inside the first job
        runtime.engines.scorer_for(settings.model)
    dispatcher.start(runtime)  # its first sweep sends every unfinished chunk
    app = create_app(services, on_shutdown=stop)
    try:
        yield app
    finally:
        stop()


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (what systemd and Kubernetes send) ends the main thread as Ctrl-C does, so
    every `finally` runs and the engine is stopped instead of orphaned."""

    def _raise(signum: int, _: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
