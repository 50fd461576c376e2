"""`gatehouse exec` against a real PostgreSQL through a real control plane and agent."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import time
import uuid

import psycopg

from devenv.stack import GATEHOUSE, REPO
from tests.e2e.conftest import PG_PASSWORD, Stack


def marker() -> str:
    return f"m{uuid.uuid4().hex[:12]}"


def test_exec_prints_the_result_as_a_table(stack: Stack) -> None:
    result = stack.cli("exec", "pg", "-c", "select 41+1 as answer")
    assert result.returncode == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    assert lines[0] == "answer"
    assert lines[1] == "42"
    assert lines[2] == "(1 row)"


def test_exec_json_gives_columns_and_typed_rows(stack: Stack) -> None:
    result = stack.cli(
        "exec", "pg", "-c", "select 41+1 as answer, 'x' as s, null as n, true as b", "-o", "json"
    )
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["columns"] == ["answer", "s", "n", "b"]
    assert document["rows"] == [[42, "x", None, True]]
    assert document["command"] == "SELECT 1"


def test_statement_reaches_the_database_once_and_is_recorded(stack: Stack) -> None:
    tag = marker()
    sql = f"select '{tag}' as tag"
    result = stack.cli("exec", "pg", "-c", sql)
    assert result.returncode == 0, result.stderr
    assert stack.pg.wait_for_statement(sql) == 1
    events = [e for e in stack.events() if e.get("session_id")]
    queries = [e for e in events if e["type"] == "db.query" and e["request"]["statement"] == sql]
    assert len(queries) == 1
    query = queries[0]
    session = [e for e in events if e["session_id"] == query["session_id"]]
    assert [e["type"] for e in session] == ["session.start", "db.query", "db.result", "session.end"]
    db_result = session[2]
    assert db_result["ref"] == query["seq"]
    assert db_result["result"]["rows"] == 1
    assert db_result["result"]["error"] is None
    assert query["decision"] == {"result": "allow"}
    assert query["audit_mode"] == "strict"
    assert query["connection"] == {"name": "pg", "type": "postgres", "agent": "vpc-1"}
    assert query["user"]["sub"] == "admin"


def test_query_event_is_committed_before_the_statement_runs(stack: Stack) -> None:
    tag = marker()
    sql = f"select pg_sleep(3), '{tag}'"
    running = subprocess.Popen(
        [*GATEHOUSE, "exec", "pg", "-c", sql],
        env={**os.environ, **stack.controlplane.cli_env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        with psycopg.connect(stack.pg.admin_dsn(), autocommit=True) as conn:
            while time.monotonic() < deadline:
                active = conn.execute(
                    "select count(*) from pg_stat_activity where state = 'active' and query = %s",
                    (sql,),
                ).fetchone()
                if active and active[0] == 1:
                    break
                time.sleep(0.05)
            else:
                raise AssertionError("the statement never ran")
        # The statement is running at the database right now: its event must already be
        # committed, and its result cannot be.
        events = stack.events()
        queries = [
            e for e in events if e["type"] == "db.query" and e["request"]["statement"] == sql
        ]
        assert len(queries) == 1
        assert not [e for e in events if e.get("ref") == queries[0]["seq"]]
    finally:
        _, err = running.communicate(timeout=30)
    assert running.returncode == 0, err


def test_database_error_exits_1_with_sqlstate(stack: Stack) -> None:
    result = stack.cli("exec", "pg", "-c", "select * from nope")
    assert result.returncode == 1
    assert 'relation "nope" does not exist' in result.stderr
    assert "42P01" in result.stderr
    error = [e for e in stack.events() if e["type"] == "db.result"][-1]["result"]
    assert error["error"] == "42P01"


def test_unknown_connection_is_named(stack: Stack) -> None:
    result = stack.cli("exec", "nope", "-c", "select 1")
    assert result.returncode == 1
    assert "no connection named 'nope'" in result.stderr


def test_secrets_never_appear_in_events_or_logs(stack: Stack) -> None:
    assert stack.cli("exec", "pg", "-c", "select 1").returncode == 0
    export = stack.cli("audit", "export").stdout
    assert PG_PASSWORD not in export
    assert PG_PASSWORD not in stack.controlplane.log()
    assert PG_PASSWORD not in stack.agent.log()
    assert stack.controlplane.token not in export


def test_a_password_the_server_echoes_in_an_error_is_not_recorded(stack: Stack) -> None:
    """PostgreSQL's syntax errors quote the token they stopped at: a password typed without
    its quotes, or with one missing, is that token."""
    secret = f"pw{uuid.uuid4().hex[:12]}"
    after = stack.events()[-1]["seq"]
    for sql in (
        f"alter role nobody_x password {secret}",
        f"alter role nobody_x password '{secret}",
    ):
        result = stack.cli("exec", "pg", "-c", sql)
        assert result.returncode == 1
        assert "42601" in result.stderr and secret in result.stderr
    events = stack.events(after)
    results = [e["result"] for e in events if e["type"] == "db.result"]
    assert [r["error"] for r in results] == ["42601", "42601"]
    assert all(r["message"].startswith(("syntax error", "unterminated")) for r in results)
    assert secret not in json.dumps(events)


def test_several_statements_in_one_string_are_one_request(stack: Stack) -> None:
    result = stack.cli("exec", "pg", "-c", "select 1 as a; select 2 as b, 3 as c", "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert [r["rows"] for r in document["results"]] == [[[1]], [[2, 3]]]
    last = [e for e in stack.events() if e["type"] == "db.result"][-1]
    assert last["result"]["rows"] == 2
    assert last["result"]["command"] == "SELECT; SELECT"


def test_audit_export_is_ndjson_in_the_design_shape(stack: Stack) -> None:
    assert stack.cli("exec", "pg", "-c", "select 1").returncode == 0
    events = stack.events()
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1))
    types = {e["type"] for e in events}
    assert {"admin.change", "agent.connect", "session.start", "db.query", "db.result"} <= types
    for event in events:
        for key in ("seq", "id", "time", "type", "prev_hash", "hash"):
            assert key in event, (key, event)
        if event["type"].startswith(("session.", "db.")):
            for key in ("user", "session_id", "connection", "audit_mode", "source"):
                assert key in event, (key, event)
    for previous, event in itertools.pairwise(events):
        assert event["prev_hash"] == previous["hash"]
    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
    assert f"chain intact up to seq {len(events)}" in verified.stdout
