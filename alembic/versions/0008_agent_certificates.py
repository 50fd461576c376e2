"""agent certificates: reusable, expiring join tokens and the agent's current client certificate

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 21:30:00.000000

A join token may now be used N times until it expires (`join_uses_left`, `join_expires_at`);
a token made before this revision and not yet used keeps its one use and never expires, as
before. An agent in production mode holds a short-lived client certificate: the store keeps
the SHA-256 of the current one and of the one it replaced (the replaced one still opens
sessions until it expires, so renewal drops nothing), with serials and expiries for listing.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_TEXT = sqlmodel.sql.sqltypes.AutoString
_TIME = sqlmodel.sql.sqltypes.UTCDateTime


def upgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("join_uses_left", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("join_expires_at", _TIME(), nullable=True))
        batch_op.add_column(sa.Column("cert_fingerprint", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("cert_serial", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("cert_not_after", _TIME(), nullable=True))
        batch_op.add_column(sa.Column("prev_cert_fingerprint", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("prev_cert_not_after", _TIME(), nullable=True))
        batch_op.create_index("ix_agents_cert_fingerprint", ["cert_fingerprint"], unique=True)
        batch_op.create_index(
            "ix_agents_prev_cert_fingerprint", ["prev_cert_fingerprint"], unique=True
        )
    op.execute(
        "UPDATE agents SET join_uses_left = 1 "
        "WHERE join_token_hash IS NOT NULL AND enrolled_at IS NULL"
    )


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index("ix_agents_prev_cert_fingerprint")
        batch_op.drop_index("ix_agents_cert_fingerprint")
        for column in (
            "prev_cert_not_after",
            "prev_cert_fingerprint",
            "cert_not_after",
            "cert_serial",
            "cert_fingerprint",
            "join_expires_at",
            "join_uses_left",
        ):
            batch_op.drop_column(column)
