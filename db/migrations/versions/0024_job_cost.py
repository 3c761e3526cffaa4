"""what scoring each job cost: engine seconds and prompt tokens

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06 22:10:00

Each chunk adds its engine time (its calls' fair share of the engine's busy time) and its
prompt tokens to its job's, in the transaction that writes its results. Nullable columns: added
in seconds at any size; jobs scored before (or by a worker of an older release) have none.
This release's code runs before this revision too (`db.schema.Features`), recording no cost.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0024'
down_revision: str | None = '0023'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('engine_seconds', sa.Double(), nullable=True))
        batch.add_column(sa.Column('prompt_tokens', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('prompt_tokens')
        batch.drop_column('engine_seconds')
