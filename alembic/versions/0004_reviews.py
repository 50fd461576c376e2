"""reviews: just-in-time access requests that an access rule's reviewer groups decide

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 09:00:00.000000

One row per request (`gatehouse exec`/`connect` on a connection whose rule has `review:`):
who asked (`requester`, their e-mail and groups, the `actor` of a delegated token), for which
`connection`, `mode` and `rule`, which `reviewer_groups` decide, and the outcome: `status`
pending → approved | denied | expired | cancelled, `decided_by`, `reason`, and `grant_until`,
the end of the approval's TTL, during which the same connection and mode need no new review.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "reviews",
        sa.Column("id", text(), nullable=False),
        sa.Column("requester", text(), nullable=False),
        sa.Column("requester_email", text(), nullable=True),
        sa.Column("requester_groups", text(), nullable=False),
        sa.Column("actor", text(), nullable=True),
        sa.Column("connection", text(), nullable=False),
        sa.Column("mode", text(), nullable=False),
        sa.Column("rule", text(), nullable=False),
        sa.Column("reviewer_groups", text(), nullable=False),
        sa.Column("ttl_seconds", sa.Integer(), nullable=False),
        sa.Column("status", text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("decided_by", text(), nullable=True),
        sa.Column("decided_by_email", text(), nullable=True),
        sa.Column("decided_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("reason", text(), nullable=True),
        sa.Column("grant_until", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_reviews_requester"), ["requester"])
        batch_op.create_index(batch_op.f("ix_reviews_status"), ["status"])


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_reviews_status"))
        batch_op.drop_index(batch_op.f("ix_reviews_requester"))
    op.drop_table("reviews")
