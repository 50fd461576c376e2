"""An agent killed mid-statement: the client gets a protocol error, the session ends as
`agent_lost`, and the statement that was running gets a result saying its outcome is unknown."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import psycopg

from devenv.stack import Connect
from tests.e2e import pglog
from tests.e2e.conftest import Stack
from tests.e2e.pglog import PgWire, query


def running(stack: Stack, text: str) -> bool:
    with psycopg.connect(stack.pg.admin_dsn("app"), autocommit=True) as conn:
        found = conn.execute(
            "select count(*) from pg_stat_activity where query = %s and state = 'active'",
            (text,),
        ).fetchone()
        return bool(found and found[0])


def session_of(events: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    sessions = {
        e["session_id"]
        for e in events
        if e["type"] == "db.query" and e["request"]["statement"] == text
    }
    return [e for e in events if e.get("session_id") in sessions]


def test_an_agent_killed_mid_statement_ends_the_session_as_agent_lost(own_stack: Stack) -> None:
    listener = Connect.create(own_stack.controlplane, "pg", own_stack.base)
    listener.start_and_wait()
    text = "select pg_sleep(30) as agent_lost_probe"
    try:
        with PgWire(listener.port) as client:
            client.send(query(text))
            assert pglog.wait_until(lambda: running(own_stack, text), timeout=10)
            assert own_stack.agent.proc is not None
            started = time.monotonic()
            os.kill(own_stack.agent.proc.pid, signal.SIGKILL)
            own_stack.agent.proc.wait(10)
            answer = client.wait(1)
            waited = time.monotonic() - started
    finally:
        listener.stop()
    # The client hears at once, not after the statement's 30 s: a FATAL naming the agent.
    assert answer.closed
    assert waited < 10
    fatal = [e for e in answer.errors if e.get("S") == "FATAL"]
    assert len(fatal) == 1, answer.errors
    assert fatal[0]["C"] == "08006"
    assert "agent" in fatal[0]["M"]

    def ended() -> list[dict[str, Any]] | None:
        events = session_of(own_stack.events(), text)
        return events if any(e["type"] == "session.end" for e in events) else None

    events = pglog.wait_until(ended)
    assert events, "the session never ended in the trail"
    query_event = next(e for e in events if e["type"] == "db.query")
    results = [e for e in events if e["type"] == "db.result" and e["ref"] == query_event["seq"]]
    assert len(results) == 1
    assert results[0]["result"]["error"] == "unknown"
    assert "agent lost" in results[0]["result"]["message"]
    end = next(e for e in events if e["type"] == "session.end")
    assert end["reason"] == "agent_lost"
    listed = own_stack.cli("sessions", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    rows = {s["id"]: s for s in json.loads(listed.stdout)}
    assert rows[query_event["session_id"]]["end_reason"] == "agent_lost"
