"""a job's state tells whether every item has a result; failed items say why

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 03:00:00

`succeeded` meant "at least one item has a result": a job with 16 of 20 items failed said it.
Now a job with results and failures ends `partial`, and each failed item carries a kind:
`input` (the item itself) or `engine` (the model or the worker). Jobs that ended `succeeded`
with failures are `partial` now; failed items are sorted by their recorded errors.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# What the worker wrote for failures that were the engine's (written out, not imported).
ENGINE_ERRORS = ("scoring failed:%", "gave up after %", "not run: %")


def upgrade() -> None:
    op.add_column('items', sa.Column('error_kind', sa.String(length=16), nullable=True))
    engine_like = " OR ".join(f"error LIKE '{p}'" for p in ENGINE_ERRORS)
    op.execute(
        f"UPDATE items SET error_kind = CASE WHEN {engine_like} THEN 'engine' ELSE 'input' END "
        "WHERE status = 'failed'"
    )
    op.execute("UPDATE jobs SET state = 'partial' WHERE state = 'succeeded' AND failed > 0")


def downgrade() -> None:
    op.execute("UPDATE jobs SET state = 'succeeded' WHERE state = 'partial'")
    with op.batch_alter_table('items') as batch:
        batch.drop_column('error_kind')
