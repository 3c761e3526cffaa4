"""the scored items whose dashboard columns are still to fill, built concurrently

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06 21:00:00

A partial index of exactly the rows `db.backfills.fill_scored_columns` looks for: succeeded,
with no scoring time. Empty in steady state (this release writes the columns with the result),
it holds the rows a worker of an older release writes, and the rows of an upgrade from before
0005, so the reconciler finds them in a few page reads at any table size. A revision of its own,
built with CREATE INDEX CONCURRENTLY on PostgreSQL (`db.migrations.online`).
"""

from collections.abc import Sequence

import sqlalchemy as sa

from db.migrations.online import concurrent_index, drop_concurrent_index

revision: str = '0022'
down_revision: str | None = '0021'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNFILLED = "status = 'succeeded' AND scored_at IS NULL"


def upgrade() -> None:
    concurrent_index(
        'ix_items_unfilled',
        'items',
        ['id'],
        postgresql_where=sa.text(UNFILLED),
        sqlite_where=sa.text(UNFILLED),
    )


def downgrade() -> None:
    drop_concurrent_index('ix_items_unfilled', 'items')
