"""worker loads: each worker's last attempt to load its model (seconds taken, or why not)

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 00:00:00

A new table: seconds at any size. Code before it does not record loads (`db.schema.Features`):
a job's warning then says only that no worker was seen.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0026'
down_revision: str | None = '0025'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'worker_loads',
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('queue', sa.String(length=200), nullable=False),
        sa.Column('model', sa.Text(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('load_seconds', sa.Double(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('tried_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_index('ix_worker_loads_queue', 'worker_loads', ['queue'])


def downgrade() -> None:
    op.drop_index('ix_worker_loads_queue', table_name='worker_loads')
    op.drop_table('worker_loads')
