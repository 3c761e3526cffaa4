"""webhook deliveries are an outbox: claimed under a lease, retried for a time window

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 14:20:00

Deliveries were POSTed inline in the reconciler's sweep, one by one, and dropped after eight
attempts (about 21 minutes). A delivery is now claimed by a deliverer under a lease (two never
POST it at once; one that died mid-request leaves it to the next once the lease runs out) and
retried until `give_up_at` (LABELQ_WEBHOOK_RETRY_WINDOW after it was queued). Deliveries
pending from before get their window from their creation time, when first claimed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.add_column(sa.Column('claimed_by', sa.String(200), nullable=True))
        batch.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('give_up_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.drop_column('give_up_at')
        batch.drop_column('lease_expires_at')
        batch.drop_column('claimed_by')
