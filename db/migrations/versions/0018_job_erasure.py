"""jobs can be erased: what an erasure asked for and when it was done

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-03 18:05:00

Nothing was ever deleted. A job now records an erasure asked for (`erase`: content, items or
job; by `DELETE /v1/jobs/{id}`, `labelq tenants erase` or retention) and `erased_at` once the
sweep has done it in bounded batches. The partial index that finds the ones still to do is
0019's, built without locking the table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('erase', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('erased_at')
        batch.drop_column('erase')
