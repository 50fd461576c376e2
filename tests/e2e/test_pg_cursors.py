"""Cursors that code opens or re-opens behind the gateway's back, judged by the server's own log.

A function (or procedure, DO block, trigger) can close a cursor and open another under the same
name; a function can return a cursor it opened. The gateway cannot see what such a cursor
runs, so the trail must never claim a text for it: a FETCH of it is recorded with its text
unknown (`cursors_unknown`) and refused where a guardrail would have to read it; a protocol
Execute of a portal code may have re-opened likewise, its event naming the portal and no text
(PostgreSQL logs the text that runs, which may be the new one).
Every test reconciles the server's log with the trail (`pglog.reconcile`) and checks that no
event claims the text of a cursor the log shows code opened again (`pglog.cursor_claims`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pggate
from tests.e2e.conftest import Stack
from tests.e2e.pglog import PgWire, bind, execute, parse, query, sync

DECLARED = "declare c cursor for select 'declared' as v"
REOPENED = "select 'reopened' as v"

# How the code that re-opens cursor c runs: every way PostgreSQL runs user code.
HOW = {
    "select": f"select reopen('c', $q${REOPENED}$q$)",
    "procedure": f"call reopen_later('c', $q${REOPENED}$q$)",
    "do": f"do $d$ begin perform reopen('c', $q${REOPENED}$q$); end $d$",
    "trigger": f"insert into reopens values ('c', $q${REOPENED}$q$)",
}


@pytest.fixture(scope="module", autouse=True)
def code(pg: PostgresServer) -> None:
    pggate.create_cursor_code(pg)


@pytest.fixture
def open_window(guarded: Stack, pg: PostgresServer, open_listener: Connect) -> pggate.Window:
    return pggate.Window(pggate.http_events(guarded), pg.log_file)


@pytest.fixture(params=sorted(HOW))
def how(request: pytest.FixtureRequest) -> Iterator[str]:
    yield HOW[request.param]


def test_without_guardrails_the_fetch_runs_and_the_trail_claims_no_text(
    open_window: pggate.Window, open_listener: Connect, how: str
) -> None:
    with PgWire(open_listener.port) as client:
        assert client.run(query(f"begin; {DECLARED}")).errors == []
        assert client.run(query(how)).errors == []
        fetched = client.run(query("fetch all from c"))
        assert fetched.rows() == [["reopened"]]  # what really ran
        client.run(query("commit"))
    trail = open_window.reconcile()
    [fetch] = [q for q in trail.allowed() if q["request"]["statement"] == "fetch all from c"]
    assert "cursors" not in fetch["request"]
    assert fetch["request"]["cursors_unknown"] == {"c": DECLARED}


def test_a_guardrail_that_cannot_read_the_cursor_refuses_its_fetch(
    window: pggate.Window, listener: Connect, how: str
) -> None:
    with PgWire(listener.port) as client:
        assert client.run(query(f"begin; {DECLARED}")).errors == []
        assert client.run(query(how)).errors == []
        refused = client.run(query("fetch all from c"))
        [error] = refused.errors
        assert error["C"] == "42501"
        assert 'cursor "c" may have been closed and opened again' in error["M"]
        assert "DECLARE it again" in error["M"]
        # Declared again, it is the gateway's to read once more.
        client.run(query("close c"))
        assert client.run(query(DECLARED)).errors == []
        assert client.run(query("fetch all from c")).rows() == [["declared"]]
        client.run(query("commit"))
    trail = window.reconcile()
    fetches = [q for q in trail.queries if q["request"]["statement"] == "fetch all from c"]
    assert [q["decision"]["result"] for q in fetches] == ["deny", "allow"]
    assert fetches[0]["decision"]["rule"] == "(unknown cursor)"
    assert fetches[1]["request"]["cursors"] == {"c": DECLARED}


def test_a_cursor_keeps_its_text_through_its_own_fetches(
    window: pggate.Window, listener: Connect
) -> None:
    """psycopg's server-side cursor: DECLARE, FETCH FORWARD n again and again, CLOSE."""
    with PgWire(listener.port) as client:
        client.run(query("begin"))
        client.run(query("declare big cursor for select g from generate_series(1, 5) g"))
        for expected in (["1", "2"], ["3", "4"], ["5"]):
            fetched = client.run(query("fetch forward 2 from big"))
            assert [row[0] for row in fetched.rows()] == expected
        client.run(query("close big"))
        client.run(query("commit"))
    trail = window.reconcile()
    fetches = [q for q in trail.allowed() if q["request"]["statement"].startswith("fetch")]
    assert len(fetches) == 3
    assert all("big" in q["request"]["cursors"] for q in fetches)


@pytest.mark.parametrize("name", [None, "fc"])
def test_a_cursor_a_function_opened_is_read_without_guardrails_and_refused_with(
    window: pggate.Window, listener: Connect, open_listener: Connect, name: str | None
) -> None:
    """`select opens()` returns "<unnamed portal 1>" (or the name it was given)."""
    call = "select opens()" if name is None else f"select opens('{name}')"
    with PgWire(open_listener.port) as client:
        client.run(query("begin"))
        [[cursor]] = client.run(query(call)).rows()
        assert cursor is not None and (name is None or cursor == name)
        fetched = client.run(query(f'fetch all from "{cursor}"'))
        assert fetched.rows() == [["opened by a function"]]
        client.run(query("commit"))
    with PgWire(listener.port) as client:
        client.run(query("begin"))
        [[cursor]] = client.run(query(call)).rows()
        [error] = client.run(query(f'fetch all from "{cursor}"')).errors
        assert error["C"] == "42501"
        assert "was not declared through the gateway" in error["M"]
        assert "RETURNS TABLE or SETOF" in error["M"]
        client.run(query("commit"))
    trail = window.reconcile()  # both sessions
    unknown = [q["request"].get("cursors_unknown") for q in trail.queries]
    assert {cursor: None} in unknown


def _read_then_reopen(client: PgWire, how: str) -> None:
    """Portal c read twice in a transaction, then code (``how``) that re-opens it."""
    client.run(query("begin"))
    bound = parse("", "select g::text from generate_series(1, 4) g") + bind("", "c")
    assert client.run(bound + execute("c", 1) + sync()).rows() == [["1"]]
    assert client.run(execute("c", 1) + sync()).rows() == [["2"]]
    assert client.run(query(how)).errors == []


def test_a_portal_code_may_have_reopened_runs_with_its_text_unknown(
    open_window: pggate.Window, open_listener: Connect, how: str
) -> None:
    """PostgreSQL logs `execute <unnamed>/c: select 'reopened' as v`: the event of that Execute
    claims no text, it names the portal and marks the text it was bound with unknown."""
    with PgWire(open_listener.port) as client:
        _read_then_reopen(client, how)
        assert client.run(execute("c", 1) + sync()).rows() == [["reopened"]]
        client.run(query("rollback"))
    trail = open_window.reconcile()
    [unknown] = [q["request"] for q in trail.allowed() if q["request"]["statement"] == ""]
    assert unknown["portal"] == "c"
    assert unknown["cursors_unknown"] == {"c": "select g::text from generate_series(1, 4) g"}


def test_a_guardrail_that_cannot_read_a_portal_refuses_its_execute(
    window: pggate.Window, listener: Connect, how: str
) -> None:
    with PgWire(listener.port) as client:
        _read_then_reopen(client, how)
        [error] = client.run(execute("c", 1) + sync()).errors
        assert error["C"] == "42501"
        assert 'portal "c" may have been closed and opened again' in error["M"]
        assert "Bind it again after that code" in error["M"]
        client.run(query("rollback"))
    ran = window.log.ran()
    assert REOPENED not in ran.statements + ran.continued
    trail = window.reconcile()
    [denied] = [q for q in trail.queries if q["decision"]["result"] == "deny"]
    assert denied["decision"]["rule"] == "(unknown cursor)"
    assert denied["request"]["portal"] == "c"


async def _iterate(port: int, between: str) -> list[int]:
    """asyncpg reads a cursor 50 rows at a time (one Execute of its portal each) and runs
    another statement every 50 rows."""
    conn = await asyncpg.connect(f"postgresql://anyone@127.0.0.1:{port}/pg", ssl=False)
    try:
        seen: list[int] = []
        async with conn.transaction():
            cursor = conn.cursor("select g from generate_series(1, 200) g", prefetch=50)
            async for record in cursor:
                seen.append(record["g"])
                if len(seen) % 50 == 0:
                    await conn.fetchval(between)
        return seen
    finally:
        await conn.close()


def test_asyncpg_iterating_a_cursor_between_other_statements(
    window: pggate.Window, listener: Connect, open_listener: Connect
) -> None:
    """Without guardrails the cursor is read to its end, its later Executes recorded with the
    text unknown; with them, a `select 1` between keeps it readable (a SELECT of literals runs
    no code), a statement that may call a function makes the next Execute refused."""
    assert asyncio.run(_iterate(open_listener.port, "select now()")) == list(range(1, 201))
    assert asyncio.run(_iterate(listener.port, "select 1")) == list(range(1, 201))
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="Bind it again after that code"):
        asyncio.run(_iterate(listener.port, "select now()"))
    trail = window.reconcile()
    unknown = [q for q in trail.queries if q["request"].get("cursors_unknown")]
    allowed = [q["decision"]["result"] for q in unknown]
    # Open: the four Executes after a statement that may run code (the last one finds the end);
    # guarded: the first is refused.
    assert allowed == ["allow"] * 4 + ["deny"]
    assert {q["request"]["statement"] for q in unknown} == {""}
    assert {next(iter(q["request"]["cursors_unknown"].values())) for q in unknown} == {
        "select g from generate_series(1, 200) g"
    }


def test_a_holdable_cursor_is_not_claimed_after_a_commit_that_ran_code(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    """COMMIT runs deferred triggers and the query of every holdable cursor, to keep its rows:
    code that may open a cursor under the same name."""
    held = "declare h cursor with hold for select 'held' as v"
    with PgWire(open_listener.port) as client:
        client.run(query(f"begin; {held}"))
        client.run(query("commit"))
        assert client.run(query("fetch all from h")).rows() == [["held"]]
        client.run(query("close h"))
    trail = open_window.reconcile()
    [fetch] = [q for q in trail.allowed() if q["request"]["statement"] == "fetch all from h"]
    assert fetch["request"]["cursors_unknown"] == {"h": held}


def test_a_cursor_declared_again_after_the_code_is_claimed_again(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    """Found by the fuzzer (its oracle once matched the first MOVE's log line to the second
    MOVE's event): the same text, unknown after the code, known after the new DECLARE."""
    with PgWire(open_listener.port) as client:
        for code in (HOW["select"], "set work_mem = '8MB'"):
            client.run(query("begin"))
            client.run(query(DECLARED))
            assert client.run(query(code)).errors == []
            assert client.run(query("move 1 in c")).errors == []
            client.run(query("commit"))
    trail = open_window.reconcile()
    moves = [q["request"] for q in trail.allowed() if q["request"]["statement"] == "move 1 in c"]
    assert [m.get("cursors_unknown") for m in moves] == [{"c": DECLARED}, None]
    assert [m.get("cursors") for m in moves] == [None, {"c": DECLARED}]


def test_a_cursor_of_another_session_or_an_ended_transaction_is_unknown(
    open_window: pggate.Window, open_listener: Connect
) -> None:
    """The log check reads each session on its own and drops a transaction's cursors at its
    end: a FETCH of c1 in a new session, or after the COMMIT that ended it, names a cursor the
    gateway never saw declared there (found by the fuzzer: the check had read one log for all
    sessions)."""
    with PgWire(open_listener.port) as client:
        client.run(query("begin"))
        client.run(query("declare c1 cursor for select 'declared' as v"))
    with PgWire(open_listener.port) as client:
        [error] = client.run(query("fetch 1 from c1")).errors
        assert error["C"] == "34000"
        client.run(query("begin"))
        client.run(query("declare c1 cursor for select 'declared' as v"))
        client.run(query("commit"))
        [error] = client.run(query("fetch 1 from c1")).errors
        assert error["C"] == "34000"
    trail = open_window.reconcile()
    unknown = [q["request"].get("cursors_unknown") for q in trail.allowed()]
    assert unknown.count({"c1": None}) == 2
