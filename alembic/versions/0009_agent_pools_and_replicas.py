"""agent pools and replicas: instances of an agent name, and the replicas serving the store

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 10:00:00.000000

An agent name may now be served by several processes (a pool), each enrolled with one use of
the name's join token and holding its own credential: the credential, certificate, version,
host and last-seen move from `agents` to `agent_instances`, which also records the replica
holding each instance's control stream. `replicas` lists the control-plane processes serving
the store, with the address agents dial for their sessions and a heartbeat (ADR 0023, 0024).

An agent enrolled before this revision becomes one instance whose id is the agent's id, so its
stored certificate (or --dev credential) keeps working.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TEXT = sqlmodel.sql.sqltypes.AutoString
_TIME = sqlmodel.sql.sqltypes.UTCDateTime
_MOVED = (
    "credential_hash",
    "version",
    "hostname",
    "last_seen",
    "cert_fingerprint",
    "cert_serial",
    "cert_not_after",
    "prev_cert_fingerprint",
    "prev_cert_not_after",
)


def upgrade() -> None:
    op.create_table(
        "agent_instances",
        sa.Column("id", _TEXT(), nullable=False),
        sa.Column("agent_id", _TEXT(), nullable=False),
        sa.Column("name", _TEXT(), nullable=False),
        sa.Column("hostname", _TEXT(), nullable=False),
        sa.Column("version", _TEXT(), nullable=False),
        sa.Column("enrolled_at", _TIME(), nullable=False),
        sa.Column("last_seen", _TIME(), nullable=True),
        sa.Column("revoked_at", _TIME(), nullable=True),
        sa.Column("credential_hash", _TEXT(), nullable=True),
        sa.Column("cert_fingerprint", _TEXT(), nullable=True),
        sa.Column("cert_serial", _TEXT(), nullable=True),
        sa.Column("cert_not_after", _TIME(), nullable=True),
        sa.Column("prev_cert_fingerprint", _TEXT(), nullable=True),
        sa.Column("prev_cert_not_after", _TIME(), nullable=True),
        sa.Column("replica", _TEXT(), nullable=True),
        sa.Column("connected_at", _TIME(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credential_hash"),
    )
    with op.batch_alter_table("agent_instances", schema=None) as batch_op:
        batch_op.create_index("ix_agent_instances_agent_id", ["agent_id"])
        batch_op.create_index("ix_agent_instances_name", ["name"])
        batch_op.create_index("ix_agent_instances_replica", ["replica"])
        batch_op.create_index(
            "ix_agent_instances_cert_fingerprint", ["cert_fingerprint"], unique=True
        )
        batch_op.create_index(
            "ix_agent_instances_prev_cert_fingerprint", ["prev_cert_fingerprint"], unique=True
        )
    op.create_table(
        "replicas",
        sa.Column("id", _TEXT(), nullable=False),
        sa.Column("advertise", _TEXT(), nullable=False),
        sa.Column("hostname", _TEXT(), nullable=False),
        sa.Column("started_at", _TIME(), nullable=False),
        sa.Column("seen_at", _TIME(), nullable=False),
        sa.Column("stopped_at", _TIME(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute(
        "INSERT INTO agent_instances (id, agent_id, name, hostname, version, enrolled_at, "
        "last_seen, revoked_at, credential_hash, cert_fingerprint, cert_serial, cert_not_after, "
        "prev_cert_fingerprint, prev_cert_not_after) "
        "SELECT id, id, name, hostname, version, enrolled_at, last_seen, revoked_at, "
        "credential_hash, cert_fingerprint, cert_serial, cert_not_after, "
        "prev_cert_fingerprint, prev_cert_not_after FROM agents WHERE enrolled_at IS NOT NULL"
    )
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.drop_index("ix_agents_prev_cert_fingerprint")
        batch_op.drop_index("ix_agents_cert_fingerprint")
        for column in _MOVED:
            batch_op.drop_column(column)


def downgrade() -> None:
    with op.batch_alter_table("agents", schema=None) as batch_op:
        batch_op.add_column(sa.Column("credential_hash", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("version", _TEXT(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("hostname", _TEXT(), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("last_seen", _TIME(), nullable=True))
        batch_op.add_column(sa.Column("cert_fingerprint", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("cert_serial", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("cert_not_after", _TIME(), nullable=True))
        batch_op.add_column(sa.Column("prev_cert_fingerprint", _TEXT(), nullable=True))
        batch_op.add_column(sa.Column("prev_cert_not_after", _TIME(), nullable=True))
        batch_op.create_index("ix_agents_cert_fingerprint", ["cert_fingerprint"], unique=True)
        batch_op.create_index(
            "ix_agents_prev_cert_fingerprint", ["prev_cert_fingerprint"], unique=True
        )
    # One agent is one instance again: the newest enrolled instance keeps the name's
    # credential, the others' stop working (they would knock each other off anyway).
    op.execute(
        "UPDATE agents SET "
        + ", ".join(
            f"{column} = (SELECT i.{column} FROM agent_instances i WHERE i.agent_id = agents.id "
            "AND i.revoked_at IS NULL ORDER BY i.enrolled_at DESC LIMIT 1)"
            for column in _MOVED
            if column not in ("version", "hostname")
        )
    )
    op.drop_table("replicas")
    op.drop_table("agent_instances")
