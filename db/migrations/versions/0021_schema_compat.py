"""what code may run on this schema: the oldest release's revision it still serves

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06 21:00:00

Upgrades are expand/contract: a revision only adds (a nullable column, a table, an index built
concurrently), so a worker of the previous release keeps working on the new schema while pods
roll, and a code rollback finds a schema it can run on. Such old code does not know the new
revision's name, though: this one row tells it whether it is still welcome. `oldest_code` is
the oldest head revision whose code may run here; a revision that removes or changes something
older code uses (a contract step, one release after its code stopped using it) raises it.
`db.migrate.require_current` reads it (see `COMPATIBLE` there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0021'
down_revision: str | None = '0020'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        'schema_compat',
        sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('oldest_code', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    # 0021 and 0022 only add: the release whose head is 0020 runs on them unchanged.
    op.bulk_insert(table, [{'id': 1, 'oldest_code': '0020'}])


def downgrade() -> None:
    op.drop_table('schema_compat')
