"""an upload holds a lease: a job whose items stopped arriving ends

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 03:30:00

A job's items are stored as they arrive and its chunks cut at the end; an upload cut off (the
API process killed mid-upload) left a job `queued` forever. While it is uploaded a job now
holds a lease (`upload_expires_at`), renewed as its items arrive; the reconciler fails a job
whose lease ran out and gives its Idempotency-Key back. Jobs already stuck so (queued, no
chunks, created over an hour ago) get a lease that has run out, and end at the next sweep.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('upload_expires_at', sa.DateTime(timezone=True), nullable=True))
    jobs = sa.table(
        'jobs',
        sa.column('state', sa.String),
        sa.column('chunks_total', sa.Integer),
        sa.column('created_at', sa.DateTime(timezone=True)),
        sa.column('upload_expires_at', sa.DateTime(timezone=True)),
    )
    op.execute(
        jobs.update()
        .where(jobs.c.state == 'queued', jobs.c.chunks_total == 0)
        .values(upload_expires_at=jobs.c.created_at + sa.text("interval '1 hour'"))
        if op.get_bind().dialect.name == 'postgresql'
        else jobs.update()
        .where(jobs.c.state == 'queued', jobs.c.chunks_total == 0)
        .values(upload_expires_at=sa.func.datetime(jobs.c.created_at, '+1 hour'))
    )


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('upload_expires_at')
