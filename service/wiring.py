"""Where a process gets its database: the one module that builds engines, pools and the
`Services` every use case runs with. The API, the worker, beat, the CLI, the embedded stack,
the benchmarks and the tests all build theirs here.

Pools, by process:
- API: one connection per database thread (`LABELQ_API_DB_THREADS`), no overflow: past the
  pool, SQLAlchemy's default overflow opens a connection (a new PostgreSQL backend,
  milliseconds) and closes it on return, which under load was a fifth of the API's time
  (py-spy). On PostgreSQL as many again for reads on its event loop (`open_loop_reads`).
- worker, beat, CLI, embedded: SQLAlchemy's default pool (5, overflow 10).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from db import migrate
from db.session import (
    async_read_engine,
    async_sessions,
    make_engine,
    make_sessionmaker,
    read_sessions,
)
from labelq.settings import Settings
from service.context import LoopReads, Services
from service.dispatch import CeleryDispatcher, Dispatcher
from service.keys import TrustedKeys
from service.workers import LiveQueues

log = logging.getLogger(__name__)


def database_engine(settings: Settings, **pool: Any) -> Engine:
    """The process's engine for `LABELQ_DATABASE_URL` (or the embedded SQLite file)."""
    return make_engine(settings.resolved_database_url(), **pool)


def services_on(engine: Engine, settings: Settings, dispatcher: Dispatcher) -> Services:
    """The `Services` of a process on an engine it built."""
    return Services(
        settings=settings,
        sessions=make_sessionmaker(engine),
        reads=read_sessions(engine),
        dispatcher=dispatcher,
        live_queues=LiveQueues(),
        trusted_keys=TrustedKeys(settings.key_cache_seconds),
    )


def build(settings: Settings, dispatcher: Dispatcher | None = None, **pool: Any) -> Services:
    """A process's `Services`: its engine (pool options as `create_engine` takes them) and
    dispatcher (Celery on the configured broker unless one is given)."""
    return services_on(
        database_engine(settings, **pool),
        settings,
        dispatcher or CeleryDispatcher(settings.broker_url),
    )


def api_pool(settings: Settings) -> dict[str, Any]:
    """An API process's pool: one connection per database thread, none made per request."""
    return {"pool_size": settings.api_db_threads, "max_overflow": 0}


def build_api(settings: Settings, dispatcher: Dispatcher | None = None) -> Services:
    return build(settings, dispatcher, **api_pool(settings))


def engine_of(services: Services) -> Engine:
    bind = services.sessions.kw["bind"]
    assert isinstance(bind, Engine)
    return bind


def close(services: Services) -> None:
    """Close the process's pool (at exit, or when a test is done with it)."""
    engine_of(services).dispose()


@dataclass
class LoopEngine:
    """An API process's reads on its event loop, and the engine under them (closed with
    `close_loop_reads` in the same loop)."""

    reads: LoopReads
    engine: AsyncEngine


def open_loop_reads(services: Services) -> LoopEngine | None:
    """On PostgreSQL, an asyncpg engine for reads on the running event loop, with a connection
    per database thread; None elsewhere (SQLite's driver blocks). Call it in the loop that
    serves: its connections belong to that loop."""
    threads = services.settings.api_db_threads
    engine = async_read_engine(engine_of(services), threads)
    if engine is None:
        return None
    return LoopEngine(LoopReads(async_sessions(engine), asyncio.Semaphore(threads)), engine)


async def close_loop_reads(loop: LoopEngine) -> None:
    await loop.engine.dispose()


def require_current(settings: Settings) -> None:
    """Refuse to start on a database outside this code's compatible range
    (`db.migrate.compatibility`); say so when it is behind or ahead within the range."""
    note = migrate.require_current(settings.resolved_database_url())
    if note:
        log.warning("%s", note)


def upgrade(settings: Settings) -> None:
    """Bring the database up to date (the embedded default does this itself at start)."""
    migrate.upgrade(settings.resolved_database_url())
