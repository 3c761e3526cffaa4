"""Serving the app: `labelq serve` (uvicorn in the foreground) and a server in a thread (the
demo, tests)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from labelq.errors import LabelqError
from labelq.settings import Settings


def serve(app: Any, settings: Settings, host: str, port: int) -> None:
    """uvicorn in the foreground, with its C parser and loop, no access log unless asked for
    (17 us of CPU a line, 3% of a poll; /metrics counts and times every request), and the
    startup heap frozen."""
    import uvicorn

    freeze_startup_heap()
    uvicorn.run(
        app,
        host=host,
        port=port,
        access_log=settings.api_access_log,
        # X-Forwarded-For is believed from LABELQ_TRUSTED_PROXIES alone (uvicorn's default
        # believes any local process: a proxy on the host would pass for the client).
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=",".join(settings.trusted_proxies) or None,
    )


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


def require_free(host: str, port: int) -> None:
    """A clear error, naming the setting, when the address is taken (before any start-up
    work)."""
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
