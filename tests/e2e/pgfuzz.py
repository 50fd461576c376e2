"""Differential fuzzing of the PostgreSQL inspector against a real server.

Hypothesis draws random sessions: batches of simple queries and extended-protocol groups
(named and unnamed Parse reusing a few names, Bind/Execute of names parsed, prepared in SQL or
never seen, cursors executed as portals, Close), SQL PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/
CLOSE, transactions, SET of the lexical settings (client_encoding among UTF8/LATIN1/GBK/SJIS,
standard_conforming_strings by SET, SET LOCAL and set_config), statements that fail, and
statements the guardrail denies (DROP, TRUNCATE, unbounded DELETE of a sentinel table, some of
them hidden by an encoding or a backslash). Code the gateway cannot see changes names and
settings too: functions, a procedure, DO blocks and a trigger that close a cursor (or a protocol
portal) and open another by its name, a function that returns a cursor it opened, set_config()
inside a function, ALTER SYSTEM with pg_reload_conf() (the session applies it before its next
message and says so after), ALTER ROLE … SET followed by a new session. Most cases go through
the guarded connection, some through `pg-open`, where a FETCH of a cursor nobody can read runs.
Each batch is written at once, so everything in it is pipelined behind what came before. The
oracle is the server itself: its statement log and the trail must reconcile exactly
(`pglog.reconcile`), no event may claim the text of a cursor the log shows code opened again
(`pglog.cursor_claims`), and through the guarded connection the sentinel must keep its rows.

`run_case` is shared by the bounded test (tests/e2e/test_pg_differential.py) and the long run
(`python -m bench.pgfuzz --examples 5000`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st

from devenv.postgres import PostgresServer
from tests.e2e import pggate, pglog
from tests.e2e.pglog import PgWire

SENTINEL = "fuzz_sentinel"
SCRATCH = "fuzz_scratch"
SENTINEL_ROWS = 3
CODECS = {"UTF8": "utf-8", "LATIN1": "latin-1", "GBK": "gbk", "SJIS": "shift_jis"}
STATEMENT_NAMES = ("", "s1", "s2")
SQL_NAMES = ("q1", "q2")
CURSORS = ("c1", "c2")
PORTALS = ("", "p1", *CURSORS)

ALLOWED = (
    "select 1",
    "select 'é' as accent",
    "select '\u8868\u4e57' as kanji",
    "select E'tab\\there' as escaped",
    "select $d$dollar ' quote$d$ as dollar",
    "select g from generate_series(1, 4) g",
    f"insert into {SCRATCH} values (1)",
    f"delete from {SENTINEL} where false",
    f"select count(*) from {SENTINEL}",
    "select current_setting('client_encoding'), current_setting('standard_conforming_strings')",
)
FAILING = (
    "select 1/0",
    "selec 1",
    "select * from fuzz_missing_table",
    "select 'unterminated",
)
DENIED = (
    f"drop table {SENTINEL}",
    f"truncate {SENTINEL}",
    f"delete from {SENTINEL}",
    f"select 1; drop table {SENTINEL}",
    # Hidden from a parser that reads the wrong encoding (the kanji's second byte is 0x5c) or
    # believes standard_conforming_strings is off while the server has it on.
    f"select E'\u8868'; drop table {SENTINEL}; --'",
    f"select E'\u4e57'; drop table {SENTINEL}; --'",
    f"select 'x\\'; truncate {SENTINEL}; --'",
)
LEXICAL = (
    *(f"set client_encoding to '{name}'" for name in CODECS),
    "reset client_encoding",
    "set standard_conforming_strings = off",
    "set standard_conforming_strings = on",
    "set local standard_conforming_strings = off",
    "select set_config('standard_conforming_strings', 'off', false)",
    "select set_config('standard_conforming_strings', 'on', false)",
    "select set_config('standard_conforming_strings', 'off', true)",
    "select set_config('client_encoding', 'SJIS', false)",
    "set escape_string_warning = off",
)
TRANSACTION = ("begin", "commit", "rollback", "savepoint sp", "rollback to savepoint sp")
# Code that opens cursors (and portals: p1) under names the session uses (pggate.CURSOR_CODE).
REOPEN = "$q$select 'reopened by code' as v$q$"
REOPENING = (
    "select reopen('{name}', {query})",
    "call reopen_later('{name}', {query})",
    "do $d$ begin perform reopen('{name}', {query}); end $d$",
    "insert into reopens values ('{name}', {query})",
)
CODE = (
    *(how.format(name=name, query=REOPEN) for how in REOPENING for name in (*CURSORS, "p1")),
    "select opens()",
    "select opens('c2')",
    'fetch all from "<unnamed portal 1>"',
    'move 1 in "<unnamed portal 2>"',
)
# Settings changed where the session does not see it coming.
LATE_SETTINGS = (
    "select set_setting('standard_conforming_strings', 'off')",
    "select set_setting('standard_conforming_strings', 'on')",
    "select set_setting('client_encoding', 'SJIS')",
    "alter system set standard_conforming_strings = off",
    "alter system set client_encoding = 'GBK'",
    "alter system reset standard_conforming_strings",
    "select pg_reload_conf()",
    "alter role current_user set standard_conforming_strings = off",
    # Names a reload to off reads differently: one SELECT with it on, a DEALLOCATE and a
    # PREPARE of s1 (or a DECLARE of c1) with it off.
    "select 'x\\''; deallocate s1; prepare s1 as select 'swapped'; --'",
    "select 'x\\''; declare c1 cursor with hold for select 'swapped'; --'",
)
# What the server must not keep from one case to the next.
FUZZ_CODE = (
    """
create or replace function set_setting(name text, value text) returns text
language sql as $$ select set_config(name, value, false) $$""",
    "grant alter system on parameter standard_conforming_strings, client_encoding to app",
    "grant execute on function pg_reload_conf() to app",
)
RESET = ("alter system reset all", "select pg_reload_conf()", "alter role app reset all")


@dataclass(frozen=True)
class Text:
    """A statement and the encoding its bytes are written in (maybe not the session's)."""

    sql: str
    codec: str

    def encode(self) -> bytes:
        # NUL cannot travel in a C string; unencodable characters become '?'.
        return self.sql.encode(self.codec, errors="replace").replace(b"\0", b"")


@dataclass(frozen=True)
class Batch:
    """Bytes written at once, and how many ReadyForQuery messages answer them (none, and no
    bytes: the session ends and a new one starts)."""

    wire: bytes
    readies: int
    label: str


RECONNECT = Batch(b"", 0, "(a new session)")


@dataclass
class Case:
    batches: list[Batch]
    startup: dict[str, str] = field(default_factory=dict)
    guarded: bool = True  # through `pg` (else `pg-open`, without guardrails)

    def __repr__(self) -> str:
        where = pggate.GUARDED if self.guarded else pggate.OPEN
        lines = [f"{where} startup {self.startup}"] + [b.label for b in self.batches]
        return "Case(\n  " + "\n  ".join(lines) + "\n)"


def _texts(pool: tuple[str, ...]) -> st.SearchStrategy[Text]:
    # Mostly the session's default: text the gateway cannot decode ends the session (08P01),
    # which is right, but a case that ends early explores little.
    codec = st.sampled_from(["utf-8"] * 6 + list(CODECS.values()))
    return st.builds(Text, st.sampled_from(pool), codec)


def statement_texts() -> st.SearchStrategy[Text]:
    prepared = [f"prepare {n} as {s}" for n in SQL_NAMES for s in ALLOWED[:6]]
    prepared += [f"prepare {n} as delete from {SENTINEL}" for n in SQL_NAMES]
    prepared += [f"execute {n}" for n in SQL_NAMES] + [f"deallocate {n}" for n in SQL_NAMES]
    cursors = [
        f"declare {c} cursor with hold for select g from generate_series(1, 5) g" for c in CURSORS
    ]
    cursors += [f"fetch 2 from {c}" for c in CURSORS] + [f"close {c}" for c in CURSORS]
    return st.one_of(
        _texts(ALLOWED),
        _texts(FAILING),
        _texts(DENIED),
        _texts(LEXICAL),
        _texts(TRANSACTION),
        _texts(tuple(prepared)),
        _texts(tuple(cursors)),
        _texts(CODE),
        _texts(LATE_SETTINGS),
    )


@st.composite
def simple(draw: st.DrawFn) -> Batch:
    text = draw(statement_texts())
    return Batch(pglog.query(text.encode()), 1, f"Q {text.sql!r} [{text.codec}]")


@st.composite
def extended_message(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.sampled_from(["pbe", "parse", "bind_execute", "execute", "close", "describe"]))
    if kind == "pbe":
        text = draw(statement_texts())
        name = draw(st.sampled_from(STATEMENT_NAMES))
        wire = pglog.parse(name, text.encode()) + pglog.bind(name) + pglog.execute()
        return wire, f"P/B/E {name!r} {text.sql!r} [{text.codec}]"
    if kind == "parse":
        text = draw(statement_texts())
        name = draw(st.sampled_from(STATEMENT_NAMES))
        return pglog.parse(name, text.encode()), f"P {name!r} {text.sql!r} [{text.codec}]"
    if kind == "bind_execute":
        name = draw(st.sampled_from(STATEMENT_NAMES + SQL_NAMES + ("never",)))
        portal = draw(st.sampled_from(("", "p1")))
        rows = draw(st.sampled_from((0, 0, 1)))
        wire = pglog.bind(name, portal) + pglog.execute(portal, rows)
        return wire, f"B/E {name!r}→{portal!r} rows={rows}"
    if kind == "execute":
        portal = draw(st.sampled_from(PORTALS))
        rows = draw(st.sampled_from((0, 1, 2)))
        return pglog.execute(portal, rows), f"E {portal!r} rows={rows}"
    what = draw(st.sampled_from("SP"))
    name = draw(st.sampled_from(STATEMENT_NAMES + SQL_NAMES if what == "S" else PORTALS))
    if kind == "close":
        return pglog.close(what, name), f"C {what} {name!r}"
    return pglog.describe(what, name), f"D {what} {name!r}"


@st.composite
def extended_group(draw: st.DrawFn) -> Batch:
    parts = draw(st.lists(extended_message(), min_size=1, max_size=5))
    wire, labels = b"", []
    for raw, label in parts:
        wire += raw
        labels.append(label)
        if draw(st.integers(0, 9)) == 0:
            wire += pglog.flush()
            labels.append("H")
    return Batch(wire + pglog.sync(), 1, " | ".join([*labels, "S"]))


def _query(sql: str) -> Batch:
    return Batch(pglog.query(sql), 1, f"Q {sql!r}")


def _group(wire: bytes, label: str) -> Batch:
    return Batch(wire + pglog.sync(), 1, f"{label} | S")


@st.composite
def cursor_story(draw: st.DrawFn) -> list[Batch]:
    """A cursor (or protocol portal) made, then code that may open another by its name or one
    of its own, then a read of the name: the shape where a trail could claim a stale text."""
    made = draw(st.sampled_from(["declare", "declare with hold", "bind", "function"]))
    name = "p1" if made == "bind" else draw(st.sampled_from(CURSORS))
    reopening = [how.format(name=name, query=REOPEN) for how in REOPENING]
    code = draw(st.sampled_from([*reopening, "select 1", "set work_mem = '8MB'"]))
    if made == "bind":
        wire = pglog.parse("", "select g from generate_series(1, 3) g") + pglog.bind("", name)
        first = _group(wire + pglog.execute(name, 1), f"P/B→{name}/E {name} rows=1")
        read = _group(pglog.execute(name, 1), f"E {name} rows=1")
    else:
        hold = " with hold" if made == "declare with hold" else ""
        made_by = f"select opens('{name}')"
        first = _query(
            made_by
            if made == "function"
            else f"declare {name} cursor{hold} for select 'declared' as v"
        )
        fetch = draw(st.sampled_from([f"fetch 1 from {name}", f"move 1 in {name}"]))
        read = draw(
            st.sampled_from(
                [
                    _query(fetch),
                    _group(
                        pglog.parse("", fetch) + pglog.bind("") + pglog.execute(),
                        f"P/B/E {fetch!r}",
                    ),
                ]
            )
        )
    end = draw(st.sampled_from(["commit", "rollback"]))
    return [_query("begin"), first, _query(code), read, _query(end)]


# Code that deallocates a prepared statement and prepares another text under its name, and the
# name the stories use (no other step prepares it: a Parse the log cannot show could otherwise
# make the oracle read a claim of the client's text as stale).
STORY_STATEMENT = "s3"
REPREPARE = "select reprepare('{name}', $q$select 'prepared by code' as v$q$)"


@st.composite
def statement_story(draw: st.DrawFn) -> list[Batch]:
    """A statement prepared (Parse, or SQL PREPARE), then code that may prepare another text
    under its name, then a use of the name (Bind, or SQL EXECUTE): the shape where a trail
    could claim a stale text (decision 0033)."""
    name = STORY_STATEMENT
    made = draw(st.sampled_from(["parse", "prepare"]))
    if made == "parse":
        wire = pglog.parse(name, "select 'parsed' as v") + pglog.bind(name) + pglog.execute()
        first = _group(wire, f"P {name}/B/E")
    else:
        first = _query(f"prepare {name} as select 'prepared' as v")
    code = draw(st.sampled_from([REPREPARE.format(name=name), "select now()", "select 1"]))
    use = draw(
        st.sampled_from(
            [_group(pglog.bind(name) + pglog.execute(), f"B {name}/E"), _query(f"execute {name}")]
        )
    )
    story = [first, _query(code), use]
    if draw(st.booleans()):  # in a transaction block: no COMMIT between the code and the use
        story = [_query("begin"), *story, _query(draw(st.sampled_from(["commit", "rollback"])))]
    return story


@st.composite
def cases(draw: st.DrawFn) -> Case:
    startup: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        startup["client_encoding"] = draw(st.sampled_from(sorted(CODECS)))
    if draw(st.integers(0, 4)) == 0:
        startup["options"] = "-c standard_conforming_strings=off"
    single = (simple() | extended_group()).map(lambda batch: [batch])
    story = cursor_story() | statement_story()
    stories = draw(st.lists(single | single | story, min_size=1, max_size=8))
    steps = [batch for story in stories for batch in story]
    # Pipelining: consecutive steps go out in one write, answered together.
    batches: list[Batch] = []
    for step in steps:
        if batches and draw(st.integers(0, 14)) == 14:  # (Hypothesis tries 0 first)
            batches.append(RECONNECT)  # what ALTER ROLE … SET changed applies from here
        if batches and batches[-1] is not RECONNECT and draw(st.booleans()):
            last = batches[-1]
            batches[-1] = Batch(
                last.wire + step.wire, last.readies + step.readies, f"{last.label} ‖ {step.label}"
            )
        else:
            batches.append(step)
    return Case(batches, startup, guarded=draw(st.integers(0, 4)) < 4)


# ---- running a case ------------------------------------------------------------------------


def prepare_tables(pg: PostgresServer) -> None:
    """The sentinel (three rows nobody may remove) and a scratch table, owned by the target's
    user; made as the superuser with logging off, so they stay out of every log window."""
    pggate.make_table(pg, SENTINEL, SENTINEL_ROWS)
    pggate.make_table(pg, SCRATCH, 0)


def prepare(pg: PostgresServer) -> None:
    """The tables, the code the cases call, and what the target's user may change."""
    prepare_tables(pg)
    pggate.create_cursor_code(pg)
    pggate.admin(pg, *FUZZ_CODE)


def reset(pg: PostgresServer) -> None:
    """Undo what a case changed beyond its session (ALTER SYSTEM, ALTER ROLE … SET)."""
    pggate.admin(pg, *RESET)


@dataclass
class Gateway:
    """What a case needs: the listeners' ports, the server, and a way to read new events."""

    port: int  # `pg`, guarded
    open_port: int  # `pg-open`
    pg: PostgresServer
    events: pggate.Events
    after: int  # the last event seq seen: the next case's window starts there
    cases: int = 0
    statements: int = 0


@dataclass
class Outcome:
    problems: list[str]
    statements: int  # statements the server logged as run
    denied: int


def run_case(gateway: Gateway, case: Case) -> Outcome:
    """Play one case's sessions through the gateway; then reconcile the server's log and the
    trail."""
    _catch_up(gateway)  # a case that failed may have left events behind
    window = pggate.Window(gateway.events, gateway.pg.log_file, after=gateway.after)
    try:
        problems = _play(gateway.port if case.guarded else gateway.open_port, case)
    finally:
        # Also when the case failed (a hang): its events must not fall into the next window,
        # nor its settings into the next case.
        events = pggate.ended(gateway.events, window.after)
        if events:
            gateway.after = max(e["seq"] for e in events)
        if any(word in b.label for b in case.batches for word in ("alter system", "alter role")):
            reset(gateway.pg)
    if events is None:
        problems.append("a session did not end in the trail")
        events = gateway.events(window.after)
    ran = window.log.ran()
    gateway.cases += 1
    gateway.statements += len(ran.statements)
    problems += window.problems(events)
    rows = pggate.rows(gateway.pg, SENTINEL)
    if rows != SENTINEL_ROWS:
        if case.guarded:
            problems.append(f"the sentinel table holds {rows} rows, not {SENTINEL_ROWS}")
        prepare_tables(gateway.pg)
    return Outcome(problems, len(ran.statements), len(pglog.Trail.of(events).denied()))


def _play(port: int, case: Case) -> list[str]:
    """The case's batches, session by session; what went wrong on the wire."""
    problems: list[str] = []
    sessions: list[list[Batch]] = [[]]
    for batch in case.batches:
        if batch is RECONNECT:
            sessions.append([])
        else:
            sessions[-1].append(batch)
    for batches in sessions:
        with PgWire(port, timeout=10, **case.startup) as client:
            answers = [client.startup]
            for batch in batches:
                if answers[-1].closed:
                    break
                answers.append(client.run(batch.wire, batch.readies))
            if answers[-1].closed and not [e for e in answers[-1].errors if e.get("S") == "FATAL"]:
                problems.append(f"the gateway closed the session without a FATAL: {case}")
    return problems


def _catch_up(gateway: Gateway) -> None:
    events = gateway.events(gateway.after)
    if events:
        gateway.after = max(e["seq"] for e in events)
