"""Many sessions on the agent's one multiplexed stream (docs/decisions/0027): a client that
stops reading a large result stalls its own session only. Its target blocks writing (the
session's credit ran out, so the agent stopped reading it) while the other sessions run their
statements in a time bounded by a baseline measured in this test on the same stack."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from devenv.postgres import PostgresServer
from tests.e2e.conftest import PG_PASSWORD, Stack, WayIn, start_stack
from wire.pg import messages as pgm

SESSIONS = 6
STATEMENTS = 150
SLOWDOWN = 5.0
"""How much slower the other sessions may be while one is stalled (2 shared cores)."""
HUGE = "select repeat('x', 8000) from generate_series(1, 200000) as stalled_reader"
"""1.6 GB of rows: far more than any buffer on the way, so the client's stall reaches the target."""


@pytest.fixture(scope="module")
def mux_stack(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("mux"), pg)
    yield started
    started.stop()


def way(stack: Stack) -> WayIn:
    cp = stack.controlplane
    return WayIn("pg-listen", cp.pg_port, cp.token)


def run_sessions(stack: Stack) -> float:
    """Seconds for SESSIONS clients, each on its own session, to run STATEMENTS statements."""
    connections = [psycopg.connect(way(stack).dsn(), autocommit=True) for _ in range(SESSIONS)]
    answers: list[int] = []
    errors: list[BaseException] = []

    def work(conn: psycopg.Connection[tuple[int]]) -> None:
        try:
            for number in range(STATEMENTS):
                row = conn.execute("select %s::int", (number,)).fetchone()
                assert row is not None and row[0] == number
                answers.append(number)
        except BaseException as exc:  # reported by the test, not lost in a thread
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work, args=(c,)) for c in connections]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        for conn in connections:
            conn.close()
    assert not errors, errors
    assert len(answers) == SESSIONS * STATEMENTS
    return elapsed


class StalledClient:
    """A PostgreSQL client spoken by hand that asks for a huge result and never reads it."""

    def __init__(self, stack: Stack) -> None:
        self.sock = socket.create_connection(("127.0.0.1", stack.controlplane.pg_port), 30)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.sendall(pgm.startup_message({"user": "anyone", "database": "pg"}))
        self._until(b"R")  # cleartext password, please
        self.sock.sendall(pgm.password_message(stack.controlplane.token.encode()))
        self._until(b"Z")
        self.sock.sendall(pgm.query(HUGE))  # ... and from here on, nothing is read

    def _until(self, tag: bytes) -> None:
        data = b""
        while tag not in data:  # the handshake is small: a tag byte in it is good enough
            chunk = self.sock.recv(65536)
            assert chunk, f"the gateway closed the session: {data!r}"
            data += chunk

    def close(self) -> None:
        self.sock.close()


def target_state(pg: PostgresServer, needle: str) -> tuple[str, str] | None:
    """(state, wait_event) of the target's backend running a statement containing `needle`."""
    with psycopg.connect(pg.dsn(user="app", password=PG_PASSWORD, database="app")) as conn:
        row = conn.execute(
            "select state, coalesce(wait_event, '') from pg_stat_activity "
            "where query like %s and pid <> pg_backend_pid()",
            (f"%{needle}%",),
        ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def wait_for_target(pg: PostgresServer, needle: str, wanted: tuple[str, str]) -> None:
    deadline = time.monotonic() + 60
    while (state := target_state(pg, needle)) != wanted:
        assert time.monotonic() < deadline, f"the target's backend is {state}, not {wanted}"
        time.sleep(0.05)


def test_a_client_that_stops_reading_does_not_slow_the_other_sessions(
    mux_stack: Stack, pg: PostgresServer
) -> None:
    run_sessions(mux_stack)  # warm: the agent's stream and connections are open
    baseline = run_sessions(mux_stack)
    stalled = StalledClient(mux_stack)
    try:
        # The stall reached the target: it blocks writing rows nobody takes, because the
        # session's credit ran out and the agent stopped reading it (nothing buffers it all).
        wait_for_target(pg, "stalled_reader", ("active", "ClientWrite"))
        during = run_sessions(mux_stack)
        assert target_state(pg, "stalled_reader") == ("active", "ClientWrite")
    finally:
        stalled.close()
    assert during <= SLOWDOWN * baseline, (
        f"{SESSIONS} x {STATEMENTS} statements took {during:.2f} s beside a stalled session, "
        f"{baseline:.2f} s without it"
    )
    # The stalled session ends when its client leaves; the target stops sending.
    wait_for_target_gone(pg, "stalled_reader")


def wait_for_target_gone(pg: PostgresServer, needle: str) -> None:
    deadline = time.monotonic() + 60
    while target_state(pg, needle) is not None:
        assert time.monotonic() < deadline, "the stalled session's target kept running"
        time.sleep(0.05)
