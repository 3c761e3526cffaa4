"""Alembic, driven from code: `labelq db upgrade` and the test fixtures call `upgrade`."""

from __future__ import annotations

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


def require_current(url: str) -> None:
    """Refuse to serve a database that `labelq db upgrade` has not brought to the newest
    revision, with one line saying so (not a traceback on the first request)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from db.session import make_engine
    from labelq.errors import LabelqError

    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except Exception as exc:
        raise LabelqError(f"cannot reach the database at {url.split('@')[-1]}: {exc}") from None
    finally:
        engine.dispose()
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    if current != head:
        raise LabelqError(
            f"the database at {url.split('@')[-1]} is at revision {current or 'none'}, not "
            f"{head}: run `labelq db upgrade`",
            field="database_url",
        )


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (the newest by default), one transaction per
    revision: a revision that fails is rolled back whole and leaves the ones before it done,
    and the next upgrade starts from there. On SQLite too: its DDL runs inside the revision's
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
        with engine.connect() as connection:
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
