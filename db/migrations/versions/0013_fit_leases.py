"""a fit is sent, claimed under a lease and sent again when lost

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 10:30:00

A calibration stayed `fitting` forever when its fit task was lost (a Redis restart, a worker
killed mid-fit): nothing sent it again. A fit now records when it was sent, holds a lease
while a worker fits it, and counts its attempts; the reconciler sends a lost one again and
fails one past its deadline. Fits waiting from before have never been sent, as far as the
reconciler knows: it sends them at its next sweep (a copy of a task still queued is harmless,
the claim is conditional).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('calibrations') as batch:
        batch.add_column(sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column('attempts', sa.Integer(), nullable=False, server_default='0')
        )


def downgrade() -> None:
    with op.batch_alter_table('calibrations') as batch:
        batch.drop_column('attempts')
        batch.drop_column('lease_expires_at')
        batch.drop_column('dispatched_at')
