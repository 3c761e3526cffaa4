"""`labelq serve` (with `--embedded`), and `labelq demo`, the README's first command."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from labelq.settings import Settings


@contextmanager
def embedded_app(settings: Settings, preload: bool = False) -> Iterator[Any]:
    """The API with an in-process worker on SQLite (no Redis), on the configured model or the
    demo model. Unfinished chunks of earlier runs are sent again, so a restart loses nothing.
    The worker and its engine stop when the app shuts down (SIGTERM, SIGINT: uvicorn's
    lifespan, before it re-raises the signal) or when this context ends, whichever is first."""
    from api.app import create_app
    from db.jobs import requeue_after_restart
    from db.migrate import upgrade
    from db.session import make_engine, make_sessionmaker, transaction
    from labelq.demo_model import default_model
    from worker.embedded import ThreadDispatcher
    from worker.runtime import WorkerRuntime, worker_name

    settings.home.mkdir(parents=True, exist_ok=True)
    settings.model = default_model(settings.model, settings.home, settings.data_dir)
    url = settings.resolved_database_url()
    upgrade(url)
    factory = make_sessionmaker(make_engine(url))
    dispatcher = ThreadDispatcher()
    runtime = WorkerRuntime(
        settings, factory, settings.model, dispatcher, name=f"embedded-{worker_name()}"
    )
    with transaction(factory) as s:
        requeue_after_restart(s, runtime.queue)
    stopped = threading.Event()

    def stop() -> None:
        if not stopped.is_set():
            stopped.set()
            dispatcher.close()

    if preload:  # load the engine now, not inside the first job
        runtime.engines.scorer_for(settings.model)
    dispatcher.start(runtime)  # its first sweep sends every unfinished chunk
    app = create_app(settings, factory, dispatcher, on_shutdown=stop)
    try:
        yield app
    finally:
        stop()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    host, port = args.host or settings.api_host, args.port or settings.api_port
    _require_free(host, port)
    # uvicorn's access log is off unless asked for: 17 us of CPU a line (3% of a poll), and
    # /metrics counts and times every request.
    access_log = settings.api_access_log
    if args.embedded:
        with embedded_app(settings) as app:
            freeze_startup_heap()
            uvicorn.run(app, host=host, port=port, access_log=access_log)
    else:
        from api.app import create_app
        from db.migrate import require_current

        require_current(settings.resolved_database_url())
        app = create_app(settings)
        freeze_startup_heap()
        uvicorn.run(app, host=host, port=port, access_log=access_log)
    return 0


def freeze_startup_heap() -> None:
    """Takes every object made before serving (modules, the app, its routes, schemas and
    engine: about 190,000 in an API process) out of the cyclic collector's sight for good
    (`gc.freeze`), after collecting what is already garbage.

    Why: under many concurrent requests, objects of requests in flight outlive two young
    collections and are promoted, so a full collection came every 2 s, and it walked all those
    startup objects: 115-165 ms with the event loop stopped, every request waiting behind it.
    That was the p99 of bench/load.py (200 pollers: 235 ms). Frozen, a full collection walks
    what came since (about 16,000 objects): 4-8 ms."""
    import gc

    gc.collect()
    gc.freeze()


def _require_free(host: str, port: int) -> None:
    from labelq.errors import LabelqError

    with socket.socket() as s:
        # As uvicorn binds: a socket of a server that just stopped (TIME_WAIT) is no obstacle.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise LabelqError(
                f"cannot listen on {host}:{port} ({exc.strerror}): pass --port or set "
                "LABELQ_API_PORT",
                field="port",
            ) from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BackgroundServer:
    """uvicorn in a thread, for the demo and for tests."""

    def __init__(self, app: Any, port: int | None = None):
        import uvicorn

        self.port = port or _free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the API server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


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


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from api.demo import run

    return run(settings, args.timeout)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("serve", help="run the HTTP API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--embedded",
        action="store_true",
        help="with an in-process worker on SQLite: no Redis needed",
    )
    p.set_defaults(handler=_serve)

    p = sub.add_parser("demo", help="run sample reviews through a job on the embedded service")
    p.add_argument("--timeout", type=float, default=900)
    p.set_defaults(handler=_demo)
