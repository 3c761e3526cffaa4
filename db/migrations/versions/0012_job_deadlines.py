"""a job has a deadline

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 04:00:00

A job for a queue no worker serves waited forever. A job now carries `expires_at`
(LABELQ_JOB_EXPIRES_AFTER, or the job's own `expires_after`); not ended by then, it ends
`expired` with what it scored. Jobs from before have no deadline.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.execute("UPDATE jobs SET state = 'cancelled' WHERE state = 'expired'")
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('expires_at')
