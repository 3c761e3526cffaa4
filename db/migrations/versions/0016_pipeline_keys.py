"""the source keys a SQL pipeline read and delivered, by content digest

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 14:40:00

A run read rows past its watermark only: a row whose id (or timestamp) was taken before a
later one committed, but which committed after the run, was skipped for good. A run now
re-reads an overlap window behind the watermark; this table tells it which of those keys it
already delivered unchanged, so they are not classified again, and which the engine failed
on (`failures`: read again by key by the next runs, a bounded number of times).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'pipeline_keys',
        sa.Column(
            'pipeline_id',
            sa.BigInteger().with_variant(sa.Integer(), 'sqlite'),
            sa.ForeignKey('pipelines.id', ondelete='CASCADE'),
            primary_key=True,
        ),
        sa.Column('key', sa.String(512), primary_key=True),
        sa.Column('digest', sa.String(64), nullable=False),
        sa.Column('delivered_digest', sa.String(64), nullable=True),
        sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False, server_default='0'),
    )
    op.create_index('ix_pipeline_keys_run_id', 'pipeline_keys', ['run_id'])


def downgrade() -> None:
    op.drop_index('ix_pipeline_keys_run_id', table_name='pipeline_keys')
    op.drop_table('pipeline_keys')
