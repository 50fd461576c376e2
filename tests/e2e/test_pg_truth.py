"""What the trail records is what PostgreSQL ran: names of prepared statements and portals, and
the lexical settings under which a text is read, through the real gateway to a real server.

Each test speaks the protocol itself (raw messages over the `connect` listener), then reads
the server's own statement log (`log_statement=all`): a denied statement never appears there,
and every statement that does appear has a `db.query` event with exactly that text
(`pggate.Window.reconcile`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import psycopg
import pytest

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pggate
from tests.e2e.pggate import Window, admin, rows
from tests.e2e.pglog import PgWire, bind, close, execute, parse, query, sync

if TYPE_CHECKING:
    from tests.e2e.conftest import Stack


@pytest.fixture
def tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def statements(window: Window, tag: str) -> list[str]:
    """The recorded statements of this test (a Parse records nothing until it is executed)."""
    return [
        q["request"]["statement"]
        for q in window.trail().queries
        if tag in q["request"]["statement"]
    ]


# ---- names ------------------------------------------------------------------------------------


def test_a_parse_the_server_rejected_does_not_rename_the_statement(
    window: Window, listener: Connect, tag: str
) -> None:
    first = f"select 2 as {tag}"
    with PgWire(listener.port) as client:
        assert client.run(parse("s1", first) + sync()).errors == []
        answer = client.run(parse("s1", f"select 1 as {tag}") + sync())
        assert answer.sqlstates == ["42P05"]
        answer = client.run(bind("s1") + execute() + sync())
        assert answer.errors == []
        assert answer.rows() == [["2"]]
    window.reconcile()
    assert statements(window, tag) == [first]


def test_pipelined_across_syncs_a_name_is_read_after_the_server_answered(
    window: Window, listener: Connect, tag: str
) -> None:
    first, second = f"select 2 as {tag}", f"select 1 as {tag}"
    unnamed = f"select 3 as {tag}"
    # One write: the second Parse fails (42P05), so the Bind runs the first text; the unnamed
    # statement is replaced by a Parse the server accepts, so the Bind after it runs that one.
    data = parse("s1", first) + sync() + parse("s1", second) + sync()
    data += bind("s1") + execute() + sync()
    data += parse("", "select 9") + sync() + parse("", unnamed) + sync() + bind("") + execute()
    with PgWire(listener.port) as client:
        answer = client.run(data + sync(), readies=6)
        assert answer.sqlstates == ["42P05"]
        assert answer.rows() == [["2"], ["3"]]
    window.reconcile()
    assert statements(window, tag) == [first, unnamed]


def test_named_portals_live_until_their_transaction_ends(
    window: Window, listener: Connect, tag: str
) -> None:
    rows_ = f"select generate_series(1, 5) as {tag}"
    with PgWire(listener.port) as client:
        assert client.run(query("BEGIN")).errors == []
        assert client.run(parse("", rows_) + bind("", "p1") + sync()).errors == []
        # Execute with a row limit: the portal is suspended, then resumed in the next pipeline.
        assert "s" in client.run(execute("p1", 2) + sync()).tags
        assert client.run(execute("p1") + sync()).errors == []
        assert client.run(query("COMMIT")).errors == []
        assert client.run(execute("p1") + sync()).sqlstates == ["34000"]
    window.reconcile()


def test_a_denied_parse_is_refused_before_the_server_sees_it(
    window: Window, listener: Connect, sentinel: str, tag: str
) -> None:
    drop = f"drop table {sentinel}"
    safe = f"select 1 as {tag}"
    with PgWire(listener.port) as client:
        assert client.run(parse("s1", drop) + sync()).sqlstates == ["42501"]
        assert client.run(parse("s1", safe) + sync()).errors == []
        assert client.run(bind("s1") + execute() + sync()).errors == []
    window.never_logged("drop table")
    trail = window.reconcile()
    [denied] = [q for q in trail.queries if q["request"]["statement"] == drop]
    assert denied["decision"]["result"] == "deny"


def test_names_the_server_does_not_hold_are_refused(
    window: Window, listener: Connect, tag: str
) -> None:
    with PgWire(listener.port) as client:
        assert client.run(bind(f"{tag}_none") + execute() + sync()).sqlstates == ["26000"]
        assert client.run(execute(f"{tag}_none") + sync()).sqlstates == ["34000"]
        assert client.run(query(f"EXECUTE {tag}_none")).sqlstates == ["26000"]
        # A function may have opened it: what it runs is unknown, and the guardrail must read it.
        [error] = client.run(query(f"FETCH 1 FROM {tag}_none")).errors
        assert error["C"] == "42501"
        assert "was not declared through the gateway" in error["M"]
    window.never_logged(tag)
    assert len(window.reconcile().denied()) == 4


def test_sql_prepare_execute_and_cursors_record_what_runs(
    window: Window, listener: Connect, tag: str
) -> None:
    prepared = f"select $1::int + 1 as {tag}"
    prepare = f"PREPARE {tag}_p(int) AS {prepared}"
    cursor = f"select generate_series(1, 3) as {tag}"
    declare_fetch = f"BEGIN; DECLARE {tag}_c CURSOR FOR {cursor}; FETCH 2 FROM {tag}_c"
    with PgWire(listener.port) as client:
        assert client.run(query(prepare)).errors == []
        # The protocol shares SQL's namespace.
        assert client.run(bind(f"{tag}_p", params=["1"]) + execute() + sync()).rows() == [["2"]]
        # That ran code (its query, a parameter's input), which may have prepared the name
        # again: prepared again, it is known once more.
        assert client.run(query(f"DEALLOCATE {tag}_p; {prepare}")).errors == []
        assert client.run(query(f"EXECUTE {tag}_p(41)")).rows() == [["42"]]
        # So did the EXECUTE: a guardrail cannot read what the name stands for now.
        refused = client.run(bind(f"{tag}_p", params=["1"]) + execute() + sync())
        assert refused.sqlstates == ["42501"]
        assert client.run(query(declare_fetch)).errors == []
        assert client.run(query("COMMIT")).errors == []
        # Ended with its transaction, as far as the gateway knows; code may have opened another.
        assert client.run(query(f"FETCH 1 FROM {tag}_c")).sqlstates == ["42501"]
        assert client.run(query(f"DEALLOCATE {tag}_p")).errors == []
        assert client.run(query(f"EXECUTE {tag}_p(1)")).sqlstates == ["26000"]
    trail = window.reconcile()
    by_text = {q["request"]["statement"]: q for q in trail.queries}
    assert by_text[f"EXECUTE {tag}_p(41)"]["request"]["prepared"] == {f"{tag}_p": prepare}
    assert by_text[declare_fetch]["request"]["cursors"] == {
        f"{tag}_c": f"DECLARE {tag}_c CURSOR FOR {cursor}"
    }


def test_a_name_prepared_twice_in_one_query_records_both_texts(
    window: Window, listener: Connect, tag: str
) -> None:
    """One simple Query, one event: p stood for one text, then for another."""
    first, second = f"PREPARE p AS select 1 as {tag}", f"PREPARE p AS select 2 as {tag}"
    sql = f"{first}; EXECUTE p; DEALLOCATE p; {second}; EXECUTE p; DEALLOCATE p"
    with PgWire(listener.port) as client:
        assert client.run(query(sql)).rows() == [["1"], ["2"]]
    trail = window.reconcile()
    [event] = [q for q in trail.queries if q["request"]["statement"] == sql]
    assert event["request"]["prepared"] == {"p": [first, second]}


@contextlib.contextmanager
def encoded_connection(
    stack: Stack, pg: PostgresServer, tag: str, encoding: str
) -> Iterator[Connect]:
    """A `gatehouse connect` listener for a guarded connection to a database in ``encoding``."""
    admin(pg, f"create database {tag} encoding '{encoding}' template template0 owner app")
    target = f"{{host: 127.0.0.1, port: {pg.port}, database: {tag}, user: app, sslmode: disable}}"
    extra = (
        f"  - name: {tag}\n    type: postgres\n    agent: {stack.agent.name}\n"
        f"    target: {target}\n    secret: {{password: env:PG_PASSWORD}}\n"
        f"    guardrails: [{pggate.RULE}]\n"
    )
    text = pggate.policy(pg.port, stack.agent.name)
    head, rules = text.split("guardrails:\n  - ", 1)
    assert stack.apply(head + extra + "guardrails:\n  - " + rules).returncode == 0
    try:
        with pggate.listening(stack, tag) as process:
            yield process
    finally:
        pggate.guard(stack)
        admin(pg, f"drop database if exists {tag} with (force)")


def test_a_name_the_server_keeps_in_another_encoding_is_not_confused(
    guarded: Stack, pg: PostgresServer, tag: str
) -> None:
    """libpg_query cuts `<62 a>é` to the 62 a's (é is two bytes of UTF-8, past its 63); a
    LATIN1 database keeps both (é is one byte there): the trail claimed `EXECUTE <62 a>` ran the
    second PREPARE while the server ran the first."""
    window = Window(pggate.http_events(guarded), pg.log_file)
    name = "a" * 62
    first = f"PREPARE {name} AS select 1 as {tag}"
    second = f"PREPARE {name}\u00e9 AS select 2 as {tag}"
    with (
        encoded_connection(guarded, pg, tag, "LATIN1") as listener,
        PgWire(listener.port) as client,
    ):
        client.run(query(first))
        client.run(query(second))
        ran = client.run(query(f"EXECUTE {name}"))
    events = [q for q in window.trail().queries if q["request"]["statement"] == f"EXECUTE {name}"]
    [event] = events
    if ran.errors:  # refused: nothing claimed
        assert event["decision"]["result"] == "deny"
    else:
        assert ran.rows() == [["1"]]
        assert event["request"]["prepared"] == {name: first}


def test_protocol_names_one_in_the_database_s_encoding_are_not_confused(
    guarded: Stack, pg: PostgresServer, tag: str
) -> None:
    """EUC_JP holds one character for both U+00A6 and U+FFE4: `s¦` and `s￤` are two names to
    the gateway and one to the server. Closing and Parsing `s￤` again replaced `s¦`, and its
    Bind ran the new text while the trail claimed the old one."""
    window = Window(pggate.http_events(guarded), pg.log_file)
    one, other = "s\u00a6", "s\uffe4"
    first, second = f"select 1 as {tag}", f"select 2 as {tag}"
    with (
        encoded_connection(guarded, pg, tag, "EUC_JP") as listener,
        PgWire(listener.port) as client,
    ):
        client.run(parse(one, first) + sync())
        client.run(close("S", other) + parse(other, second) + sync())
        ran = client.run(bind(one) + execute() + sync())
    if not ran.errors:
        claimed = statements(window, tag)
        assert ran.rows() == [["1"]], f"the server ran {second!r}; the trail says {claimed}"


# ---- lexical settings -------------------------------------------------------------------------


def hidden_drop(table: str, tag: str) -> bytes:
    """UTF-8 reads one string literal (中 then an escaped quote); GBK reads 中's last byte and
    the backslash as one character, so the quote ends the literal and the DROP runs."""
    return f"select E'中\\'; DROP TABLE {table}; --' as {tag}".encode()


def test_a_client_encoding_change_pipelined_in_front_cannot_hide_a_drop(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    with PgWire(listener.port) as client:
        client.send(query("SET client_encoding TO 'GBK'") + query(hidden_drop(sentinel, tag)))
        answer = client.until_closed()  # the agent ends a session that leaves UTF8
    assert "22021" in answer.sqlstates
    assert rows(pg, sentinel) == 3
    window.reconcile()


def test_a_function_that_changes_client_encoding_is_heard_before_the_next_text(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    """The text behind the call waits for its answer, which reports the change: the agent
    ends the session before the text, which GBK would read as a DROP, reaches the server."""
    function = f"f{uuid.uuid4().hex[:10]}"
    admin(
        pg,
        f"create function {function}() returns int language sql as "
        "$$ select length(set_config('client_encoding', 'GBK', false)) * 0 $$",
    )
    try:
        with PgWire(listener.port) as client:
            client.send(query(f"select {function}() as {tag}") + query(hidden_drop(sentinel, tag)))
            answer = client.until_closed()
        assert answer.closed
        assert [e["C"] for e in answer.errors if e["S"] == "FATAL"] == ["22021"]
    finally:
        admin(pg, f"drop function {function}")
    assert rows(pg, sentinel) == 3
    window.reconcile()


BACKSLASH_DROP = "select 'a\\''; DROP TABLE {table}; --' as {tag}"


def test_standard_conforming_strings_off_then_a_backslash_is_refused(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    change = f"select set_config('standard_conforming_strings', 'off', false) as {tag}"
    # With it on (the parser's reading) this is one literal; off, the DROP runs.
    hidden = BACKSLASH_DROP.format(table=sentinel, tag=tag)
    with PgWire(listener.port) as client:
        [error] = client.run(query(change) + query(hidden), readies=2).errors
        assert error["C"] == "22021"
        assert "standard_conforming_strings" in error["M"]
        # The same pipelined in the extended protocol, without a Sync in between.
        data = parse("", change) + bind("") + execute() + parse("", hidden) + bind("")
        assert client.run(data + execute() + sync()).sqlstates == ["22021"]
        assert client.run(query(f"select 'plain' as {tag}")).errors == []
    window.never_logged("DROP TABLE")
    assert rows(pg, sentinel) == 3
    window.reconcile()


def test_a_function_that_changes_a_setting_is_heard_too(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    function = f"f{uuid.uuid4().hex[:10]}"
    admin(
        pg,
        f"create function {function}() returns int language sql as "
        "$$ select length(set_config('standard_conforming_strings', 'off', false)) * 0 $$",
    )
    hidden = BACKSLASH_DROP.format(table=sentinel, tag=tag)
    try:
        with PgWire(listener.port) as client:
            answer = client.run(query(f"select {function}() as {tag}") + query(hidden), 2)
            assert answer.sqlstates == ["22021"]
            # ROLLBACK undoes a SET: the server reports that too, and a backslash reads again.
            assert client.run(query("BEGIN; SET standard_conforming_strings = on")).errors == []
            assert client.run(query("ROLLBACK")).errors == []
            assert client.run(query(hidden)).sqlstates == ["22021"]
            assert client.run(query("SET standard_conforming_strings = on")).errors == []
            assert client.run(query(f"select 'a\\' as {tag}")).errors == []
    finally:
        admin(pg, f"drop function {function}")
    window.never_logged("DROP TABLE")
    window.reconcile()


def test_settings_from_the_startup_options_apply_to_the_first_statement(
    window: Window, listener: Connect, sentinel: str, tag: str
) -> None:
    with PgWire(listener.port, options="-c standard_conforming_strings=off") as client:
        hidden = BACKSLASH_DROP.format(table=sentinel, tag=tag)
        assert client.run(query(hidden)).sqlstates == ["22021"]
        assert client.run(query(f"select 1 as {tag}")).errors == []
    window.never_logged("DROP TABLE")
    window.reconcile()


def loaded_at(pg: PostgresServer) -> object:
    """When the configuration a new session starts with was loaded."""
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        found = conn.execute("select pg_conf_load_time()").fetchone()
    assert found is not None
    return found[0]


@contextlib.contextmanager
def reloaded(pg: PostgresServer, setting: str, value: str) -> Iterator[None]:
    """`ALTER SYSTEM SET setting = value` and a configuration reload, undone afterwards. A
    session that is running applies it right after it reads its next message, and reports it
    only once that statement ran."""

    def reload(change: str) -> None:
        before = loaded_at(pg)
        admin(pg, change, "select pg_reload_conf()")
        deadline = time.monotonic() + 10
        while loaded_at(pg) == before:  # then the postmaster has signalled every session
            assert time.monotonic() < deadline, "the server did not reload its configuration"
            time.sleep(0.05)

    reload(f"alter system set {setting} = '{value}'")
    try:
        yield
    finally:
        reload(f"alter system reset {setting}")


def test_a_configuration_reload_cannot_change_how_names_are_read(
    window: Window, open_listener: Connect, pg: PostgresServer, tag: str
) -> None:
    """Reloaded off, this text deallocates s1 and prepares another s1; read with the setting
    on (all the gateway knows before the server answers), it is one SELECT. Its names depend
    on the setting, so it is refused; s1 still runs what the trail says it does."""
    original = f"select 'original' as {tag}"
    swap = f"select 'a\\''; deallocate s1; prepare s1 as select 'swapped' as {tag}; --'"
    with PgWire(open_listener.port) as client:
        assert client.run(parse("s1", original) + sync()).errors == []
        with reloaded(pg, "standard_conforming_strings", "off"):
            [error] = client.run(query(swap)).errors
            assert error["C"] == "22021"
            assert "E'…'" in error["M"]
            assert client.run(bind("s1") + execute() + sync()).rows() == [["original"]]
            assert client.settings["standard_conforming_strings"] == "off"  # late, but said
    window.reconcile()


def test_a_configuration_reload_cannot_change_the_client_encoding(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    """Inside a transaction a reload would switch the session to GBK before the next text,
    reported after it ran; the agent gives every session client_encoding=UTF8 at startup,
    which a configuration file does not override."""
    with PgWire(listener.port) as client:
        assert client.run(query("begin")).errors == []
        with reloaded(pg, "client_encoding", "GBK"):
            answer = client.run(query(hidden_drop(sentinel, tag)))
            assert answer.errors == []
            assert client.run(query("show client_encoding")).rows() == [["UTF8"]]
        assert client.run(query("commit")).errors == []
    assert rows(pg, sentinel) == 3
    window.reconcile()


def test_role_and_database_settings_apply_from_the_first_statement(
    window: Window, listener: Connect, pg: PostgresServer, sentinel: str, tag: str
) -> None:
    """ALTER ROLE/DATABASE … SET take effect when a session starts, reported with its startup;
    client_encoding stays the agent's UTF8, which a role or database setting does not
    override."""
    admin(
        pg,
        "alter role app set standard_conforming_strings = off",
        "alter database app set client_encoding = 'GBK'",
    )
    try:
        with PgWire(listener.port) as client:
            assert client.settings["standard_conforming_strings"] == "off"
            assert client.settings["client_encoding"] == "UTF8"
            hidden = BACKSLASH_DROP.format(table=sentinel, tag=tag)
            assert client.run(query(hidden)).sqlstates == ["22021"]
            assert client.run(query("set standard_conforming_strings = on")).errors == []
            assert client.run(query(hidden_drop(sentinel, tag))).errors == []
    finally:
        admin(pg, "alter role app reset all", "alter database app reset all")
    assert rows(pg, sentinel) == 3
    window.reconcile()


# ---- limits -----------------------------------------------------------------------------------


def test_a_batch_without_sync_is_bounded(listener: Connect, tag: str) -> None:
    chunk = parse("", f"select '{'x' * 1_000_000}' as {tag}")
    with PgWire(listener.port) as client:
        with contextlib.suppress(OSError):  # the gateway may close while we still send
            for _ in range(40):
                client.send(chunk)
        answer = client.until_closed()
    # (the CLI may add a FATAL of its own when its stream ends while it still sends)
    fatal = answer.errors[0]
    assert fatal["S"] == "FATAL"
    assert "without a Sync" in fatal["M"]
