"""What a revision uses to change a large live table without stopping the service.

`concurrent_index` builds an index on PostgreSQL with CREATE INDEX CONCURRENTLY, outside the
revision's transaction, so writes to the table go on while it builds (a plain CREATE INDEX
locks them out for the whole build: hours on a few hundred million items). Such a build cannot
be rolled back and may leave an INVALID index when it fails, so it is made idempotent: an
invalid one is dropped first and a valid one is kept, and the revision can run again. Give it
a revision of its own (nothing else in it), so a failure leaves no half-done schema change.
On SQLite it is a plain CREATE INDEX in the revision's transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


def concurrent_index(name: str, table: str, columns: list[str], **options: Any) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        op.create_index(name, table, columns, **options)
        return
    with op.get_context().autocommit_block():
        invalid = bind.execute(
            sa.text(
                "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = :name AND NOT i.indisvalid"
            ),
            {"name": name},
        ).first()
        if invalid:
            op.execute(sa.text(f'DROP INDEX CONCURRENTLY IF EXISTS "{name}"'))
        op.create_index(
            name, table, columns, postgresql_concurrently=True, if_not_exists=True, **options
        )


def drop_concurrent_index(name: str, table: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        op.drop_index(name, table_name=table)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table_name=table, postgresql_concurrently=True, if_exists=True)
