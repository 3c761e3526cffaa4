"""Engines and sessions. One engine per process and URL, made by the edge that needs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, sessionmaker


def json_loads(data: str | bytes) -> Any:
    """JSON columns are decoded with orjson, several times faster than `json` on the small
    documents a results page holds 100 of; what orjson refuses and `json` reads (NaN, integers
    past 64 bits in a user's input) falls back to `json`."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout so an API and an
    in-process worker can share the file."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_deserializer=json_loads,
            **kwargs,
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, json_deserializer=json_loads, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def read_sessions(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for requests that only read (status polls, result pages, authentication):
    autocommit, so each costs no BEGIN and no ROLLBACK round trip, on the same pool as
    `factory`. Each statement sees its own snapshot: for reads that need one snapshot across
    statements (the dashboard's SET LOCAL tuning, say) use `factory`."""
    bind = factory.kw["bind"]
    assert isinstance(bind, Engine)
    return sessionmaker(
        bind.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )


def loop_url(url: URL) -> URL:
    """`url` for asyncpg: libpq's `sslmode` is asyncpg's `ssl` (the same mode names). With any
    other query parameter (libpq's, which asyncpg would refuse) psycopg's async mode, which
    takes them all, still answers on the loop."""
    query = dict(url.query)
    if "sslmode" in query:
        query["ssl"] = query.pop("sslmode")
    if set(query) - {"ssl"}:
        return url.set(drivername="postgresql+psycopg")
    return url.set(drivername="postgresql+asyncpg", query=query)


def async_read_engine(engine: Engine, pool_size: int) -> AsyncEngine | None:
    """For an API process on PostgreSQL: an engine on the same database with asyncpg,
    autocommit (as `read_sessions`), for reads run on the event loop; None elsewhere (SQLite's
    driver blocks). asyncpg rather than psycopg's async mode: it prepares each statement once
    per connection and decodes rows in C (bench/load.py, polling: 581 against 508-532
    requests/s, p99 264 against 277-322 ms). Its connections belong to the event loop that
    opens them: make it in the loop that will use it, and dispose of it there."""
    if engine.dialect.name != "postgresql":
        return None
    return create_async_engine(
        loop_url(engine.url),
        pool_pre_ping=True,
        json_deserializer=json_loads,
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
    )


def async_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched (typed: `Result` does not declare it)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits as one transaction, or rolls back on error. For use cases
    that run outside a request (the worker, the reconciler, the CLI)."""
    with factory() as session, session.begin():
        yield session
