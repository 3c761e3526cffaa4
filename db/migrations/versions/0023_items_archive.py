"""the dashboard's numbers of item rows erased at the `items` level

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06 21:30:00

An erasure at the `items` level (retention's `items_days`, `DELETE /v1/jobs/{id}?keep=tombstone`
after `content`) deleted the item rows, and the dashboard's figures with them. Each scored row's
numbers now move to this narrow table in the batch that deletes it, and the dashboard reads it
beside `items`. A new, empty table: created in seconds whatever the size of `items`. Code of
the previous release ignores it (`schema_compat.oldest_code` stays 0020); this release's code
on a schema without it leaves `items`-level erasures waiting for the upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0023'
down_revision: str | None = '0022'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ['confidence', 'predicted', 'gold_label', 'correct', 'brier', 'calibration_id', 'id']


def upgrade() -> None:
    big = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
    op.create_table(
        'items_archive',
        sa.Column('id', big, autoincrement=False, nullable=False),
        sa.Column('job_id', sa.String(length=36), nullable=False),
        sa.Column('classifier_id', big, nullable=False),
        sa.Column('calibration_id', big, nullable=True),
        sa.Column('predicted', sa.String(length=200), nullable=True),
        sa.Column('confidence', sa.Double(), nullable=True),
        sa.Column('gold_label', sa.String(length=200), nullable=True),
        sa.Column('correct', sa.Boolean(), nullable=True),
        sa.Column('brier', sa.Double(), nullable=True),
        sa.Column('scored_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_items_archive_dashboard', 'items_archive', ['classifier_id', 'scored_at'], postgresql_include=COLUMNS)
    op.create_index('ix_items_archive_job', 'items_archive', ['job_id'])


def downgrade() -> None:
    op.drop_table('items_archive')
