"""a pipeline run reading its source holds a lease

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-03 14:45:00

A run stayed `running` forever with no job when the process reading its source was killed
(or labelq's database was away when it tried to record the failure), and every later tick
was `skipped`. A run now holds a lease while it reads, renewed as it goes; the reconciler (and
the next tick) fails a run whose lease ran out. Runs from before have none: one still reading,
with no job, counts as expired once it is a lease older than its start.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.drop_column('lease_expires_at')
