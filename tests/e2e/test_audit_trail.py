"""The trail holds: tampering is detected, and a statement whose event cannot be committed
never reaches the database."""

from __future__ import annotations

import json
import sqlite3
import uuid

from tests.e2e.conftest import Stack


def store(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.controlplane.data_dir / "gatehouse.db", isolation_level=None)


def test_the_store_itself_refuses_to_change_events(own_stack: Stack) -> None:
    with store(own_stack) as db:
        for sql in ("update audit_events set type = 'x'", "delete from audit_events"):
            try:
                db.execute(sql)
            except sqlite3.DatabaseError as exc:
                assert "append-only" in str(exc)
            else:
                raise AssertionError(f"{sql} was allowed")


def test_tampering_with_one_event_makes_verify_name_its_seq(own_stack: Stack) -> None:
    sql = "select 'the original statement'"
    assert own_stack.cli("exec", "pg", "-c", sql).returncode == 0
    assert own_stack.cli("audit", "verify").returncode == 0
    (target,) = [
        e
        for e in own_stack.events()
        if e["type"] == "db.query" and e["request"]["statement"] == sql
    ]
    with store(own_stack) as db:
        # What an intruder with write access to the database file would do.
        db.execute("drop trigger audit_events_no_update")
        (body,) = db.execute("select body from audit_events where seq = ?", (target["seq"],))
        forged = body[0].replace("the original statement", "a harmless statement")
        db.execute("update audit_events set body = ? where seq = ?", (forged, target["seq"]))

    result = own_stack.cli("audit", "verify")
    assert result.returncode == 1
    assert f"chain broken at seq {target['seq']}" in result.stderr
    assert "altered" in result.stderr

    as_json = own_stack.cli("audit", "verify", "-o", "json")
    assert json.loads(as_json.stdout)["broken"]["seq"] == target["seq"]


def test_deleting_an_event_makes_verify_name_the_gap(own_stack: Stack) -> None:
    assert own_stack.cli("exec", "pg", "-c", "select 1").returncode == 0
    seq = own_stack.events()[-3]["seq"]
    with store(own_stack) as db:
        db.execute("drop trigger audit_events_no_delete")
        db.execute("delete from audit_events where seq = ?", (seq,))
    result = own_stack.cli("audit", "verify")
    assert result.returncode == 1
    assert f"chain broken at seq {seq + 1}" in result.stderr


def test_statement_is_refused_when_its_event_cannot_be_committed(own_stack: Stack) -> None:
    tag = uuid.uuid4().hex[:12]
    sql = f"select 'never-{tag}'"
    with store(own_stack) as db:
        db.execute(
            "create trigger disk_full before insert on audit_events when new.type = 'db.query' "
            "begin select raise(abort, 'disk full'); end"
        )
    refused = own_stack.cli("exec", "pg", "-c", sql)
    assert refused.returncode == 1
    assert "not sent to the database" in refused.stderr
    assert "disk full" in refused.stderr
    assert "58000" in refused.stderr
    assert own_stack.pg.statement_log().count(sql) == 0

    with store(own_stack) as db:
        db.execute("drop trigger disk_full")
    accepted = own_stack.cli("exec", "pg", "-c", sql)
    assert accepted.returncode == 0, accepted.stderr
    assert own_stack.pg.wait_for_statement(sql) == 1
    assert own_stack.cli("audit", "verify").returncode == 0


def test_a_cancel_whose_event_cannot_be_committed_is_not_sent(own_stack: Stack) -> None:
    """A cancel changes what the target does: like a statement, it is committed before it is
    sent. The store refuses db.cancel here, so the statement runs on to its end."""
    import threading
    import time

    import psycopg

    from devenv.stack import Connect

    sql = f"select pg_sleep(3), 'not-cancelled-{uuid.uuid4().hex[:8]}'"
    with store(own_stack) as db:
        db.execute(
            "create trigger no_cancel before insert on audit_events when new.type = 'db.cancel' "
            "begin select raise(abort, 'disk full'); end"
        )
    listener = Connect.create(own_stack.controlplane, "pg", own_stack.base)
    listener.start_and_wait()
    try:
        dsn = f"host=127.0.0.1 port={listener.port} dbname=pg user=x sslmode=disable"
        with psycopg.connect(dsn, autocommit=True) as busy:
            timer = threading.Timer(1.0, busy.cancel)
            timer.start()
            started = time.monotonic()
            row = busy.execute(sql).fetchone()
            timer.join()
            assert time.monotonic() - started >= 3  # it ran to its end: never cancelled
            assert row is not None and row[1].startswith("not-cancelled-")
    finally:
        listener.stop()
    events = own_stack.events()
    assert not [e for e in events if e["type"] == "db.cancel"]
    (query,) = [e for e in events if e["type"] == "db.query" and e["request"]["statement"] == sql]
    (result,) = [e for e in events if e["type"] == "db.result" and e["ref"] == query["seq"]]
    assert result["result"]["error"] is None
    assert "cancel" in own_stack.controlplane.log() and "disk full" in own_stack.controlplane.log()
