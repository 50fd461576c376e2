"""delegated tokens: the connections a person's token for an AI agent is limited to

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00.000000

A delegated token (`gatehouse tokens create --actor devin`) acts as the person who made it,
with their subject, e-mail and groups copied onto its row, its `actor`, an expiry, and
optionally a list of connection names (globs) it is limited to: `connections`, JSON, NULL
meaning every connection the person may use. `created_by` is the person (its subject).
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("connections", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.add_column(
            sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_api_tokens_created_by"), ["created_by"])


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_created_by"))
        batch_op.drop_column("created_by")
        batch_op.drop_column("connections")
