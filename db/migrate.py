"""Alembic, driven from code: `labelq db upgrade` and the test fixtures call `upgrade`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


# The oldest schema revision this code runs on: nothing it reads or writes is newer, so it may
# start before `labelq db upgrade` has run (a new pod rolling out ahead of the migration Job) and
# a schema can be rolled forward while it runs. Raise it only when the code starts to need a
# newer revision (a test runs a job on a database at exactly this revision).
OLDEST_SCHEMA = "0020"
# The PostgreSQL advisory lock `labelq db upgrade` holds (a constant of labelq's own).
UPGRADE_LOCK = 0x6C6162656C71  # "labelq"


@dataclass(frozen=True)
class Compatibility:
    """Whether this code may serve a database at `current`; `note` says what an operator should
    know (behind or ahead of this code), `error` why it may not."""

    current: str | None
    head: str
    note: str | None = None
    error: str | None = None


def compatibility(current: str | None, oldest_code: str | None, url: str = "") -> Compatibility:
    """The documented range: this code runs on every revision from `OLDEST_SCHEMA` up to its
    own head, and on a newer one (a later release upgraded the database: a rollback, or an old
    pod restarting mid-rollout) as long as that schema's `schema_compat.oldest_code` is a
    revision this code knows, at or before its head."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config(url or "sqlite://"))
    head = script.get_current_head()
    assert head is not None
    order = [rev.revision for rev in reversed(list(script.walk_revisions()))]  # base first
    where = f" at {url.split('@')[-1]}" if url else ""
    if current is None:
        return Compatibility(
            current, head, error=f"the database{where} has no schema: run `labelq db upgrade`"
        )
    if current in order:
        if order.index(current) < order.index(OLDEST_SCHEMA):
            return Compatibility(
                current,
                head,
                error=f"the database{where} is at revision {current}; this code needs at least "
                f"{OLDEST_SCHEMA} (its newest is {head}): run `labelq db upgrade`",
            )
        note = None
        if current != head:
            note = (
                f"the database{where} is at revision {current}, behind this code's {head}: it "
                "runs on it; run `labelq db upgrade` when ready"
            )
        return Compatibility(current, head, note=note)
    if oldest_code in order and order.index(oldest_code) <= order.index(head):
        return Compatibility(
            current,
            head,
            note=f"the database{where} is at revision {current}, newer than this code's {head}: "
            f"it serves code from revision {oldest_code} on, so this release runs on it",
        )
    return Compatibility(
        current,
        head,
        error=f"the database{where} is at revision {current}, which a newer release made and "
        f"which needs code of revision {oldest_code or 'newer than ' + head}; this code's newest "
        f"is {head}: run that release, or restore a backup from before it",
    )


def require_current(url: str) -> str | None:
    """Refuse to serve a database outside this code's compatible range (`compatibility`), with
    one line saying so (not a traceback on the first request). Returns a note to print when the
    database is behind or ahead of this code but within the range."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import inspect, text

    from db.session import make_engine
    from labelq.errors import LabelqError

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            oldest_code = None
            if inspect(connection).has_table("schema_compat"):
                oldest_code = connection.execute(
                    text("SELECT oldest_code FROM schema_compat WHERE id = 1")
                ).scalar()
    except Exception as exc:
        raise LabelqError(f"cannot reach the database at {url.split('@')[-1]}: {exc}") from None
    finally:
        engine.dispose()
    verdict = compatibility(current, oldest_code, url)
    if verdict.error:
        raise LabelqError(verdict.error, field="database_url")
    return verdict.note


def backfill(url: str, batch: int = 2000) -> int:
    """Run the data backfills (`db.backfills`) to the end: one short transaction a batch, so
    the service goes on meanwhile and a run cut off anywhere is continued by the next one (or
    by the reconciler). Returns the rows filled."""
    from db import backfills
    from db.session import make_engine, make_sessionmaker

    engine = make_engine(url)
    try:
        return backfills.run(make_sessionmaker(engine).begin, batch, None)
    finally:
        engine.dispose()


@contextmanager
def _one_at_a_time(engine: Any) -> Iterator[None]:
    """On PostgreSQL, one `labelq db upgrade` at a time (every API pod runs one as it starts):
    the others wait, then find the revisions done. The lock is a session-level advisory lock
    on a connection of its own, freed when it closes, even if this process dies. A waiter
    polls with `pg_try_advisory_lock` and holds no transaction between tries: one waiting in
    `pg_advisory_lock` would be a transaction that the holder's CREATE INDEX CONCURRENTLY
    waits for, a deadlock."""
    if engine.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as lock:
        try_lock = text("SELECT pg_try_advisory_lock(:key)")
        while not lock.execute(try_lock, {"key": UPGRADE_LOCK}).scalar():
            time.sleep(0.5)
        try:
            yield
        finally:
            lock.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": UPGRADE_LOCK})


def upgrade(url: str, revision: str = "head", *, fill: bool = True, batch: int = 2000) -> int:
    """Bring the database at `url` to `revision` (the newest by default), one transaction per
    revision: a revision that fails is rolled back whole and leaves the ones before it done,
    and the next upgrade starts from there. Then, at the head and unless `fill` is off, the
    data backfills in short batches (`backfill`), outside every revision's transaction.
    Returns the rows backfilled. On SQLite too: its DDL runs inside the revision's
    transaction (the driver would otherwise commit each statement on its own, leaving half a
    revision that the next upgrade cannot pass), with foreign keys off while tables are
    rebuilt, and checked after each revision."""
    from sqlalchemy import event, text

    from db.session import make_engine

    engine = make_engine(url)  # creates the SQLite folder if needed
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _transactional_ddl(dbapi_conn: Any, _: Any) -> None:
            dbapi_conn.execute("PRAGMA foreign_keys=OFF")  # before any transaction begins
            dbapi_conn.isolation_level = None  # the driver begins nothing on its own...

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN")  # ...labelq does, DDL included

    try:
        with _one_at_a_time(engine), engine.connect() as connection:
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
            if connection.dialect.name == "sqlite":
                broken = connection.execute(text("PRAGMA foreign_key_check")).all()
                connection.rollback()
                if broken:
                    raise RuntimeError(f"the migration broke foreign keys: {broken[:5]}")
    finally:
        engine.dispose()
    return backfill(url, batch) if fill and revision == "head" else 0
