"""tenants and key scopes

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 15:40:00

Existing rows and keys belong to the `default` tenant, and existing keys keep every scope, so
a single-tenant install works as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALL_SCOPES = '["read", "submit", "calibrate", "admin"]'


def upgrade() -> None:
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=64), nullable=False, server_default='default'))
        batch_op.add_column(sa.Column('scopes', sa.JSON(), nullable=False, server_default=sa.text(f"'{ALL_SCOPES}'")))
    with op.batch_alter_table('classifiers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=64), nullable=False, server_default='default'))
        batch_op.drop_constraint('uq_classifiers_name_version', type_='unique')
        batch_op.drop_constraint('uq_classifiers_name_spec_hash', type_='unique')
        batch_op.create_unique_constraint('uq_classifiers_tenant_name_version', ['tenant', 'name', 'version'])
        batch_op.create_unique_constraint('uq_classifiers_tenant_name_hash', ['tenant', 'name', 'spec_hash'])
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('tenant', sa.String(length=64), nullable=False, server_default='default'))
        batch_op.create_index(batch_op.f('ix_jobs_tenant'), ['tenant'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_tenant'))
        batch_op.drop_column('tenant')
    with op.batch_alter_table('classifiers', schema=None) as batch_op:
        batch_op.drop_constraint('uq_classifiers_tenant_name_hash', type_='unique')
        batch_op.drop_constraint('uq_classifiers_tenant_name_version', type_='unique')
        batch_op.create_unique_constraint('uq_classifiers_name_spec_hash', ['name', 'spec_hash'])
        batch_op.create_unique_constraint('uq_classifiers_name_version', ['name', 'version'])
        batch_op.drop_column('tenant')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('scopes')
        batch_op.drop_column('tenant')
