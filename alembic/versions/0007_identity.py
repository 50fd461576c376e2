"""identity: delegated tokens re-checked against their person's current identity

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-04 20:40:00.000000

`people` keeps, per OIDC subject, the groups of the newest login the control plane has seen
(an older token never overwrites a newer one) and when the person last authenticated;
delegated tokens are checked against it on every use. `api_tokens.delegated_from` names the
stored token a delegated token was made with, when it was not made with an OIDC login.

Delegated tokens made before this revision carried their person's role (an admin's token was
an admin): they are lowered to `user`, the most a delegated token has unless created with an
explicit `--role admin`.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "people",
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("email", sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column("groups", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("issued_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("subject"),
    )
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("delegated_from", sqlmodel.sql.sqltypes.AutoString(), nullable=True)
        )
    op.execute("UPDATE api_tokens SET role = 'user' WHERE created_by IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("delegated_from")
    op.drop_table("people")
