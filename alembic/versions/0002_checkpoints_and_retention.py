"""audit retention: prune anchors, and append-only triggers with one narrow exception

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 09:00:00.000000

The triggers of 0001 refuse every UPDATE and DELETE on `audit_events`. A prune must remove a
whole old prefix (seq <= S) in one transaction, and nothing else may ever do so. The exception:

* SQLite: the DELETE trigger lets a row go only while a row of `audit_prune_guard` with
  `through_seq >= seq` exists. The prune inserts that row and removes it in its own
  transaction; an INSERT trigger refuses every new event while any guard row exists, so the
  prune's own `audit.prune` event proves the guard is gone before it commits.
* PostgreSQL: the trigger function lets a DELETE of seq <= S through only when the
  transaction-local setting `gatehouse.prune_through` is S (`set_config(..., true)`, i.e.
  `SET LOCAL`), which vanishes at commit or rollback. TRUNCATE, which row triggers do not
  see, is now refused by a statement trigger.

UPDATE stays refused without exception. `audit_anchor` is append-only too. As in 0001, the
triggers stop mistakes and careless tools, not the store's owner: the chain and the signed
checkpoints are what show a deliberate change.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

APPEND_ONLY = "audit events are append-only"


def upgrade() -> None:
    op.create_table(
        "audit_anchor",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("key_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("signature", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("removed", sa.BigInteger(), nullable=False),
        sa.Column("pruned_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("pruned_by", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "audit_prune_guard",
        sa.Column("through_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("through_seq"),
    )
    if op.get_context().dialect.name == "sqlite":
        _sqlite_upgrade()
    else:
        _postgresql_upgrade()


def _sqlite_upgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    op.execute(
        "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
        "WHEN NOT EXISTS (SELECT 1 FROM audit_prune_guard WHERE OLD.seq <= through_seq) "
        f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
    )
    op.execute(
        "CREATE TRIGGER audit_events_no_insert_while_pruning BEFORE INSERT ON audit_events "
        "WHEN EXISTS (SELECT 1 FROM audit_prune_guard) "
        "BEGIN SELECT RAISE(ABORT, 'a prune guard is set: audit events cannot be appended "
        "until it is removed (it must never outlive the prune transaction)'); END"
    )
    for action in ("UPDATE", "DELETE"):
        op.execute(
            f"CREATE TRIGGER audit_anchor_no_{action.lower()} BEFORE {action} ON audit_anchor "
            "BEGIN SELECT RAISE(ABORT, 'audit anchors are append-only'); END"
        )


def _postgresql_upgrade() -> None:
    # The trigger of 0001 (BEFORE UPDATE OR DELETE, FOR EACH ROW) keeps calling this function.
    op.execute(
        "CREATE OR REPLACE FUNCTION gatehouse_audit_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ "
        "DECLARE through text; "
        "BEGIN "
        "IF TG_OP = 'DELETE' THEN "
        "through := current_setting('gatehouse.prune_through', true); "
        "IF coalesce(through, '') <> '' AND OLD.seq <= through::bigint THEN RETURN OLD; END IF; "
        "END IF; "
        f"RAISE EXCEPTION '{APPEND_ONLY}'; "
        "END $$"
    )
    # Row triggers do not fire on TRUNCATE, which 0001 left open.
    op.execute(
        "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_audit_append_only()"
    )
    op.execute(
        "CREATE FUNCTION gatehouse_audit_anchor_append_only() RETURNS trigger "
        "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit anchors are append-only'; END $$"
    )
    op.execute(
        "CREATE TRIGGER audit_anchor_append_only BEFORE UPDATE OR DELETE ON audit_anchor "
        "FOR EACH ROW EXECUTE FUNCTION gatehouse_audit_anchor_append_only()"
    )
    op.execute(
        "CREATE TRIGGER audit_anchor_no_truncate BEFORE TRUNCATE ON audit_anchor "
        "FOR EACH STATEMENT EXECUTE FUNCTION gatehouse_audit_anchor_append_only()"
    )


def downgrade() -> None:
    if op.get_context().dialect.name == "sqlite":
        for name in (
            "audit_anchor_no_update",
            "audit_anchor_no_delete",
            "audit_events_no_insert_while_pruning",
            "audit_events_no_delete",
        ):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute(
            "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END"
        )
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_anchor_no_truncate ON audit_anchor")
        op.execute("DROP TRIGGER IF EXISTS audit_anchor_append_only ON audit_anchor")
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS gatehouse_audit_anchor_append_only()")
        op.execute(
            "CREATE OR REPLACE FUNCTION gatehouse_audit_append_only() RETURNS trigger "
            f"LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$"
        )
    op.drop_table("audit_prune_guard")
    op.drop_table("audit_anchor")
