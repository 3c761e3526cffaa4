"""The FastAPI app. Never imports vLLM: it stores jobs and hands chunks to workers."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api import errors
from api.deps import AppState, RateLimiter
from api.metrics import Metrics
from api.routes import (
    calibrations,
    classifiers,
    dashboard,
    drift,
    health,
    jobs,
    keys,
    pipelines,
    webhooks,
)
from labelq import __version__
from service import wiring
from service.context import Services


def create_app(services: Services, on_shutdown: Callable[[], None] | None = None) -> FastAPI:
    """The API of a process whose `Services` are built (`service.wiring.build_api`)."""
    settings = services.settings
    app = FastAPI(
        lifespan=lifespan(on_shutdown),
        title="labelq",
        version=__version__,
        description="An LLM as a calibrated text classifier for batch work.",
    )
    metrics = Metrics()
    app.state.labelq = AppState(services, metrics, RateLimiter(settings.submissions_per_minute))
    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=settings.max_body_bytes)
    app.include_router(health.router)
    for module in (
        classifiers,
        calibrations,
        jobs,
        pipelines,
        keys,
        webhooks,
        dashboard,
        drift,
    ):
        app.include_router(module.router, responses=errors.ERROR_RESPONSES)
    app.include_router(dashboard.page_router, responses=errors.ERROR_RESPONSES)
    app.mount("/dashboard/static", StaticFiles(packages=[("api", "static")]), name="static")

    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def lifespan(
    on_shutdown: Callable[[], None] | None,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Caps the threadpool that use cases run on (anyio's default is 40) to the connections in
    the pool (a thread beyond them only waits for one); on PostgreSQL, opens the reads on the
    event loop (`call.on_loop`) in the loop that serves, with as many connections; runs
    `on_shutdown` when the server stops."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        st: AppState = app.state.labelq
        anyio.to_thread.current_default_thread_limiter().total_tokens = st.settings.api_db_threads
        loop = wiring.open_loop_reads(st.services)
        st.loop = loop.reads if loop is not None else None
        try:
            yield
        finally:
            st.loop = None
            if loop is not None:
                await wiring.close_loop_reads(loop)
            if on_shutdown is not None:
                on_shutdown()

    return run


class RequestMetrics:
    """ASGI middleware counting requests and timing them per route (plain ASGI: a
    `BaseHTTPMiddleware` costs a task and a stream per request)."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sent(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)
