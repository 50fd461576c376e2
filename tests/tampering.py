"""What someone with write access to the audit store does (or a store crash): the tests that
show the trail, the writer and the readers catch it."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tampering(db_path: Path) -> Iterator[sqlite3.Connection]:
    """What someone with write access to the store has: a connection, in a transaction, with
    the append-only triggers dropped (put back at the end)."""
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=30)
    try:
        triggers = conn.execute(
            "SELECT name, sql FROM sqlite_master "
            "WHERE type = 'trigger' AND tbl_name = 'audit_events'"
        ).fetchall()
        conn.execute("BEGIN IMMEDIATE")  # a running control plane may be writing
        for name, _ in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        yield conn
        for _, create in triggers:
            conn.execute(create)
        conn.execute("COMMIT")
    finally:
        conn.close()


def rewind(db_path: Path, keep: int) -> None:
    """Drop the newest events, move the head back to the last one kept."""
    with tampering(db_path) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq > ?", (keep,))
        (hash_,) = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (keep,)).fetchone()
        conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", (keep, hash_))
