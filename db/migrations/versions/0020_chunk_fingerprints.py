"""each chunk records the fingerprint of the engine that scored it

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-03 18:50:00

Nothing said which engine (model files, dtype, engine and labelq versions, strategy) scored a
result: two workers on one queue could mix precisions, and a calibration fitted on one's
scores was applied to the other's without a word. A nullable column: chunks scored before
have none.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0020'
down_revision: str | None = '0019'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.add_column(sa.Column('fingerprint', sa.String(length=32), nullable=True))
        batch.add_column(sa.Column('calibration_mismatch', sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chunks') as batch:
        batch.drop_column('calibration_mismatch')
        batch.drop_column('fingerprint')
