"""the dashboard's columns on scored items

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 18:10:00

Each scored item gets its classifier version, predicted label, confidence and scoring time as
columns, and once gold-labelled whether it is right and its Brier score. Adding nullable columns
takes seconds on any size. Existing scored rows are not filled here: that is the backfill
`db.backfills.fill_scored_columns`, which `labelq db upgrade` runs after the schema steps in
short resumable batches, and the reconciler continues (so rows that a worker of the previous
release writes after this revision are filled too). The first release of 0005 filled them here,
in the revision's transaction, holding `items` for hours on a large table. The covering index
is 0006's, built concurrently.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('classifier_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('predicted', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('confidence', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('correct', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('brier', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # Made here by the release that first shipped 0005; 0006 makes it now.
    op.drop_index('ix_items_dashboard', table_name='items', if_exists=True)
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_column('scored_at')
        batch_op.drop_column('brier')
        batch_op.drop_column('correct')
        batch_op.drop_column('confidence')
        batch_op.drop_column('predicted')
        batch_op.drop_column('classifier_id')
