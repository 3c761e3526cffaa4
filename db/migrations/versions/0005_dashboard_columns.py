"""the dashboard's columns on scored items

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 18:10:00

Each scored item gets its classifier version, predicted label, confidence and scoring time as
columns, and once gold-labelled whether it is right and its Brier score, under one covering index
(without job_id: a narrow index stays in the buffer cache; job filters use the job's own index).
Existing scored rows are filled from their result JSON in batches of 2,000 by id (their scoring
time: the job's finish, else start, else creation time), so a large table is not read at once.
"""

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ['confidence', 'predicted', 'gold_label', 'correct', 'brier', 'calibration_id']
BATCH = 2000


def upgrade() -> None:
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.add_column(sa.Column('classifier_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True))
        batch_op.add_column(sa.Column('predicted', sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column('confidence', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('correct', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('brier', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True))
    _fill()
    op.create_index('ix_items_dashboard', 'items', ['classifier_id', 'scored_at'], unique=False, postgresql_include=COLUMNS)


def _fill() -> None:
    bind = op.get_bind()
    items = sa.table(
        'items',
        sa.column('id', sa.BigInteger()),
        sa.column('job_id', sa.String()),
        sa.column('status', sa.String()),
        sa.column('result', sa.JSON()),
        sa.column('gold_label', sa.String()),
        sa.column('classifier_id', sa.BigInteger()),
        sa.column('predicted', sa.String()),
        sa.column('confidence', sa.Double()),
        sa.column('correct', sa.Boolean()),
        sa.column('brier', sa.Double()),
        sa.column('scored_at', sa.DateTime(timezone=True)),
    )
    jobs = sa.table(
        'jobs',
        sa.column('id', sa.String()),
        sa.column('classifier_id', sa.BigInteger()),
        sa.column('created_at', sa.DateTime(timezone=True)),
        sa.column('started_at', sa.DateTime(timezone=True)),
        sa.column('finished_at', sa.DateTime(timezone=True)),
    )
    when = sa.func.coalesce(jobs.c.finished_at, jobs.c.started_at, jobs.c.created_at)
    after = 0
    while True:
        rows = bind.execute(
            sa.select(items.c.id, items.c.result, items.c.gold_label, jobs.c.classifier_id, when)
            .join(jobs, jobs.c.id == items.c.job_id)
            .where(items.c.id > after, items.c.status == 'succeeded', items.c.result.is_not(None))
            .order_by(items.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            return
        bind.execute(
            sa.update(items).where(items.c.id == sa.bindparam('item_id')),
            [_columns(*row) for row in rows],
        )
        after = rows[-1][0]


def _columns(item_id: int, result: Any, gold: str | None, classifier_id: int, when: Any) -> dict[str, Any]:
    # Written out here, not imported: a migration must do the same thing whatever the code
    # becomes later (labelq.dashboard.score_columns and gold_columns).
    if isinstance(result, str):
        result = json.loads(result)
    probs = result.get('probs') or {}
    return {
        'item_id': item_id,
        'classifier_id': classifier_id,
        'predicted': result.get('label'),
        'confidence': result.get('confidence'),
        'correct': None if gold is None else result.get('label') == gold,
        'brier': sum((p - (k == gold)) ** 2 for k, p in probs.items()) if gold is not None and probs else None,
        'scored_at': when,
    }


def downgrade() -> None:
    op.drop_index('ix_items_dashboard', table_name='items', postgresql_include=COLUMNS)
    with op.batch_alter_table('items', schema=None) as batch_op:
        batch_op.drop_column('scored_at')
        batch_op.drop_column('brier')
        batch_op.drop_column('correct')
        batch_op.drop_column('confidence')
        batch_op.drop_column('predicted')
        batch_op.drop_column('classifier_id')
