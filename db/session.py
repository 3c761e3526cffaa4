"""Engines and sessions. One engine per process and URL, made by the edge that needs it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import URL, Engine, Select, create_engine, event
from sqlalchemy.engine import Connection, CursorResult, Dialect
from sqlalchemy.exc import DBAPIError
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


# The execution option that lets `DriverRead`s on a connection go straight to asyncpg: set on
# the API's event-loop engine, whose connections are in autocommit (no transaction of
# SQLAlchemy's adapter to stay inside).
DRIVER_READS = "labelq_driver_reads"


def async_read_engine(engine: Engine, pool_size: int) -> AsyncEngine | None:
    """For an API process on PostgreSQL: an engine on the same database with asyncpg,
    autocommit (as `read_sessions`), for reads run on the event loop; None elsewhere (SQLite's
    driver blocks). asyncpg rather than psycopg's async mode: it prepares each statement once
    per connection and decodes rows in C (bench/load.py, polling: 581 against 508-532
    requests/s, p99 264 against 277-322 ms). Its connections belong to the event loop that
    opens them: make it in the loop that will use it, and dispose of it there.

    No pre-ping: it was a second round trip on every request (a tenth of a status poll's CPU
    in the API process, and as much again in PostgreSQL's). A connection the server closed
    (a restart, an idle timeout, pg_terminate_backend) fails its next statement instead, which
    invalidates the pool, and `api.deps.Reads` runs that read once more on a new connection:
    SQLAlchemy's optimistic disconnect handling, safe here because these sessions only read."""
    if engine.dialect.name != "postgresql":
        return None
    url = loop_url(engine.url)
    return create_async_engine(
        url,
        json_deserializer=json_loads,
        isolation_level="AUTOCOMMIT",
        pool_size=pool_size,
        max_overflow=0,
        execution_options={DRIVER_READS: url.drivername == "postgresql+asyncpg"},
    )


def connection_lost(exc: BaseException) -> bool:
    """Whether a statement failed because its connection was gone (then it was invalidated:
    the same read may be run again on another)."""
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


# A DriverRead's statement for asyncpg: SQL, parameter names in $n order, the values of
# parameters the statement fixes itself, and (column position, result processor) pairs.
_Compiled = tuple[str, tuple[str, ...], dict[str, Any], list[tuple[int, Any]]]


class DriverRead:
    """A hot read statement (a status poll, a page of results): on a connection that allows
    it (`DRIVER_READS`), run by asyncpg itself, compiled for it once, its rows plain tuples;
    elsewhere (SQLite, psycopg, a session that writes) executed by SQLAlchemy as usual.

    Why: SQLAlchemy's execution and result machinery cost more than the query. Measured with
    16 concurrent readers on one event loop, CPU of the API process per statement: a job's
    status row 182 us through an AsyncSession, 136 us this way; a 50-row page 234-281 us, 100
    us (asyncpg decodes rows in C; the JSON codec is the one SQLAlchemy's dialect installs on
    every connection). Result processors of the columns' types (UTC times) still run."""

    def __init__(self, stmt: Select[Any]):
        self.stmt = stmt
        self.names = tuple(stmt.selected_columns.keys())
        self._compiled: _Compiled | None = None

    def _for(self, dialect: Dialect) -> _Compiled:
        if self._compiled is None:
            compiled = self.stmt.compile(dialect=dialect)
            processors = [
                (i, proc)
                for i, column in enumerate(self.stmt.selected_columns)
                if (proc := column.type.dialect_impl(dialect).result_processor(dialect, None))
            ]
            order = tuple(compiled.positiontup or ())
            self._compiled = (compiled.string, order, dict(compiled.params), processors)
        return self._compiled

    def all(self, s: Session, params: dict[str, Any]) -> list[tuple[Any, ...]]:
        conn = s.connection()
        if not conn.get_execution_options().get(DRIVER_READS):
            return [tuple(row) for row in conn.execute(self.stmt, params)]
        sql, order, fixed, processors = self._for(conn.dialect)
        args = [params[name] if name in params else fixed[name] for name in order]
        rows = [tuple(record) for record in _driver_fetch(conn, sql, args)]
        if processors:
            for k, row in enumerate(rows):
                values = list(row)
                for i, proc in processors:
                    values[i] = proc(values[i])
                rows[k] = tuple(values)
        return rows

    def one(self, s: Session, params: dict[str, Any]) -> dict[str, Any] | None:
        """The first row as a dict of its column names, or None."""
        rows = self.all(s, params)
        return dict(zip(self.names, rows[0], strict=True)) if rows else None


def _driver_fetch(conn: Connection, sql: str, args: list[Any]) -> list[Any]:
    """`sql` on the asyncpg connection under `conn`, awaited from the greenlet that
    `AsyncSession.run_sync` runs sync code in (`AdaptedConnection.run_async`). A failure on a
    connection asyncpg found closed is run through SQLAlchemy's own error handling (one
    statement on the same connection), so the pool is invalidated as for any other statement
    and the error says the connection was lost (`connection_lost`)."""
    adapted = conn.connection.dbapi_connection
    assert adapted is not None
    try:
        records: list[Any] = adapted.run_async(lambda raw: raw.fetch(sql, *args))
    except Exception:
        if adapted.driver_connection.is_closed():
            conn.exec_driver_sql("SELECT 1")  # raises DBAPIError(connection_invalidated=True)
        raise
    return records


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
