"""the index of erasures still to do, built concurrently

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-03 18:40:00

A revision of its own, built with CREATE INDEX CONCURRENTLY on PostgreSQL (see
`db.migrations.online`): the jobs table stays writable while it builds, and a build cut off
halfway is dropped and made again by the next upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa

from db.migrations.online import concurrent_index, drop_concurrent_index

revision: str = '0019'
down_revision: str | None = '0018'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = "erase IS NOT NULL AND erased_at IS NULL"


def upgrade() -> None:
    concurrent_index(
        'ix_jobs_erase_pending',
        'jobs',
        ['erase'],
        postgresql_where=sa.text(PENDING),
        sqlite_where=sa.text(PENDING),
    )


def downgrade() -> None:
    drop_concurrent_index('ix_jobs_erase_pending', 'jobs')
