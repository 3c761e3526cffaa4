"""The FastAPI app. Never imports vLLM: it stores jobs and hands chunks to workers."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session, sessionmaker

from api import errors
from api.deps import AppState, RateLimiter
from api.metrics import Metrics
from api.routes import calibrations, classifiers, dashboard, health, jobs, keys, pipelines
from db.session import make_engine, make_sessionmaker
from labelq import __version__
from labelq.settings import Settings
from service.dispatch import CeleryDispatcher, Dispatcher


def create_app(
    settings: Settings | None = None,
    factory: sessionmaker[Session] | None = None,
    dispatcher: Dispatcher | None = None,
) -> FastAPI:
    settings = settings or Settings()
    factory = factory or make_sessionmaker(make_engine(settings.resolved_database_url()))
    dispatcher = dispatcher or CeleryDispatcher(settings.broker_url)
    app = FastAPI(
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

    @app.middleware("http")
    async def _count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - start)
        return response

    return app
