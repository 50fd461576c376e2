"""However a session ends, every request it sent has a result in the trail.

A session can end under a running statement or command: its token is revoked (or its login
expires, the same check), its agent is revoked, or one of its result events cannot be
recorded. Each test starts a long statement or command through the gateway, ends the session
that way while it runs, and checks what the client saw, what the target ran (PostgreSQL's own
statement log, the command's own file) and the trail: the request has exactly one result,
saying its outcome is unknown and why, recorded before the session's end.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from devenv.stack import Connect, spawn
from tests.e2e import pglog
from tests.e2e.conftest import AGENT, POLICY, Stack
from tests.e2e.pglog import PgWire, query

SHELL_POLICY = (
    POLICY
    + """\
  - name: ops
    type: shell
    agent: {agent}
    target: {{run_as: agent, workdir: {workdir}, timeout: 60}}
"""
)


@pytest.fixture(scope="module")
def shell_stack(stack: Stack) -> Stack:
    """The module's stack with a `shell` connection `ops` beside `pg`."""
    applied = stack.apply(SHELL_POLICY.format(agent=AGENT, port=stack.pg.port, workdir=stack.base))
    assert applied.returncode == 0, applied.stderr
    return stack


def delegated_admin(stack: Stack) -> dict[str, Any]:
    """A token made for an AI agent by the dev admin: revocable on its own."""
    created = stack.cli(
        "tokens", "create", "--actor", "bot", "--ttl", "1h", "--role", "admin", "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    token: dict[str, Any] = json.loads(created.stdout)
    return token


def start(stack: Stack, token: str, *args: str) -> subprocess.Popen[str]:
    return spawn(args, env={**stack.controlplane.cli_env, "GATEHOUSE_TOKEN": token})


def ended_by(
    running: subprocess.Popen[str], ready: Any, end: Any, timeout: float = 20
) -> tuple[int, str]:
    """Once `ready()` holds, `end()` the session (`running` is its client): the client's exit
    status and stderr, and how soon after `end()` returned it exited, printed and bounded."""
    since = time.monotonic()
    try:
        assert pglog.wait_until(ready, timeout=20), "the request never started"
        ending = end()
        assert ending.returncode == 0, ending.stderr
        since = time.monotonic()
        _, stderr = running.communicate(timeout=timeout)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    ended = time.monotonic() - since
    print(f"the session ended {ended:.2f} s after `{' '.join(ending.args[-4:])}` returned")
    assert ended < 8  # a token is re-checked every 2 s; never the request's own 30 s
    return running.returncode, stderr


def session_of(stack: Stack, kind: str, predicate: Any) -> list[dict[str, Any]]:
    """The events of the session whose `kind` request matches, once it has ended."""

    def ended() -> list[dict[str, Any]] | None:
        events = stack.events()
        ids = {e["session_id"] for e in events if e["type"] == kind and predicate(e["request"])}
        found = [e for e in events if e.get("session_id") in ids]
        return found if ids and any(e["type"] == "session.end" for e in found) else None

    events = pglog.wait_until(ended)
    assert events, f"no ended session with a matching {kind}"
    return list(events)


def outcome(events: list[dict[str, Any]], kind: str, result: str) -> dict[str, Any]:
    """The one result of the session's one request, recorded before its end."""
    (request,) = [e for e in events if e["type"] == kind]
    results = [e for e in events if e["type"] == result and e["ref"] == request["seq"]]
    assert len(results) == 1, results
    (end,) = [e for e in events if e["type"] == "session.end"]
    assert results[0]["seq"] < end["seq"]
    return results[0]


def test_a_revoked_token_ends_its_session_and_the_running_statement_gets_a_result(
    stack: Stack,
) -> None:
    token = delegated_admin(stack)
    sql = f"select pg_sleep(30), 'revoked-{uuid.uuid4().hex[:8]}'"
    log = pglog.LogWindow(stack.pg.log_file)
    status, stderr = ended_by(
        start(stack, token["secret"], "exec", "pg", "-c", sql),
        lambda: stack.pg.wait_for_statement(sql, timeout=0),
        lambda: stack.cli("tokens", "revoke", token["id"]),
    )
    assert status == 1
    assert "session ended: the token was revoked" in stderr

    events = session_of(stack, "db.query", lambda r: r["statement"] == sql)
    result = outcome(events, "db.query", "db.result")["result"]
    assert result["error"] == "unknown"
    assert result["message"] == (
        "the session ended before the result arrived: the token was revoked"
    )
    (end,) = [e for e in events if e["type"] == "session.end"]
    assert end["reason"] == "the token was revoked" and "results_lost" not in end
    # What PostgreSQL ran is what the trail says was sent: this statement, once.
    assert log.ran().statements == [sql]


def test_a_revoked_agent_ends_its_sessions_and_the_running_statement_gets_a_result(
    own_stack: Stack,
) -> None:
    sql = f"select pg_sleep(30), 'agent-revoked-{uuid.uuid4().hex[:8]}'"
    status, stderr = ended_by(
        start(own_stack, own_stack.controlplane.token, "exec", "pg", "-c", sql),
        lambda: own_stack.pg.wait_for_statement(sql, timeout=0),
        lambda: own_stack.cli("admin", "agents", "revoke", AGENT),
    )
    assert status == 1
    assert "serving this session was revoked" in stderr and "57P01" in stderr

    events = session_of(own_stack, "db.query", lambda r: r["statement"] == sql)
    result = outcome(events, "db.query", "db.result")["result"]
    assert result["error"] == "unknown"
    assert result["message"].endswith(": agent_revoked")
    (end,) = [e for e in events if e["type"] == "session.end"]
    assert end["reason"] == "agent_revoked"
    listed = own_stack.cli("sessions", "list", "-o", "json")
    rows = {s["id"]: s for s in json.loads(listed.stdout)}
    assert rows[end["session_id"]]["end_reason"] == "agent_revoked"


def test_a_lost_result_ends_the_session_and_the_statement_in_flight_still_gets_one(
    own_stack: Stack,
) -> None:
    """The store refuses the first statement's result (a fault of the store, made here by a
    trigger): the session ends at once, the second statement, still running, gets its result,
    and the session's end counts the one that was lost."""
    tag = uuid.uuid4().hex[:8]
    lost, running = f"select 'lose-{tag}'", f"select pg_sleep(30), 'in-flight-{tag}'"
    with store(own_stack) as db:
        db.execute(
            "create trigger lose_result before insert on audit_events "
            "when new.type = 'db.result' and json_extract(new.body, '$.ref') in ("
            "  select seq from audit_events where type = 'db.query'"
            f"  and json_extract(body, '$.request.statement') = {quoted(lost)}) "
            "begin select raise(abort, 'audit disk is full'); end"
        )
    listener = Connect.create(own_stack.controlplane, "pg", own_stack.base)
    listener.start_and_wait()
    log = pglog.LogWindow(own_stack.pg.log_file)
    try:
        with PgWire(listener.port) as client:
            client.send(query(lost) + query(running))  # pipelined: both sent, both recorded
            answer = client.wait(2)
    finally:
        listener.stop()
    fatal = [e for e in answer.errors if e.get("S") == "FATAL"]
    assert len(fatal) == 1 and fatal[0]["C"] == "58000", answer.errors
    assert "audit_lost" in fatal[0]["M"]

    events = session_of(own_stack, "db.query", lambda r: r["statement"] == running)
    queries = {e["request"]["statement"]: e for e in events if e["type"] == "db.query"}
    results = {e["ref"]: e["result"] for e in events if e["type"] == "db.result"}
    assert queries[lost]["seq"] not in results  # the store refused it: counted, not hidden
    in_flight = results[queries[running]["seq"]]
    assert in_flight["error"] == "unknown"
    assert "the session ended before the result arrived: audit_lost" in in_flight["message"]
    (end,) = [e for e in events if e["type"] == "session.end"]
    assert end["reason"].startswith("audit_lost: its db.result could not be recorded")
    assert end["results_lost"] == 1
    assert log.ran().statements == [lost, running]


def test_a_command_of_a_revoked_token_gets_a_result_without_an_exit_status(
    tmp_path: Path, shell_stack: Stack
) -> None:
    token = delegated_admin(shell_stack)
    began, done = tmp_path / "began", tmp_path / "done"
    script = f"echo $$ > {began}; sleep 30; touch {done}"
    status, stderr = ended_by(
        start(shell_stack, token["secret"], "exec", "ops", "--", "sh", "-c", script),
        began.exists,
        lambda: shell_stack.cli("tokens", "revoke", token["id"]),
    )
    assert status == 255
    assert "the token was revoked" in stderr

    events = session_of(shell_stack, "shell.command", lambda r: r.get("argv", [])[-1:] == [script])
    result = outcome(events, "shell.command", "shell.result")["result"]
    assert result["error"] == "unknown" and "exit_code" not in result
    assert result["message"] == (
        "the session ended before the command reported its exit: the token was revoked"
    )
    assert not done.exists()  # it had not finished when the session ended


def store(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.controlplane.data_dir / "gatehouse.db", isolation_level=None)


def quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
