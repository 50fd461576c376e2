"""Differential fuzzing of the PostgreSQL inspector against a real server.

Hypothesis draws random sessions: batches of simple queries and extended-protocol groups
(named and unnamed Parse reusing a few names, Bind/Execute of names parsed, prepared in SQL or
never seen, cursors executed as portals, Close), SQL PREPARE/EXECUTE/DEALLOCATE, DECLARE/FETCH/
CLOSE, transactions, SET of the lexical settings (client_encoding among UTF8/LATIN1/GBK/SJIS,
standard_conforming_strings by SET, SET LOCAL and set_config), statements that fail, and
statements the guardrail denies (DROP, TRUNCATE, unbounded DELETE of a sentinel table, some of
them hidden by an encoding or a backslash). Each batch is written at once, so everything in it
is pipelined behind what came before. The oracle is the server itself: its statement log and the
trail must reconcile exactly (`pglog.reconcile`) and the sentinel must keep its rows.

`run_case` is shared by the bounded test (tests/e2e/test_pg_differential.py) and the long run
(`python -m bench.pgfuzz --examples 5000`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from hypothesis import strategies as st

from devenv.postgres import PostgresServer
from tests.e2e import pglog
from tests.e2e.pglog import PgWire

GUARDED_POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
    guardrails: [no-destructive]
guardrails:
  - name: no-destructive
    deny_statements: [DROP, TRUNCATE]
    deny_unbounded: [DELETE]
"""

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
    """Bytes written at once, and how many ReadyForQuery messages answer them."""

    wire: bytes
    readies: int
    label: str


@dataclass
class Case:
    batches: list[Batch]
    startup: dict[str, str] = field(default_factory=dict)

    def __repr__(self) -> str:
        lines = [f"startup {self.startup}"] + [b.label for b in self.batches]
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


@st.composite
def cases(draw: st.DrawFn) -> Case:
    startup: dict[str, str] = {}
    if draw(st.integers(0, 4)) == 0:
        startup["client_encoding"] = draw(st.sampled_from(sorted(CODECS)))
    if draw(st.integers(0, 4)) == 0:
        startup["options"] = "-c standard_conforming_strings=off"
    steps = draw(st.lists(simple() | extended_group(), min_size=1, max_size=12))
    # Pipelining: consecutive steps go out in one write, answered together.
    batches: list[Batch] = []
    for step in steps:
        if batches and draw(st.booleans()):
            last = batches[-1]
            batches[-1] = Batch(
                last.wire + step.wire, last.readies + step.readies, f"{last.label} ‖ {step.label}"
            )
        else:
            batches.append(step)
    return Case(batches, startup)


# ---- running a case ------------------------------------------------------------------------


def prepare_tables(pg: PostgresServer) -> None:
    """The sentinel (three rows nobody may remove) and a scratch table, owned by the target's
    user; made as the superuser with logging off, so they stay out of every log window."""
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute(f"drop table if exists {SENTINEL}")
        conn.execute(f"create table {SENTINEL} (id int)")
        conn.execute(f"insert into {SENTINEL} values (1), (2), (3)")
        conn.execute(f"create table if not exists {SCRATCH} (id int)")
        conn.execute(f"alter table {SENTINEL} owner to app")
        conn.execute(f"alter table {SCRATCH} owner to app")


def sentinel_rows(pg: PostgresServer) -> int | None:
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        found = conn.execute("select to_regclass(%s)", (SENTINEL,)).fetchone()
        if found is None or found[0] is None:
            return None
        count = conn.execute(f"select count(*) from {SENTINEL}").fetchone()
        return None if count is None else int(count[0])


@dataclass
class Gateway:
    """What a case needs: the listener's port, the server, and a way to read new events."""

    port: int
    pg: PostgresServer
    events: Callable[[int], list[dict[str, Any]]]
    after: int  # the last event seq seen: the next case's window starts there
    cases: int = 0
    statements: int = 0


@dataclass
class Outcome:
    problems: list[str]
    statements: int  # statements the server logged as run
    denied: int


def run_case(gateway: Gateway, case: Case) -> Outcome:
    """Play one session through the gateway; then reconcile the server's log and the trail."""
    _catch_up(gateway)  # a case that failed may have left events behind
    after = gateway.after
    window = pglog.LogWindow(gateway.pg.log_file)
    problems: list[str] = []
    try:
        with PgWire(gateway.port, timeout=10, **case.startup) as client:
            for batch in case.batches:
                answer = client.run(batch.wire, batch.readies)
                if answer.closed:
                    fatal = [e for e in answer.errors if e.get("S") == "FATAL"]
                    if not fatal:
                        problems.append(f"the gateway closed the session without a FATAL: {batch}")
                    break
    finally:
        # Also when the case failed (a hang): its events must not fall into the next window.
        events = _ended(gateway, after)
        if events:
            gateway.after = max(e["seq"] for e in events)
    if events is None:
        problems.append("the session did not end in the trail")
        events = gateway.events(after)
    trail = pglog.Trail.of(events)
    ran = window.ran()
    gateway.cases += 1
    gateway.statements += len(ran.statements)
    problems += pglog.reconcile(ran, trail)
    rows = sentinel_rows(gateway.pg)
    if rows != SENTINEL_ROWS:
        problems.append(f"the sentinel table holds {rows} rows, not {SENTINEL_ROWS}")
        prepare_tables(gateway.pg)
    return Outcome(problems, len(ran.statements), len(trail.denied()))


def _catch_up(gateway: Gateway) -> None:
    events = gateway.events(gateway.after)
    if events:
        gateway.after = max(e["seq"] for e in events)


def _ended(gateway: Gateway, after: int, timeout: float = 15) -> list[dict[str, Any]] | None:
    deadline = time.monotonic() + timeout
    while True:
        events = gateway.events(after)
        starts = {e["session_id"] for e in events if e["type"] == "session.start"}
        ends = {e["session_id"] for e in events if e["type"] == "session.end"}
        if starts and starts <= ends:
            return events
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)
