"""Alembic environment: runs on the connection `db.migrate.upgrade` hands in, or on the URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from db.models import Base
from db.session import make_engine, without_foreign_keys

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # One transaction per revision: a failure rolls back that revision alone, and a
        # revision may step out of it (`op.get_context().autocommit_block()`) to build an
        # index CONCURRENTLY on PostgreSQL, where a large table must stay writable.
        transaction_per_migration=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = make_engine(config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as conn:
        without_foreign_keys(conn)
        _run(conn)
    engine.dispose()
