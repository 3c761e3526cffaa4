"""drift monitors: per classifier thresholds, window, alarm receiver and last state

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06 22:20:00

A new table: seconds at any size. This release's code before it has no drift monitors
(`db.schema.Features`): setting one answers that the database needs this migration.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0025'
down_revision: str | None = '0024'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'drift_monitors',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('classifier', sa.String(length=200), nullable=False),
        sa.Column('thresholds', sa.JSON(), nullable=False),
        sa.Column('window_seconds', sa.Integer(), nullable=False),
        sa.Column('min_items', sa.Integer(), nullable=False),
        sa.Column('webhook_url', sa.Text(), nullable=True),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('state', sa.JSON(), nullable=True),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('tenant', 'classifier', name='uq_drift_monitors_classifier'),
    )


def downgrade() -> None:
    op.drop_table('drift_monitors')
