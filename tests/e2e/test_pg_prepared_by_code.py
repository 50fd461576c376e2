"""Prepared statements that code deallocates and prepares again behind the gateway's back,
judged by the server's own log.

A function can run `DEALLOCATE s1` and `PREPARE s1 AS …` through SPI; the name then stands for
another text than the one the client prepared. The trail must never claim the old text for
it: a statement the client Parsed is Parsed again by the gateway right before the client's Bind
(so what runs is what is recorded), and one SQL `PREPARE` made, which cannot be Parsed again,
is recorded with its text unknown (`prepared_unknown`) or refused where a guardrail would have
to read it. Every test reconciles the server's log with the trail (`pglog.reconcile`) and
checks that no event claims the text of a statement the log shows code prepared again.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pggate, pglog
from tests.e2e.conftest import Stack
from tests.e2e.pglog import PgWire, bind, execute, parse, query, sync

PARSED = "select 'parsed' as v"
PREPARED = "PREPARE p AS select 'prepared' as v"
AGAIN = "select reprepare('{name}', $q$select 'reprepared' as v$q$)"


@pytest.fixture(scope="module", autouse=True)
def code(pg: PostgresServer) -> None:
    pggate.create_cursor_code(pg)  # reopen(), reprepare()


@pytest.fixture
def open_window(guarded: Stack, pg: PostgresServer, open_listener: Connect) -> pggate.Window:
    return pggate.Window(pggate.http_events(guarded), pg.log_file)


def _parsed_then_reprepared(client: PgWire) -> list[list[str | None]]:
    """Parse s1, run it, let code prepare s1 again, Bind and run s1 again: the rows."""
    first = client.run(parse("s1", PARSED) + bind("s1") + execute() + sync())
    assert first.rows() == [["parsed"]]
    assert client.run(query(AGAIN.format(name="s1"))).errors == []
    again = client.run(bind("s1") + execute() + sync())
    assert again.tags == "2DCZ"  # the answers to the gateway's Close and Parse never show
    return again.rows()


@pytest.mark.parametrize("guardrails", [True, False])
def test_a_statement_code_prepared_again_runs_the_text_the_client_parsed(
    window: pggate.Window,
    listener: Connect,
    open_listener: Connect,
    guardrails: bool,
) -> None:
    with PgWire((listener if guardrails else open_listener).port) as client:
        rows = _parsed_then_reprepared(client)
        assert rows == [["parsed"]]  # not the function's text: the gateway Parsed it again
        assert client.run(bind("s1") + execute() + sync()).rows() == [["parsed"]]
    trail = window.reconcile()
    runs = [q for q in trail.allowed() if q["request"]["statement"] == PARSED]
    assert len(runs) == 3
    assert all("prepared_unknown" not in q["request"] for q in runs)
    assert pglog.ran(window.log.text()).statements.count(PARSED) == 3


def test_without_guardrails_execute_of_a_statement_code_prepared_again_claims_no_text(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    with PgWire(open_listener.port) as client:
        assert client.run(query(PREPARED)).errors == []
        assert client.run(query("execute p")).rows() == [["prepared"]]
        assert client.run(query(AGAIN.format(name="p"))).errors == []
        assert client.run(query("execute p")).rows() == [["reprepared"]]  # what really ran
        # A Bind of it through the protocol runs the new text too; no text is claimed.
        assert client.run(query(AGAIN.format(name="p"))).errors == []
        assert client.run(bind("p") + execute() + sync()).rows() == [["reprepared"]]
    trail = open_window.reconcile()
    executes = [q for q in trail.allowed() if q["request"]["statement"] == "execute p"]
    assert executes[0]["request"]["prepared"] == {"p": PREPARED}
    assert "prepared" not in executes[1]["request"]
    assert executes[1]["request"]["prepared_unknown"] == {"p": PREPARED}
    [bound] = [q for q in trail.allowed() if q["request"]["statement"] == ""]
    assert bound["request"]["prepared_unknown"] == {"p": PREPARED}
    assert bound["request"]["portal"] == ""


def test_a_guardrail_that_cannot_read_the_statement_refuses_it(
    window: pggate.Window, listener: Connect
) -> None:
    with PgWire(listener.port) as client:
        assert client.run(query(PREPARED)).errors == []
        assert client.run(query(AGAIN.format(name="p"))).errors == []
        [error] = client.run(query("execute p")).errors
        assert error["C"] == "42501"
        assert 'prepared statement "p" may have been deallocated and prepared again' in error["M"]
        assert "PREPARE it again" in error["M"]
        [error] = client.run(bind("p") + execute() + sync()).errors
        assert error["C"] == "42501"
        assert "Parse it again" in error["M"]
        # Prepared again after that code, it is the gateway's to read once more.
        client.run(query("deallocate p"))
        assert client.run(query(PREPARED)).errors == []
        assert client.run(query("execute p")).rows() == [["prepared"]]
    trail = window.reconcile()
    ran = pglog.ran(window.log.text()).statements
    assert ran.count("execute p") == 1  # only once prepared again; nothing else ran p
    assert not [s for s in ran if s.lower().startswith("prepare p as select 'reprepared'")]
    refused = [q for q in trail.queries if q["decision"]["result"] == "deny"]
    assert [q["decision"]["rule"] for q in refused] == ["(unknown prepared statement)"] * 2
    assert all(q["request"]["prepared_unknown"] == {"p": PREPARED} for q in refused)


def test_asyncpg_keeps_its_prepared_statements_behind_guardrails(
    window: pggate.Window, listener: Connect
) -> None:
    """asyncpg prepares every statement it runs and binds it again and again; each run between
    may run code, so each Bind is preceded by the gateway's own Parse, which asyncpg never sees."""

    async def main() -> list[int]:
        conn = await asyncpg.connect(f"postgresql://anyone@127.0.0.1:{listener.port}/pg", ssl=False)
        try:
            seen = []
            for n in range(4):
                seen.append(await conn.fetchval("select $1::int + 1", n))
                await conn.fetchval("select now() is not null")
            return seen
        finally:
            await conn.close()

    assert asyncio.run(main()) == [1, 2, 3, 4]
    trail = window.reconcile()
    runs = [q for q in trail.allowed() if q["request"]["statement"] == "select $1::int + 1"]
    assert len(runs) == 4  # each with its text: the gateway's Parse keeps it proven
    assert all(len(q["request"]["params"]) == 1 for q in runs)


@pytest.mark.parametrize("guardrails", [True, False])
def test_a_statement_sql_prepared_runs_its_query_when_bound_and_so_may_run_code(
    window: pggate.Window, listener: Connect, open_listener: Connect, guardrails: bool
) -> None:
    """Bound through the protocol, `PREPARE rp AS select reopen(…)` runs reopen (PostgreSQL
    logs `execute rp: PREPARE rp AS …`), which re-opens cursor c: c's text is no longer known."""
    declared = "declare c cursor for select 'declared' as v"
    reopen = "PREPARE rp AS select reopen('c', $q$select 'reopened' as v$q$)"
    with PgWire((listener if guardrails else open_listener).port) as client:
        assert client.run(query(f"begin; {declared}")).errors == []
        assert client.run(query(reopen)).errors == []
        assert client.run(bind("rp") + execute() + sync()).rows() == [["1"]]
        fetched = client.run(query("fetch all from c"))
        if guardrails:
            assert fetched.sqlstates == ["42501"]
        else:
            assert fetched.rows() == [["reopened"]]
        client.run(query("rollback"))
    trail = window.reconcile()  # also: no event claims c's old text
    [fetch] = [q for q in trail.queries if q["request"]["statement"] == "fetch all from c"]
    assert fetch["request"]["cursors_unknown"] == {"c": declared}


def test_a_statement_sql_prepared_that_prepares_itself_again_is_not_claimed(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    """Running rp (bound through the protocol) runs the query inside, which prepares rp
    again: the next Bind of rp runs the new text, and the trail must not claim the old one."""
    itself = "PREPARE rp AS select reprepare('rp', $q$select 'reprepared' as v$q$) as v"
    with PgWire(open_listener.port) as client:
        assert client.run(query(itself)).errors == []
        assert client.run(query("begin")).errors == []  # no COMMIT between (it may run code)
        assert client.run(bind("rp") + execute() + sync()).rows() == [["1"]]
        assert client.run(bind("rp") + execute() + sync()).rows() == [["reprepared"]]
        assert client.run(query("commit")).errors == []
    trail = open_window.reconcile()
    first, second = [
        q
        for q in trail.allowed()
        if "portal" in q["request"] or q["request"]["statement"] == itself
    ][-2:]
    assert first["request"]["statement"] == itself
    assert second["request"]["statement"] == ""
    assert second["request"]["prepared_unknown"] == {"rp": itself}


def test_a_sql_prepared_statement_run_through_the_protocol_is_told_from_its_prepare(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    """PostgreSQL logs the Execute of a statement SQL PREPARE made with the PREPARE's own text:
    the log check must pair that line with the Execute's event (here: text unknown), and the
    PREPARE Query's lines with the Query's events (the second one fails: it exists already)."""
    with PgWire(open_listener.port) as client:
        assert client.run(query(PREPARED)).errors == []
        assert client.run(query("select now()")).errors == []
        assert client.run(bind("p") + execute() + sync()).rows() == [["prepared"]]
        assert client.run(query(PREPARED)).sqlstates == ["42P05"]
    trail = open_window.reconcile()
    [unknown] = [q for q in trail.allowed() if q["request"]["statement"] == ""]
    assert unknown["request"]["prepared_unknown"] == {"p": PREPARED}
