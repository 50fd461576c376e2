"""An attacker's pipelines against the PostgreSQL inspector, judged by the server's own log.

Each test sends raw protocol through `gatehouse connect` to a real PostgreSQL behind a guardrail
that denies DROP, TRUNCATE and unbounded DELETE, then checks three things: what the client saw,
the effect on the database (a sentinel table still exists, still holds its rows), and that the
server's `log_statement=all` log reconciles exactly with the trail (`pglog.reconcile`): every
statement that ran has an allowed `db.query` with exactly its text, and nothing denied ran.
"""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pggate, pglog
from tests.e2e.pggate import Window, rows
from tests.e2e.pglog import PgWire, bind, execute, extended, parse, query, sync

# ---- named statements: recorded is what the server confirmed -------------------------------


def test_a_rejected_reparse_cannot_swap_the_recorded_text(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """Parse s1 (DROP), then Parse s1 again (select 1, 42P05 if s1 existed), then run s1."""
    with PgWire(listener.port) as client:
        first = client.run(parse("s1", f"drop table {sentinel}") + sync())
        assert first.sqlstates == ["42501"]  # denied at Parse: it never reaches the server
        second = client.run(parse("s1", "select 1 as swapped") + sync())
        assert second.errors == []  # s1 did not exist on the server, so this one is s1
        run = client.run(bind("s1") + execute() + sync())
        assert run.errors == []
        assert run.rows() == [["1"]]
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    trail = window.reconcile()
    assert any(s.startswith("drop table") for s in trail.denied())


def test_a_statement_the_server_refused_to_redefine_keeps_its_first_text(
    window: Window, listener: Connect
) -> None:
    """42P05 on a second Parse: the server still runs the first text, the trail must say so."""
    with PgWire(listener.port) as client:
        assert client.run(parse("s2", "select 'first' as which") + sync()).errors == []
        again = client.run(parse("s2", "select 'second' as which") + sync())
        assert again.sqlstates == ["42P05"]
        run = client.run(bind("s2") + execute() + sync())
        assert run.rows() == [["first"]]
        client.run(query("deallocate s2"))
    trail = window.reconcile()
    texts = [q["request"]["statement"] for q in trail.allowed()]
    assert "select 'first' as which" in texts


def test_a_failed_parse_leaves_no_name_behind(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """A Parse the server rejects (syntax error) defines nothing; binding the name is refused."""
    with PgWire(listener.port) as client:
        bad = client.run(parse("s3", "selec 1") + sync())
        # The server's syntax error, or the guard's refusal of text it cannot read.
        assert bad.sqlstates in (["42601"], ["42501"])
        run = client.run(bind("s3") + execute() + sync())
        assert len(run.errors) == 1  # the gateway or the server: s3 does not exist
    window.reconcile()


def test_binding_a_name_the_gateway_never_saw_is_refused(window: Window, listener: Connect) -> None:
    with PgWire(listener.port) as client:
        run = client.run(bind("nobody_parsed_me") + execute() + sync())
        assert len(run.errors) == 1
        assert client.run(query("select 'still usable'")).rows() == [["still usable"]]
    window.reconcile()


def test_a_statement_prepared_in_sql_and_bound_is_recorded_or_refused(
    window: Window, listener: Connect
) -> None:
    """SQL PREPARE, then the extended protocol's Bind of that name: never an empty record."""
    with PgWire(listener.port) as client:
        assert client.run(query("prepare sqlp as select 42 as answer")).errors == []
        run = client.run(bind("sqlp") + execute() + sync())
        assert run.rows() in ([["42"]], [])
        assert client.run(query("execute sqlp")).rows() == [["42"]]
        assert client.run(query("deallocate sqlp")).errors == []
        gone = client.run(bind("sqlp") + execute() + sync())
        assert len(gone.errors) == 1
    window.reconcile()


def test_a_denied_delete_cannot_be_prepared_in_sql_and_run_by_name(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    with PgWire(listener.port) as client:
        prepared = client.run(query(f"prepare wipe as delete from {sentinel}"))
        assert prepared.sqlstates == ["42501"]
        client.run(query("execute wipe"))
        client.run(bind("wipe") + execute() + sync())
    assert rows(pg, sentinel) == 3
    window.reconcile()


def test_a_cursor_declared_in_sql_is_recorded_or_refused_when_executed_as_a_portal(
    window: Window, listener: Connect
) -> None:
    with PgWire(listener.port) as client:
        client.run(query("begin"))
        declared = client.run(
            query("declare cur1 cursor for select g from generate_series(1, 5) g")
        )
        assert declared.errors == []
        client.run(execute("cur1", 2) + sync())
        fetched = client.run(query("fetch 2 from cur1"))
        assert len(fetched.rows()) == 2 or fetched.errors
        client.run(query("close cur1"))
        client.run(query("commit"))
    window.reconcile()


def test_close_then_reparse_of_the_same_name_records_the_new_text(
    window: Window, listener: Connect
) -> None:
    with PgWire(listener.port) as client:
        client.run(parse("s4", "select 'old' as v") + sync())
        client.run(pglog.close("S", "s4") + sync())
        client.run(parse("s4", "select 'new' as v") + sync())
        assert client.run(bind("s4") + execute() + sync()).rows() == [["new"]]
    window.reconcile()


# ---- lexical settings: the parser reads what the server reads ------------------------------

# A character whose second byte is 0x5c (a backslash) in the encoding: a parser that reads the
# bytes as another encoding sees an escaped quote, and a DROP inside the literal.
HIDING = {"SJIS": ("shift_jis", "\u8868"), "GBK": ("gbk", "\u4e57")}  # 表, 乗
HIDDEN_DROP = "select E'{char}'; drop table {table}; --' as hidden"


def hidden_drop(encoding: str, table: str) -> bytes:
    codec, char = HIDING[encoding]
    raw = HIDDEN_DROP.format(char=char, table=table).encode(codec)
    assert raw.count(b"\\") == 1 and raw[raw.index(b"\\") - 1] >= 0x80
    return raw


def refused_before_running(answer: pglog.Answer) -> None:
    """The hidden statement was refused with a clear error: by the guardrail (42501), or by
    ending the session (FATAL) because the gateway will not parse under that encoding."""
    assert answer.errors, answer.tags
    last = answer.errors[-1]
    if last.get("S") == "FATAL":
        assert answer.closed
        assert last["C"] in ("22021", "08P01"), last
        assert "gatehouse" in last["M"], last
    else:
        assert last["C"] == "42501", last


@pytest.mark.parametrize("encoding", ["SJIS", "GBK"])
def test_a_pipelined_client_encoding_switch_cannot_hide_a_drop(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer, encoding: str
) -> None:
    raw = hidden_drop(encoding, sentinel)
    with PgWire(listener.port) as client:
        answer = client.run(query(f"set client_encoding to '{encoding}'") + query(raw), 2)
        refused_before_running(answer)
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    window.reconcile()


def test_client_encoding_from_the_startup_packet_is_the_parsers(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    raw = hidden_drop("SJIS", sentinel)
    with PgWire(listener.port, client_encoding="SJIS") as client:
        answer = client.run(query(raw))
        refused_before_running(answer)
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    window.reconcile()


def test_client_encoding_set_by_set_config_in_an_extended_pipeline(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    raw = hidden_drop("GBK", sentinel)
    with PgWire(listener.port) as client:
        answer = client.run(
            extended("select set_config('client_encoding', 'GBK', false)") + sync() + query(raw),
            2,
        )
        refused_before_running(answer)
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    window.reconcile()


# Code that switches the session to SJIS where no Execute is: a domain's CHECK, which a Bind
# runs when it reads a parameter, and a row trigger, which an extended-protocol COPY runs while
# the server ignores the Syncs sent with its Execute. PostgreSQL reports the change only at
# the next ReadyForQuery, so text behind either, before a Sync, must not be read as UTF-8.
SWITCH_CODE = (
    """create or replace function gh_to_sjis() returns boolean language plpgsql as $$
begin perform set_config('client_encoding', 'SJIS', false); return true; end $$""",
    "create or replace function gh_to_sjis_row() returns trigger language plpgsql as $$ "
    "begin perform gh_to_sjis(); return new; end $$",
    "drop domain if exists gh_switching cascade",
    "create domain gh_switching as text check (gh_to_sjis())",
)
# Valid UTF-8, one harmless SELECT as UTF-8 reads it. As SJIS reads the same bytes, C3 is a
# half-width katakana and 81 5C one double-byte character that swallows the backslash: the
# literal ends, and the data-modifying CTE deletes every row.
HIDDEN_DELETE = (
    "with a as (select E'\u00c1\\'), d as (delete from {table} returning 1) select 1 --') select 1"
)


def test_text_behind_a_bind_whose_parameter_switches_the_encoding_cannot_hide_a_drop(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    pggate.admin(pg, *SWITCH_CODE)
    hidden = HIDDEN_DELETE.format(table=sentinel)
    with PgWire(listener.port) as client:
        assert client.run(parse("chk", "select $1::gh_switching") + sync()).errors == []
        answer = client.run(
            bind("chk", params=["x"]) + parse("", hidden) + bind("") + execute() + sync()
        )
        assert answer.sqlstates == ["22021"], answer.tags  # refused: none of the pipeline ran
        assert answer.errors[0]["M"].startswith("gatehouse: text with a non-ASCII character")
        assert "send a Sync before this statement" in answer.errors[0]["M"]
    assert rows(pg, sentinel) == 3
    window.never_logged("delete from")
    window.reconcile()


def test_text_behind_the_data_of_an_extended_copy_whose_trigger_switches_the_encoding(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    pggate.admin(
        pg,
        *SWITCH_CODE,
        f"create trigger gh_switch before insert on {sentinel} "
        "for each row execute function gh_to_sjis_row()",
    )
    hidden = HIDDEN_DELETE.format(table=sentinel)
    with PgWire(listener.port, timeout=10) as client:
        client.send(extended(f"copy {sentinel} from stdin") + sync())
        assert client.wait_for("G").tag == "G"
        # The row runs the trigger; the Sync above was ignored, so no ReadyForQuery yet.
        client.send(pglog.message(b"d", b"4\n") + pglog.message(b"c", b"") + pglog.flush())
        assert client.wait_for("C").tag == "C"
        answer = client.run(parse("", hidden) + bind("") + execute() + sync())
        # Refused by the gateway, and the session then ended by the agent, which sees the
        # ReadyForQuery report SJIS (sessions through the gateway stay in UTF8).
        assert set(answer.sqlstates) == {"22021"}, answer.tags
        assert all("gatehouse" in error["M"] for error in answer.errors), answer.errors
    assert rows(pg, sentinel) == 4  # the copied row, and nothing deleted
    window.never_logged("delete from")
    window.reconcile()


# With standard_conforming_strings off a backslash escapes a quote; with it on, it does not.
# A parser that wrongly believes "off" sees one harmless literal where the server runs a DROP.
BACKSLASH_DROP = "select 'x\\'; drop table {table}; --' as quoted"


def test_a_reverted_standard_conforming_strings_is_followed(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """SET LOCAL off inside a transaction that rolls back: the server is back to on."""
    with PgWire(listener.port) as client:
        client.run(query("begin"))
        client.run(query("set local standard_conforming_strings = off"))
        client.run(query("rollback"))
        assert client.settings.get("standard_conforming_strings") == "on"
        answer = client.run(query(BACKSLASH_DROP.format(table=sentinel)))
        assert answer.sqlstates == ["42501"]
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    window.reconcile()


def test_a_failed_set_of_standard_conforming_strings_changes_nothing(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """The SET fails (aborted transaction): a parser that applied it anyway would be fooled."""
    with PgWire(listener.port) as client:
        pipeline = (
            query("begin")
            + query("select 1/0")
            + query("set standard_conforming_strings = off")
            + query("rollback")
            + query(BACKSLASH_DROP.format(table=sentinel))
        )
        answer = client.run(pipeline, 5)
        assert answer.sqlstates[-1] == "42501"
    assert rows(pg, sentinel) == 3
    window.never_logged("drop table")
    window.reconcile()


@pytest.mark.parametrize(
    "how",
    ["set", "set_config", "startup"],
)
def test_standard_conforming_strings_off_is_the_parsers_too(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer, how: str
) -> None:
    """With the setting really off, the backslash hides the DROP inside a literal: the server
    runs one harmless select, and the trail records exactly that, allowed."""
    sql = BACKSLASH_DROP.format(table=sentinel)
    params = {"options": "-c standard_conforming_strings=off"} if how == "startup" else {}
    with PgWire(listener.port, **params) as client:
        switch = {
            "set": query("set standard_conforming_strings = off"),
            "set_config": query("select set_config('standard_conforming_strings', 'off', false)"),
            "startup": b"",
        }[how]
        answer = client.run(switch + query(sql), 2 if switch else 1)
        assert client.settings.get("standard_conforming_strings") == "off"
        # Either the gateway reads the literal as the server does, or it refuses what it
        # cannot read that way, with a clear error, before it reaches the server.
        if answer.errors:
            assert answer.sqlstates == [answer.sqlstates[0]]
            assert answer.errors[0]["M"].startswith("gatehouse:")
        else:
            assert answer.rows()[-1] == [f"x'; drop table {sentinel}; --"]
    assert rows(pg, sentinel) == 3
    trail = window.reconcile()
    if not answer.errors:
        assert sql in [q["request"]["statement"] for q in trail.allowed()]
    else:
        window.never_logged("x\\'")


# ---- pipelines ------------------------------------------------------------------------------


def test_a_denied_statement_in_the_middle_of_a_pipeline_stops_all_of_it(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    with PgWire(listener.port) as client:
        pipeline = (
            extended(f"insert into {sentinel} values (10)")
            + extended(f"truncate {sentinel}")
            + extended(f"insert into {sentinel} values (11)")
            + sync()
        )
        answer = client.run(pipeline)
        assert answer.sqlstates == ["42501"]
        assert client.run(query("select 'after'")).rows() == [["after"]]
    assert rows(pg, sentinel) == 3
    window.never_logged("truncate")
    window.never_logged("values (1")
    window.reconcile()


def test_a_denied_statement_after_a_flush_does_not_undo_what_already_ran(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """Flush sends the first part ahead; the denied part is refused; the trail says which ran."""
    with PgWire(listener.port) as client:
        client.send(extended(f"insert into {sentinel} values (20)") + pglog.flush())
        client.send(extended(f"drop table {sentinel}") + sync())
        answer = client.wait(1)
        assert "42501" in answer.sqlstates
    assert rows(pg, sentinel) in (3, 4)
    window.never_logged("drop table")
    window.reconcile()


def test_simple_queries_pipelined_behind_a_denied_one_still_run_and_are_recorded(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    with PgWire(listener.port) as client:
        answer = client.run(
            query("select 'before'") + query(f"drop table {sentinel}") + query("select 'after'"),
            3,
        )
        assert answer.sqlstates == ["42501"]
        assert answer.rows() == [["before"], ["after"]]
    assert rows(pg, sentinel) == 3
    window.reconcile()


# ---- secrets in statement text ---------------------------------------------------------------


def test_role_passwords_never_reach_the_trail_but_reach_the_server(
    window: Window, listener: Connect, pg: PostgresServer
) -> None:
    role = f"secret_{uuid.uuid4().hex[:8]}"
    first, second = f"first-{uuid.uuid4().hex}", f"second-{uuid.uuid4().hex}"
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute("alter role app createrole")
    try:
        with PgWire(listener.port) as client:
            created = client.run(query(f"create role {role} login password '{first}'"))
            assert created.errors == []
            altered = client.run(
                extended(f"alter role {role} with encrypted password '{second}'") + sync()
            )
            assert altered.errors == []
        events = window.events()
        exported = json.dumps(events)
        assert first not in exported and second not in exported
        texts = [q["request"]["statement"] for q in pglog.Trail.of(events).queries]
        assert f"create role {role} login password '***'" in texts
        assert f"alter role {role} with encrypted password '***'" in texts
        window.reconcile()
        # The server got the real password (a direct login, after the window: it logs too).
        with psycopg.connect(pg.dsn(user=role, password=second, database="app")) as conn:
            assert conn.execute("select current_user").fetchone() == (role,)
    finally:
        with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
            conn.execute(f"drop role if exists {role}")
            conn.execute("alter role app nocreaterole")


# ---- cases the differential fuzzer found -----------------------------------------------------


def test_a_refused_parse_after_flushed_describes_does_not_hang_the_session(
    window: Window, listener: Connect
) -> None:
    """Found by tests/e2e/pgfuzz.py: Close and Describe of the unnamed statement, each
    flushed, then a Parse the guard cannot read, under standard_conforming_strings=off."""
    with PgWire(listener.port, timeout=10, options="-c standard_conforming_strings=off") as client:
        for _ in range(3):
            assert client.run(query("select 1")).rows() == [["1"]]
        batch = (
            pglog.close("S", "")
            + pglog.flush()
            + pglog.describe("S", "")
            + pglog.flush()
            + extended("selec 1")
            + pglog.flush()
            + sync()
        )
        answer = client.run(batch)
        assert answer.errors
        assert client.run(query("select 1")).rows() == [["1"]]
    window.reconcile()


def test_a_pipeline_that_waits_for_a_cursor_and_holds_a_denied_statement_runs_none_of_it(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """Found by the fuzzer: Execute of a cursor whose DECLARE is still unanswered makes the
    gateway wait; a denied statement later in the same pipeline must still refuse all of it,
    and the trail must say what, if anything, ran."""
    declare = query("begin; declare fz cursor for select g from generate_series(1, 5) g")
    with PgWire(listener.port, timeout=10) as client:
        answer = client.run(declare + execute("fz") + extended(f"truncate {sentinel}") + sync(), 2)
        assert "42501" in answer.sqlstates
        client.run(query("close fz"))
        client.run(query("commit"))
    assert rows(pg, sentinel) == 3
    window.reconcile()


@pytest.mark.parametrize("refused", ["literal", "denied"])
def test_a_refusal_after_a_failed_describe_and_a_cursor_wait_does_not_hang(
    window: Window, listener: Connect, sentinel: str, refused: str
) -> None:
    """Found by the fuzzer: a DECLARE, then (pipelined) a Describe of a portal that does not
    exist, an Execute of the cursor being declared, and a statement the gateway refuses."""
    declare = query("begin; declare fy cursor for select g from generate_series(1, 5) g")
    pipeline = (
        pglog.describe("P", "nosuch")
        + execute("fy")
        + (
            extended("select E'tab\\there' as escaped")  # refused: 22021 with scs off
            if refused == "literal"
            else extended(f"truncate {sentinel}")  # denied: 42501
        )
        + sync()
    )
    options = {"options": "-c standard_conforming_strings=off"} if refused == "literal" else {}
    with PgWire(listener.port, timeout=5, **options) as client:
        answer = client.run(declare + pipeline, 2)
        assert answer.errors
        client.run(query("rollback"))  # the failed Describe aborted the transaction
        assert client.run(query("select 1")).rows() == [["1"]]
    window.reconcile()


@pytest.mark.parametrize("settings", ["default", "scs_off"])
def test_an_execute_skipped_after_a_failed_reparse_is_not_recorded_as_run(
    window: Window, listener: Connect, settings: str
) -> None:
    """Flushed pieces of one pipeline; the last re-Parse of a name fails (42P05), so the
    server skips the Bind/Execute after it: the trail must not say it ran. (The fuzzer's
    reconciliation once matched the failed event to a log line before a succeeded one.)"""
    options = {"options": "-c standard_conforming_strings=off"} if settings == "scs_off" else {}
    pipeline = (
        pglog.close("S", "")
        + pglog.flush()
        + extended("select 1")
        + pglog.flush()
        + parse("s1", "select 1")
        + bind("s1")
        + execute()
        + pglog.flush()
        + parse("s1", "select 1")
        + bind("s1")
        + execute()
        + pglog.flush()
        + sync()
    )
    with PgWire(listener.port, timeout=10, **options) as client:
        answer = client.run(pipeline)
        assert answer.sqlstates == ["42P05"]
        assert client.run(query("select 1")).rows() == [["1"]]
    trail = window.reconcile()
    outcomes = [trail.result(q) for q in trail.queries]
    assert [r["error"] if r else "none" for r in outcomes] == [None, None, "42P05", None]


def test_the_fuzzers_pipeline_after_a_failed_describe_and_an_encoding_change_does_not_hang(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """Found by tests/e2e/pgfuzz.py (seed run of bench.pgfuzz), replayed batch by batch: a
    Describe of a statement that does not exist fails in the middle of a pipeline the gateway
    must flush (text with a backslash follows it); later, set_config() moves client_encoding
    to SJIS with extended messages holding non-ASCII text pipelined behind it. Every batch must
    get its ReadyForQuery messages, or the session a FATAL; never a silent wait."""
    escaped = "select E'tab\\there' as escaped"
    drop = f"select E'\u4e58'; drop table {sentinel}; --'"
    batches = [
        (
            extended("select 1")
            + pglog.describe("S", "s1")
            + extended(escaped)
            + pglog.flush()
            + extended(escaped, name="s2")
            + bind("q2", "")
            + execute()
            + sync(),
            1,
        ),
        (
            parse("s1", "begin")
            + sync()
            + extended("set client_encoding to 'GBK'")
            + parse("s1", "select * from fuzz_missing_table", "latin-1")
            + bind("s1")
            + execute()
            + execute("", 2)
            + sync()
            + query("selec 1"),
            3,
        ),
        (
            query(f"delete from {sentinel}")
            + query("select set_config('client_encoding', 'SJIS', false)")
            + bind("", "p1")
            + execute("p1", 1)
            + extended(drop, name="s2")
            + sync(),
            3,
        ),
        (query("selec 1"), 1),
        (query(drop), 1),
    ]
    with PgWire(listener.port, timeout=10) as client:
        for wire, readies in batches:
            answer = client.run(wire, readies)
            if answer.closed:
                assert any(e.get("S") == "FATAL" for e in answer.errors)
                break
            assert sum(m.tag == "Z" for m in answer.messages) == readies
    assert rows(pg, sentinel) == 3
    window.reconcile()


@pytest.mark.parametrize("client_kind", ["waits_for_copy_in", "pipelines_everything"])
def test_syncs_the_server_ignores_during_an_extended_copy_leave_nothing_waiting(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer, client_kind: str
) -> None:
    """libpq runs COPY FROM STDIN in the extended protocol as Parse/Bind/Execute/Sync, then the
    data, CopyDone and another Sync. The server ignores a Sync (or Flush) that arrives in
    copy-in mode, so only one ReadyForQuery answers the two: a gateway that expected two would
    wait forever for the second, or hold its own answers behind it."""
    copy = f"copy {sentinel} from stdin"
    with PgWire(listener.port, timeout=10) as client:
        start = extended(copy) + pglog.flush() + sync()
        data = pglog.message(b"d", b"4\n") + pglog.message(b"c", b"") + sync()
        if client_kind == "waits_for_copy_in":
            client.send(start)
            assert client.wait_for("G").tag == "G"
            answer = client.run(data)
        else:
            answer = client.run(start + data)
        assert [m.tag for m in answer.messages][-2:] == ["C", "Z"]
        # Text that is read once every earlier request was answered, then a denied one.
        assert client.run(query("select 'caf\u00e9'")).rows() == [["caf\u00e9"]]
        assert client.run(query(f"truncate {sentinel}")).sqlstates == ["42501"]
        assert client.run(query("select 1")).rows() == [["1"]]
    assert rows(pg, sentinel) == 4
    window.reconcile()


def test_a_query_sent_in_the_middle_of_a_copy_ends_the_session_with_a_fatal(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """The server would fail the copy and swallow the query unanswered; the gateway, which
    would wait for that answer, ends the session with a FATAL instead of hanging."""
    with PgWire(listener.port, timeout=10) as client:
        client.send(query(f"copy {sentinel} from stdin"))
        assert client.wait_for("G").tag == "G"
        answer = client.run(pglog.message(b"d", b"4\n") + query("select 'caf\u00e9'"))
        assert answer.closed
        assert [e["S"] for e in answer.errors] == ["FATAL"]
    assert rows(pg, sentinel) == 3
    window.reconcile()


def test_a_query_pipelined_right_behind_a_copy_ends_the_session_with_a_fatal(
    window: Window, listener: Connect, sentinel: str, pg: PostgresServer
) -> None:
    """Sent in one write before the server started the copy: once it did, the query would be
    swallowed unanswered, so the gateway ends the session with a FATAL instead of waiting."""
    with PgWire(listener.port, timeout=10) as client:
        answer = client.run(query(f"copy {sentinel} from stdin") + query("select 'caf\u00e9'"))
        assert answer.closed
        assert "FATAL" in [e["S"] for e in answer.errors]
    assert rows(pg, sentinel) == 3
    window.reconcile()
