"""The FastAPI app. Never imports vLLM: it stores jobs and hands chunks to workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api import errors
from api.deps import AppState, LoopReads, RateLimiter
from api.metrics import Metrics
from api.routes import calibrations, classifiers, dashboard, health, jobs, keys, pipelines
from db.session import async_read_engine, async_sessions, make_engine, make_sessionmaker
from labelq import __version__
from labelq.settings import Settings
from service.dispatch import CeleryDispatcher, Dispatcher


def create_app(
    settings: Settings | None = None,
    factory: sessionmaker[Session] | None = None,
    dispatcher: Dispatcher | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> FastAPI:
    settings = settings or Settings()
    factory = factory or make_sessionmaker(
        make_engine(settings.resolved_database_url(), **pool_for(settings.api_db_threads))
    )
    dispatcher = dispatcher or CeleryDispatcher(settings.broker_url)
    app = FastAPI(
        lifespan=lifespan(settings.api_db_threads, on_shutdown),
        title="labelq",
        version=__version__,
        description="An LLM as a calibrated text classifier for batch work.",
    )
    metrics = Metrics()
    app.state.labelq = AppState(
        settings, factory, dispatcher, metrics, RateLimiter(settings.submissions_per_minute)
    )
    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=settings.max_body_bytes)
    app.include_router(health.router)
    for module in (classifiers, calibrations, jobs, pipelines, keys, dashboard):
        app.include_router(module.router, responses=errors.ERROR_RESPONSES)
    app.include_router(dashboard.page_router, responses=errors.ERROR_RESPONSES)
    app.mount("/dashboard/static", StaticFiles(packages=[("api", "static")]), name="static")

    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def pool_for(threads: int) -> dict[str, Any]:
    """A pool of one connection per thread that does database work, none made and dropped per
    request: past the pool size, SQLAlchemy's default overflow opens a connection (a new
    PostgreSQL backend, milliseconds) and closes it on return, which under load was a fifth of
    the API's time (py-spy)."""
    return {"pool_size": threads, "max_overflow": 0}


def lifespan(
    threads: int, on_shutdown: Callable[[], None] | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Caps the threadpool that sync routes and database calls run on (anyio's default is 40)
    to the connections in the pool (a thread beyond them only waits for one); on PostgreSQL,
    opens the engine for reads on the event loop (`api.deps.Reads`) in the loop that serves,
    with as many connections; runs `on_shutdown` when the server stops."""

    @asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        st: AppState = app.state.labelq
        engine = st.factory.kw["bind"]
        loop_engine = async_read_engine(engine, threads) if isinstance(engine, Engine) else None
        if loop_engine is not None:
            st.loop_reads = LoopReads(async_sessions(loop_engine), asyncio.Semaphore(threads))
        try:
            yield
        finally:
            st.loop_reads = None
            if loop_engine is not None:
                await loop_engine.dispose()
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
