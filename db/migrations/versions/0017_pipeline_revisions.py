"""a run keeps the pipeline version it started with; edits and set watermarks are revisions

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-03 14:55:00

Editing a pipeline mid-run sent the old source's rows to the new sink and applied the old
source's watermark to the new one. A run now records the definition it started with (its sink
is that one's) and the pipeline's revision, bumped by an edit of the source or sink and by
`PUT /v1/pipelines/{name}/watermark`; a run that ends after a revision leaves the watermark
as the edit set it. A run whose job was scored but whose sink failed is `sink_pending`: the
next run takes that job over instead of reading and scoring its rows again.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('pipelines') as batch:
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.add_column(sa.Column('definition', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('revision', sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column('sink_pending', sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table('pipeline_runs') as batch:
        batch.drop_column('sink_pending')
        batch.drop_column('revision')
        batch.drop_column('definition')
    with op.batch_alter_table('pipelines') as batch:
        batch.drop_column('revision')
