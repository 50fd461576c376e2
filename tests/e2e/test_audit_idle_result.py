"""A statement's result event reaches the trail though no further statement follows: the
session stays open and idle, and its db.result is exported all the same (ADR 0026)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import psycopg

from tests.e2e.conftest import Stack, way_in


def wait_for_result(stack: Stack, ref: int, timeout: float = 20) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        for event in stack.events(after=ref):
            if event["type"] == "db.result" and event.get("ref") == ref:
                return event
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def test_an_idle_sessions_last_result_is_in_the_trail(stack: Stack) -> None:
    marker = f"idle_{uuid.uuid4().hex[:12]}"
    with way_in("pg-listen", stack) as way, psycopg.connect(way.dsn()) as conn:
        rows = conn.execute(f"SELECT 41 + 1 AS {marker}").fetchall()
        assert rows == [(42,)]
        assert stack.pg.wait_for_statement(f"SELECT 41 + 1 AS {marker}") == 1
        queries = [
            e
            for e in stack.events()
            if e["type"] == "db.query" and marker in e["request"]["statement"]
        ]
        assert len(queries) == 1
        # The connection stays open and sends nothing more while the trail is read.
        result = wait_for_result(stack, queries[0]["seq"])
        assert result is not None, "the idle session's db.result never reached the trail"
        assert result["result"]["rows"] == 1 and result["result"]["error"] is None
        assert result["session_id"] == queries[0]["session_id"]
