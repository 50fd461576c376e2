"""Unmodified PostgreSQL clients through both ways in — `gatehouse connect`'s local port and the
control plane's own `--pg-listen` — each connection one audited session, everything the
protocol offers behaving as on a direct connection."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import psycopg
import pytest

from devenv.postgres import find_pg_bindir
from devenv.stack import Connect
from tests.e2e.conftest import WAYS_IN, Stack, WayIn, psql, way_in


@pytest.fixture(scope="module", params=WAYS_IN)
def listener(request: pytest.FixtureRequest, stack: Stack) -> Iterator[WayIn]:
    with way_in(request.param, stack) as way:
        yield way


def dsn(listener: WayIn, **extra: str) -> str:
    return listener.dsn(**extra)


def queries(stack: Stack, statement: str, after: int = 0) -> list[dict[str, object]]:
    return [
        e
        for e in stack.events(after)
        if e["type"] == "db.query" and e["request"]["statement"] == statement  # type: ignore[index]
    ]


def test_psql_runs_as_the_connections_database_user(stack: Stack, listener: WayIn) -> None:
    result = psql(dsn(listener), "select 41+1, current_user")
    assert result.returncode == 0, result.stderr
    # The database user is the agent's, whatever the client claimed.
    assert result.stdout.strip() == "42|app"


def test_connect_takes_any_password_and_tls_on_the_local_leg(stack: Stack) -> None:
    with way_in("connect", stack) as listener:
        for sslmode in ("disable", "require"):
            result = psql(
                dsn(listener, sslmode=sslmode, password="wrong"), "select 41+1, current_user"
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.strip() == "42|app"


def test_psycopg_extended_protocol_parameters_are_recorded(stack: Stack, listener: WayIn) -> None:
    statement = "select %s::int + 1 as n, %s::text as t"
    after = stack.events()[-1]["seq"]
    with psycopg.connect(dsn(listener)) as conn:
        assert conn.execute(statement, (41, "hé")).fetchone() == (42, "hé")
    (event,) = queries(stack, "select $1::int + 1 as n, $2::text as t", after)
    request = event["request"]
    assert request["protocol"] == "extended"  # type: ignore[index]
    assert request["params"] == ["41", "hé"]  # type: ignore[index]
    assert stack.pg.wait_for_statement("select $1::int + 1 as n, $2::text as t") >= 1


def test_copy_both_ways_and_error_recovery(stack: Stack, listener: WayIn) -> None:
    with psycopg.connect(dsn(listener)) as conn:
        conn.execute("create temp table t(id int, note text)")
        with conn.cursor() as cur:
            with cur.copy("copy t from stdin") as copy:
                for i in range(1000):
                    copy.write_row((i, f"row {i}"))
            with cur.copy("copy t to stdout") as copy:
                rows = sum(1 for _ in copy)
        conn.commit()
        assert rows == 1000
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        conn.rollback()
        assert conn.execute("select count(*) from t").fetchone() == (1000,)
    results = [e for e in stack.events() if e["type"] == "db.result"]
    copies = [r["result"]["copy"] for r in results if "copy" in r["result"]]  # type: ignore[operator,index]
    copy_in, copy_out = copies[-2], copies[-1]
    assert copy_in["direction"] == "in" and copy_in["rows"] == 1000
    assert copy_out["direction"] == "out" and copy_out["rows"] == 1000
    # Each row is "N\trow N\n": the bytes are those of the data, not a guess.
    expected = sum(len(f"{i}\trow {i}\n") for i in range(1000))
    assert copy_in["bytes"] == expected
    assert copy_out["bytes"] > expected


def test_notifications_and_notices_pass_through(listener: WayIn) -> None:
    with psycopg.connect(dsn(listener), autocommit=True) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        conn.execute("do $$ begin raise notice 'hello from the target'; end $$")
        assert notices == ["hello from the target"]
        conn.execute("listen gatehouse_test")
        conn.execute("notify gatehouse_test, 'payload'")
        got = [n.payload for n in conn.notifies(timeout=5, stop_after=1)]
        assert got == ["payload"]


def test_asyncpg_streams_a_large_result(stack: Stack, listener: WayIn) -> None:
    async def main() -> tuple[int, int]:
        conn = await asyncpg.connect(listener.url())
        try:
            rows = await conn.fetch("select g, repeat('x', 200) from generate_series(1, 300000) g")
            blob = await conn.fetchval("select repeat('y', 8 * 1024 * 1024)")
            return len(rows), len(blob)
        finally:
            await conn.close()

    assert asyncio.run(main()) == (300000, 8 * 1024 * 1024)


def test_fifty_concurrent_connections_are_fifty_sessions(stack: Stack, listener: WayIn) -> None:
    tag = f"concurrent-check-{listener.name}"

    def one(i: int) -> int:
        with psycopg.connect(dsn(listener, application_name=f"c{i}")) as conn:
            row = conn.execute(f"select {i} as i, '{tag}'").fetchone()
            assert row is not None
            return int(row[0])

    with ThreadPoolExecutor(50) as pool:
        assert sorted(pool.map(one, range(50))) == list(range(50))
    sessions = {
        e["session_id"]
        for e in stack.events()
        if e["type"] == "db.query" and tag in e["request"]["statement"]  # type: ignore[index]
    }
    assert len(sessions) == 50
    assert stack.cli("audit", "verify").returncode == 0


def test_pgbench_runs_through_the_gateway(stack: Stack, listener: WayIn, tmp_path: Path) -> None:
    pgbench = str(find_pg_bindir() / "pgbench")
    target = dsn(listener)
    init = subprocess.run(
        [pgbench, "-i", "-s", "1", "-q", target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    run = subprocess.run(
        [pgbench, "-S", "-t", "50", "-c", "2", "-M", "extended", target],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "number of failed transactions: 0" in run.stdout


def test_unknown_connection_is_a_fatal_error_for_the_client(stack: Stack, tmp_path: Path) -> None:
    process = Connect.create(stack.controlplane, "nope", tmp_path)
    process.start_and_wait()
    try:
        with pytest.raises(psycopg.OperationalError, match="no connection named 'nope'"):
            psycopg.connect(dsn(WayIn("connect", process.port, "anything")))
    finally:
        process.stop()
    refused = pytest.raises(psycopg.OperationalError, match="no connection named 'nope'")
    with way_in("pg-listen", stack) as listener, refused:
        psycopg.connect(dsn(listener, dbname="nope"))


def test_cancel_reaches_the_right_backend(stack: Stack, listener: WayIn) -> None:
    import threading
    import time

    with (
        psycopg.connect(dsn(listener), autocommit=True) as busy,
        psycopg.connect(dsn(listener), autocommit=True) as other,
    ):
        timer = threading.Timer(1.0, busy.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            busy.execute("select pg_sleep(30)")
        assert time.monotonic() - started < 10
        # The other session was not touched, and the cancelled one goes on.
        assert other.execute("select 1").fetchone() == (1,)
        assert busy.execute("select 2").fetchone() == (2,)
    assert any(e["type"] == "db.cancel" for e in stack.events())


def test_backend_key_given_to_the_client_is_not_the_targets(listener: WayIn) -> None:
    with psycopg.connect(dsn(listener), autocommit=True) as conn:
        real_pid = conn.execute("select pg_backend_pid()").fetchone()
        assert real_pid is not None
        assert conn.info.backend_pid != real_pid[0]


def test_leaving_utf8_ends_the_session(listener: WayIn) -> None:
    # The gateway reads statements as UTF-8; a session the server reads as SJIS could hide a
    # statement from the guardrails, so it ends instead.
    with psycopg.connect(dsn(listener), autocommit=True) as conn:
        with pytest.raises(psycopg.Error, match="must stay in UTF8"):
            conn.execute("set client_encoding = 'SJIS'")
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
