"""idempotency keys per tenant, a webhook secret per tenant, pipelines by operator names

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 02:00:00

- An Idempotency-Key was unique across tenants: one tenant learned whether another had used a
  key, and could take its next one. It is unique per tenant now.
- Webhook events were signed with one secret for every tenant, so any tenant could forge
  another's: each tenant gets a secret of its own (made on first use, rotated through the API),
  and each delivery records whose it is.
- A pipeline named a database URL or a folder path itself; now it names a connection or root
  the operator configured (LABELQ_PIPELINE_CONNECTIONS, LABELQ_PIPELINE_ROOTS). A stored
  pipeline of the old shape is rewritten to name `legacy-<id>-source` (or `-sink`) and
  disabled: the upgrade prints what each name stood for (passwords masked), for the operator to
  configure that name and enable the pipeline again. The URLs themselves are dropped.
"""

import json
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _masked(url: str) -> str:
    # Written out here, not imported: a migration must do the same whatever the code becomes.
    try:
        parts = urlsplit(url)
    except ValueError:
        return '***'
    netloc = parts.netloc
    if '@' in netloc:
        user, _, host = netloc.rpartition('@')
        netloc = f"{user.partition(':')[0]}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, '', ''))


def _legacy(pipeline_id: int, tenant: str, name: str, definition: dict[str, Any]) -> bool:
    changed = False
    for part in ('source', 'sink'):
        target = definition.get(part)
        if not isinstance(target, dict):
            continue
        legacy = f'legacy-{pipeline_id}-{part}'
        if 'url' in target:
            print(f'pipeline {tenant}/{name}: {part} {_masked(str(target.pop("url")))} is now '
                  f'connection {legacy!r}: configure it in LABELQ_PIPELINE_CONNECTIONS, then '
                  'enable the pipeline')
            target['connection'] = legacy
            changed = True
        elif target.get('kind') == 'files' and 'root' not in target:
            print(f'pipeline {tenant}/{name}: {part} folder {target.get("path")} is now root '
                  f'{legacy!r}: configure it in LABELQ_PIPELINE_ROOTS, then enable the pipeline')
            target['root'], target['path'] = legacy, ''
            changed = True
    return changed


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.drop_constraint('jobs_idempotency_key_key', 'jobs', type_='unique')
        op.create_unique_constraint('uq_jobs_tenant_idempotency_key', 'jobs', ['tenant', 'idempotency_key'])
    else:
        naming = {'uq': 'uq_%(table_name)s_%(column_0_name)s'}
        with op.batch_alter_table('jobs', naming_convention=naming, recreate='always') as batch:
            batch.drop_constraint('uq_jobs_idempotency_key', type_='unique')
            batch.create_unique_constraint('uq_jobs_tenant_idempotency_key', ['tenant', 'idempotency_key'])

    op.add_column('webhook_deliveries', sa.Column('tenant', sa.String(length=64), nullable=True))
    op.execute(
        'UPDATE webhook_deliveries SET tenant = '
        '(SELECT jobs.tenant FROM jobs WHERE jobs.id = webhook_deliveries.job_id) '
        'WHERE job_id IS NOT NULL'
    )
    op.execute(
        'UPDATE webhook_deliveries SET tenant = (SELECT pipelines.tenant FROM pipeline_runs '
        'JOIN pipelines ON pipelines.id = pipeline_runs.pipeline_id '
        'WHERE pipeline_runs.id = webhook_deliveries.pipeline_run_id) '
        'WHERE pipeline_run_id IS NOT NULL'
    )
    op.create_table(
        'webhook_secrets',
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('secret', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant'),
    )

    pipelines = sa.table(
        'pipelines',
        sa.column('id', sa.BigInteger),
        sa.column('tenant', sa.String),
        sa.column('name', sa.String),
        sa.column('definition', sa.JSON),
        sa.column('enabled', sa.Boolean),
    )
    for pid, tenant, name, definition in bind.execute(
        sa.select(pipelines.c.id, pipelines.c.tenant, pipelines.c.name, pipelines.c.definition)
    ).all():
        data = json.loads(definition) if isinstance(definition, str) else dict(definition)
        if _legacy(pid, tenant, name, data):
            bind.execute(
                pipelines.update()
                .where(pipelines.c.id == pid)
                .values(definition=data, enabled=False)
            )


def downgrade() -> None:
    # Pipelines keep their names of connections and roots (the URLs are not stored anywhere).
    op.drop_table('webhook_secrets')
    with op.batch_alter_table('webhook_deliveries') as batch:
        batch.drop_column('tenant')
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.drop_constraint('uq_jobs_tenant_idempotency_key', 'jobs', type_='unique')
        op.create_unique_constraint('jobs_idempotency_key_key', 'jobs', ['idempotency_key'])
    else:
        with op.batch_alter_table('jobs', recreate='always') as batch:
            batch.drop_constraint('uq_jobs_tenant_idempotency_key', type_='unique')
            batch.create_unique_constraint('uq_jobs_idempotency_key', ['idempotency_key'])
