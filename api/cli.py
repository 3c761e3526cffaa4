"""`labelq serve` (with `--embedded`), and `labelq demo`, the README's first command."""

from __future__ import annotations

import argparse
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from labelq.settings import Settings


@contextmanager
def embedded_app(settings: Settings) -> Iterator[Any]:
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
    settings.model = default_model(settings.model, settings.home)
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

    dispatcher.start(runtime)  # its first sweep sends every unfinished chunk
    app = create_app(settings, factory, dispatcher)
    app.router.add_event_handler("shutdown", stop)
    try:
        yield app
    finally:
        stop()


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    host, port = args.host or settings.api_host, args.port or settings.api_port
    if args.embedded:
        with embedded_app(settings) as app:
            uvicorn.run(app, host=host, port=port)
    else:
        from api.app import create_app

        uvicorn.run(create_app(settings), host=host, port=port)
    return 0


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
    """Set up the embedded service, submit the sample reviews as a job, wait, print results."""
    from importlib.resources import files

    from labelq.client import LabelqClient

    samples = files("labelq") / "samples"
    output = settings.home / "demo-results.jsonl"
    with (
        stop_on_sigterm(),
        embedded_app(settings) as app,
        BackgroundServer(app) as server,
        LabelqClient(server.url) as client,
    ):
        print(f"embedded labelq at {server.url} (database {settings.resolved_database_url()})")
        created = client.create_classifier((samples / "sentiment.yaml").read_text())
        print(f"classifier {created['name']} version {created['version']}")
        job = client.submit_jsonl(Path(str(samples / "reviews.jsonl")), created["name"])
        print(f"job {job['id']}: {job['total']} items, {job['failed']} rejected at upload")
        job = client.wait(job["id"], progress=True, timeout=args.timeout)
        print(f"job {job['state']}: {job['succeeded']} succeeded, {job['failed']} failed")
        client.results_jsonl(job["id"], output)
        for row in client.results(job["id"]):
            if row["status"] == "succeeded":
                probs = "  ".join(f"{k}={v:.3f}" for k, v in row["probs"].items())
                print(
                    f"{row['custom_id']!s:<6} {row['label']:<10} "
                    f"confidence={row['confidence']:.3f}  {probs}"
                )
            else:
                print(
                    f"{row['custom_id']!s:<6} {row['status']} (line {row.get('line')}): "
                    f"{row.get('error')}"
                )
        print(f"results written to {output}")
        return 0 if job["state"] == "succeeded" else 1


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
