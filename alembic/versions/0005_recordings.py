"""recordings: terminal sessions kept as asciicast v2, vouched for by the hash chain

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 07:00:00.000000

`recording_chunks` holds each interactive session's asciicast v2 text in ordered pieces
(written as the session runs, so memory stays bounded and a crash keeps what was said).
`sessions.recording_seq` points at the result event whose `recording.sha256` covers the whole
recording: replay verifies the pieces against it before it plays anything.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recording_chunks",
        sa.Column("session_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("idx", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("session_id", "idx"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("recording_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("recording_seq")
    op.drop_table("recording_chunks")
