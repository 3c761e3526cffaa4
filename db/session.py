"""Engines and session makers: how labelq talks to its database. `service.wiring` builds one
engine per process and URL with these; nothing else opens one."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import URL, Engine, create_engine, event, func, select, text
from sqlalchemy.engine import Connection, CursorResult
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import ORMExecuteState, Session, sessionmaker


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


def without_foreign_keys(connection: Connection) -> None:
    """On SQLite, turn foreign keys off for this connection, before its transaction begins (a
    migration there rebuilds tables, and dropping the old `jobs` with them on would cascade to
    every item). `db.migrate.upgrade` checks the keys once the migration is done."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


class ReadOnlyTransaction(Exception):
    """A write was attempted in a session that only reads."""


class ReadOnlySession(Session):
    """A session for reads alone: an INSERT, UPDATE or DELETE through it, or a flush of changed
    objects, raises `ReadOnlyTransaction`. Read sessions run in autocommit (each statement its
    own transaction), so a write there would commit at once, outside any use case's
    transaction: the rule that reads never write is checked here, not left to a docstring."""


@event.listens_for(ReadOnlySession, "do_orm_execute")
def _refuse_write_statements(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        raise ReadOnlyTransaction("a read session cannot write: open a transaction (ctx.tx())")


@event.listens_for(ReadOnlySession, "before_flush")
def _refuse_flushes(session: Session, *_: Any) -> None:
    if session.new or session.dirty or session.deleted:
        changed = [type(o).__name__ for o in [*session.new, *session.dirty, *session.deleted]]
        raise ReadOnlyTransaction(
            f"a read session cannot write ({', '.join(sorted(set(changed)))}): open a "
            "transaction (ctx.tx())"
        )


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for use cases that only read (status polls, result pages, authentication):
    autocommit, so each costs no BEGIN and no ROLLBACK round trip, on the same pool as the
    engine's transactions; they refuse to write (`ReadOnlySession`). Each statement sees its own
    snapshot: reads that need one snapshot across statements (the dashboard's SET LOCAL
    tuning, say) open a transaction."""
    return sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        class_=ReadOnlySession,
        expire_on_commit=False,
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
    invalidates the pool, and `service.context.LoopReads` runs that read once more on a new
    connection: SQLAlchemy's optimistic disconnect handling, safe here because these sessions
    only read."""
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


def async_sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Read sessions on the event loop: their sync side is a `ReadOnlySession`."""
    return async_sessionmaker(engine, expire_on_commit=False, sync_session_class=ReadOnlySession)


def db_now(s: Session) -> datetime:
    """The database's clock (UTC): every lease, lock and staleness judgement is stamped and
    judged by it, never by a host's own clock (40 s of skew between two workers let one take
    the other's live chunks). On PostgreSQL `now()`, the start of the caller's transaction;
    on SQLite (one host) SQLite's own reading of the time."""
    if s.get_bind().dialect.name == "postgresql":
        value = s.scalar(select(func.now()))
    else:
        value = datetime.fromisoformat(
            str(s.scalar(select(func.strftime("%Y-%m-%d %H:%M:%f", "now"))))
        )
    assert isinstance(value, datetime)
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


def ping(s: Session) -> None:
    """One round trip to the database (raises if it does not answer)."""
    s.execute(text("SELECT 1"))


def rowcount(result: Any) -> int:
    """Rows an UPDATE or DELETE matched (typed: `Result` does not declare it)."""
    assert isinstance(result, CursorResult)
    return int(result.rowcount)


def upsert(s: Session, model: Any) -> Any:
    """An INSERT on `model` with ON CONFLICT, in the dialect of the session's database
    (PostgreSQL or SQLite): `.on_conflict_do_update(...)` and `.excluded` as both have them."""
    from sqlalchemy.dialects.postgresql import insert as pg_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return (pg_insert if s.get_bind().dialect.name == "postgresql" else sqlite_insert)(model)
