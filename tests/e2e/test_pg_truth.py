"""What the trail records is what PostgreSQL ran: names of prepared statements and portals, and
the lexical settings under which a text is read, through the real gateway to a real server.

Each test speaks the protocol itself (raw messages over the `connect` listener), then reads
the server's own statement log (`log_statement=all`): a denied statement never appears there,
and every statement that does appear has a `db.query` event with exactly that text.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devenv.postgres import PostgresServer, parse_statement_log
from devenv.stack import Connect
from tests.e2e.conftest import AGENT, PG_PASSWORD, Stack

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
    guardrails: [no-drop]
guardrails:
  - name: no-drop
    deny_statements: [DROP, TRUNCATE]
"""
TIMEOUT = 10


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Stack:
    applied = stack.apply(POLICY.format(agent=AGENT, port=stack.pg.port))
    assert applied.returncode == 0, applied.stderr
    return stack


@pytest.fixture(scope="module")
def listener(guarded: Stack) -> Iterator[Connect]:
    process = Connect.create(guarded.controlplane, "pg", guarded.base)
    process.start_and_wait()
    yield process
    process.stop()


# ---- the protocol, by hand ---------------------------------------------------------------------


def msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def cstr(text: str | bytes) -> bytes:
    return (text.encode() if isinstance(text, str) else text) + b"\0"


def query(sql: str | bytes) -> bytes:
    return msg(b"Q", cstr(sql))


def parse(sql: str | bytes, name: str = "") -> bytes:
    return msg(b"P", cstr(name) + cstr(sql) + struct.pack("!h", 0))


def bind(statement: str = "", portal: str = "", params: tuple[bytes, ...] = ()) -> bytes:
    body = cstr(portal) + cstr(statement) + struct.pack("!hh", 0, len(params))
    body += b"".join(struct.pack("!i", len(p)) + p for p in params)
    return msg(b"B", body + struct.pack("!h", 0))


def execute(portal: str = "") -> bytes:
    return msg(b"E", cstr(portal) + struct.pack("!i", 0))


SYNC = msg(b"S", b"")


def messages(data: bytes) -> list[tuple[str, bytes]]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if pos + 1 + length > len(data):
            break
        out.append((chr(data[pos]), data[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def errors(answer: list[tuple[str, bytes]]) -> list[dict[str, str]]:
    found = []
    for tag, body in answer:
        if tag == "E":
            fields = {chr(f[0]): f[1:].decode() for f in body.split(b"\0") if f}
            found.append(fields)
    return found


class Raw:
    """One session through the listener, spoken message by message."""

    def __init__(self, port: int, **extra: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        params = {"user": "anyone", "database": "pg", **extra}
        body = struct.pack("!i", 196608)
        body += b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
        self.sock.sendall(struct.pack("!i", len(body) + 4) + body)
        self.buffer = b""
        self.read(1)

    def read(self, readies: int) -> list[tuple[str, bytes]]:
        """Messages up to and including the `readies`-th ReadyForQuery."""
        while sum(tag == "Z" for tag, _ in messages(self.buffer)) < readies:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; got {messages(self.buffer)}")
            self.buffer += chunk
        answer, consumed, seen = [], 0, 0
        for tag, body in messages(self.buffer):
            answer.append((tag, body))
            consumed += 5 + len(body)
            seen += tag == "Z"
            if seen == readies:
                break
        self.buffer = self.buffer[consumed:]
        return answer

    def send(self, data: bytes, readies: int = 1) -> list[tuple[str, bytes]]:
        self.sock.sendall(data)
        return self.read(readies)

    def until_closed(self) -> list[tuple[str, bytes]]:
        try:
            while chunk := self.sock.recv(65536):
                self.buffer += chunk
        except ConnectionResetError:
            pass  # it closed with our bytes unread; what it said before is in the buffer
        return messages(self.buffer)

    def close(self) -> None:
        self.sock.close()


# ---- the two sides to reconcile ----------------------------------------------------------------


class Truth:
    """The server's log and the trail, from the start of one test."""

    def __init__(self, stack: Stack, pg: PostgresServer) -> None:
        self.stack, self.pg = stack, pg
        self.after = stack.events()[-1]["seq"]
        self.offset = Path(pg.log_file).stat().st_size

    def text(self) -> str:
        with Path(self.pg.log_file).open("rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", errors="replace")

    def logged(self) -> list[str]:
        """Statements the server logged, and each resumed portal's text once more: an Execute
        that continues a suspended portal is its own request in the trail, and the server logs
        it as `execute fetch from <portal>: <text>`."""
        resumed = re.findall(r"LOG:  execute fetch from [^:\n]*: (.*)", self.text())
        return parse_statement_log(self.text()) + resumed

    def queries(self) -> list[dict[str, Any]]:
        return [e for e in self.stack.events(self.after) if e["type"] == "db.query"]

    def reconcile(self, tag: str) -> list[dict[str, Any]]:
        """Every statement the server logged (of this test) has an allowed event with exactly
        that text, and every allowed event's statement was logged."""
        logged = [s for s in self.logged() if tag in s]
        queries = [q for q in self.queries() if tag in q["request"]["statement"]]
        allowed = [q["request"]["statement"] for q in queries if q["decision"]["result"] == "allow"]
        assert Counter(logged) == Counter(allowed), (logged, allowed)
        return queries


@pytest.fixture
def tag() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def victim(pg: PostgresServer) -> Iterator[str]:
    """A table an attack would drop; made and checked directly, not through the gateway."""
    name = f"v{uuid.uuid4().hex[:10]}"
    dsn = pg.dsn(user="app", password=PG_PASSWORD, database="app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"create table {name}(id int)")
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select to_regclass(%s) is not null", (name,)).fetchone() == (True,)
        conn.execute(f"drop table {name}")


@pytest.fixture
def truth(guarded: Stack, pg: PostgresServer) -> Truth:
    return Truth(guarded, pg)


@pytest.fixture
def raw(listener: Connect) -> Iterator[Raw]:
    session = Raw(listener.port)
    yield session
    session.close()


# ---- names ------------------------------------------------------------------------------------


def test_a_parse_the_server_rejected_does_not_rename_the_statement(
    raw: Raw, truth: Truth, victim: str, tag: str
) -> None:
    first = f"select 2 as {tag}"
    assert not errors(raw.send(parse(first, "s1") + SYNC))
    answer = raw.send(parse(f"select 1 as {tag}", "s1") + SYNC)
    assert [e["C"] for e in errors(answer)] == ["42P05"]

    answer = raw.send(bind("s1") + execute() + SYNC)
    assert not errors(answer)
    assert any(tag == "D" and body.endswith(b"2") for tag, body in answer)

    queries = truth.reconcile(tag)
    assert [q["request"]["statement"] for q in queries] == [first]


def test_pipelined_across_syncs_a_name_is_read_after_the_server_answered(
    raw: Raw, truth: Truth, tag: str
) -> None:
    first, second = f"select 2 as {tag}", f"select 1 as {tag}"
    unnamed = f"select 3 as {tag}"
    # One write: the second Parse fails (42P05), so the Bind runs the first text; the unnamed
    # statement is replaced by a Parse the server accepts, so the Bind after it runs that one.
    data = parse(first, "s1") + SYNC + parse(second, "s1") + SYNC
    data += bind("s1") + execute() + SYNC
    data += parse("select 9") + SYNC + parse(unnamed) + SYNC + bind() + execute() + SYNC
    answer = raw.send(data, readies=6)
    assert [e["C"] for e in errors(answer)] == ["42P05"]

    queries = truth.reconcile(tag)
    assert [q["request"]["statement"] for q in queries] == [first, unnamed]


def test_named_portals_live_until_their_transaction_ends(raw: Raw, truth: Truth, tag: str) -> None:
    rows = f"select generate_series(1, 5) as {tag}"
    assert not errors(raw.send(query("BEGIN")))
    assert not errors(raw.send(parse(rows) + bind(portal="p1") + SYNC))
    # Execute with a row limit: the portal is suspended, then resumed in the next pipeline.
    limited = msg(b"E", cstr("p1") + struct.pack("!i", 2))
    assert any(tag == "s" for tag, _ in raw.send(limited + SYNC))
    assert not errors(raw.send(execute("p1") + SYNC))
    assert not errors(raw.send(query("COMMIT")))
    answer = raw.send(execute("p1") + SYNC)
    assert [e["C"] for e in errors(answer)] == ["34000"]

    truth.reconcile(tag)


def test_a_denied_parse_is_refused_before_the_server_sees_it(
    raw: Raw, truth: Truth, victim: str, tag: str
) -> None:
    drop = f"drop table {victim}"
    answer = raw.send(parse(drop, "s1") + SYNC)
    assert [e["C"] for e in errors(answer)] == ["42501"]
    safe = f"select 1 as {tag}"
    assert not errors(raw.send(parse(safe, "s1") + SYNC))
    assert not errors(raw.send(bind("s1") + execute() + SYNC))

    assert not [s for s in truth.logged() if "drop table" in s]
    truth.reconcile(tag)
    [denied] = [q for q in truth.queries() if q["request"]["statement"] == drop]
    assert denied["decision"]["result"] == "deny"


def test_names_the_server_does_not_hold_are_refused(raw: Raw, truth: Truth, tag: str) -> None:
    answer = raw.send(bind(f"{tag}_none") + execute() + SYNC)
    assert [e["C"] for e in errors(answer)] == ["26000"]
    answer = raw.send(execute(f"{tag}_none") + SYNC)
    assert [e["C"] for e in errors(answer)] == ["34000"]
    answer = raw.send(query(f"EXECUTE {tag}_none"))
    assert [e["C"] for e in errors(answer)] == ["26000"]
    answer = raw.send(query(f"FETCH 1 FROM {tag}_none"))
    assert [e["C"] for e in errors(answer)] == ["34000"]

    assert not [s for s in truth.logged() if tag in s]
    denied = [q for q in truth.queries() if q["decision"]["result"] == "deny"]
    assert len(denied) == 4


def test_sql_prepare_execute_and_cursors_record_what_runs(raw: Raw, truth: Truth, tag: str) -> None:
    prepared = f"select $1::int + 1 as {tag}"
    prepare = f"PREPARE {tag}_p(int) AS {prepared}"
    assert not errors(raw.send(query(prepare)))
    assert not errors(raw.send(query(f"EXECUTE {tag}_p(41)")))
    # The protocol shares SQL's namespace.
    assert not errors(raw.send(bind(f"{tag}_p", params=(b"1",)) + execute() + SYNC))
    cursor = f"select generate_series(1, 3) as {tag}"
    answer = raw.send(query(f"BEGIN; DECLARE {tag}_c CURSOR FOR {cursor}; FETCH 2 FROM {tag}_c"))
    assert not errors(answer)
    assert not errors(raw.send(query("COMMIT")))
    answer = raw.send(query(f"FETCH 1 FROM {tag}_c"))  # ended with its transaction
    assert [e["C"] for e in errors(answer)] == ["34000"]
    assert not errors(raw.send(query(f"DEALLOCATE {tag}_p")))
    answer = raw.send(query(f"EXECUTE {tag}_p(1)"))
    assert [e["C"] for e in errors(answer)] == ["26000"]

    queries = truth.reconcile(tag)
    by_text = {q["request"]["statement"]: q for q in queries}
    assert by_text[f"EXECUTE {tag}_p(41)"]["request"]["prepared"] == {f"{tag}_p": prepare}
    fetch = by_text[f"BEGIN; DECLARE {tag}_c CURSOR FOR {cursor}; FETCH 2 FROM {tag}_c"]
    assert fetch["request"]["cursors"] == {f"{tag}_c": f"DECLARE {tag}_c CURSOR FOR {cursor}"}


# ---- lexical settings -------------------------------------------------------------------------


def test_a_client_encoding_change_pipelined_in_front_cannot_hide_a_drop(
    raw: Raw, truth: Truth, victim: str, tag: str
) -> None:
    # UTF-8 reads one string literal (中 then an escaped quote); GBK reads 中's last byte and
    # the backslash as one character, so the quote ends the literal and the DROP runs.
    hidden = f"select E'中\\'; DROP TABLE {victim}; --' as {tag}".encode()
    raw.sock.sendall(query("SET client_encoding TO 'GBK'") + query(hidden))
    answer = raw.until_closed()  # the agent ends a session that leaves UTF8

    assert any(e["C"] == "22021" for e in errors(answer))
    assert not [s for s in truth.logged() if "DROP TABLE" in s]


def test_standard_conforming_strings_off_then_a_backslash_is_refused(
    raw: Raw, truth: Truth, victim: str, tag: str
) -> None:
    change = f"select set_config('standard_conforming_strings', 'off', false) as {tag}"
    # With it on (the parser's reading) this is one literal; off, the DROP runs.
    hidden = f"select 'a\\''; DROP TABLE {victim}; --' as {tag}"
    answer = raw.send(query(change) + query(hidden), readies=2)
    [error] = errors(answer)
    assert error["C"] == "22021"
    assert "standard_conforming_strings" in error["M"]

    # The same pipelined in the extended protocol, without a Sync in between.
    data = parse(change) + bind() + execute() + parse(hidden) + bind() + execute() + SYNC
    answer = raw.send(data)
    assert [e["C"] for e in errors(answer)] == ["22021"]
    assert not errors(raw.send(query(f"select 'plain' as {tag}")))

    assert not [s for s in truth.logged() if "DROP TABLE" in s]
    truth.reconcile(tag)


def test_a_function_that_changes_a_setting_is_heard_too(
    raw: Raw, pg: PostgresServer, truth: Truth, victim: str, tag: str
) -> None:
    function = f"f{uuid.uuid4().hex[:10]}"  # made directly: not part of the reconciliation
    dsn = pg.dsn(user="app", password=PG_PASSWORD, database="app")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"create function {function}() returns int language sql as "
            "$$ select length(set_config('standard_conforming_strings', 'off', false)) * 0 $$"
        )
    try:
        hidden = f"select 'a\\''; DROP TABLE {victim}; --' as {tag}"
        answer = raw.send(query(f"select {function}() as {tag}") + query(hidden), readies=2)
        assert [e["C"] for e in errors(answer)] == ["22021"]
        # ROLLBACK undoes a SET: the server reports that too, and a backslash reads again.
        assert not errors(raw.send(query("BEGIN; SET standard_conforming_strings = on")))
        assert not errors(raw.send(query("ROLLBACK")))
        assert [e["C"] for e in errors(raw.send(query(hidden)))] == ["22021"]
        assert not errors(raw.send(query("SET standard_conforming_strings = on")))
        assert not errors(raw.send(query(f"select 'a\\' as {tag}")))
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"drop function {function}")
    assert not [s for s in truth.logged() if "DROP TABLE" in s]
    truth.reconcile(tag)


def test_settings_from_the_startup_options_apply_to_the_first_statement(
    listener: Connect, truth: Truth, victim: str, tag: str
) -> None:
    raw = Raw(listener.port, options="-c standard_conforming_strings=off")
    try:
        hidden = f"select 'a\\''; DROP TABLE {victim}; --' as {tag}"
        [error] = errors(raw.send(query(hidden)))
        assert error["C"] == "22021"
        assert not errors(raw.send(query(f"select 1 as {tag}")))
    finally:
        raw.close()
    assert not [s for s in truth.logged() if "DROP TABLE" in s]
    truth.reconcile(tag)


# ---- limits -----------------------------------------------------------------------------------


def test_a_batch_without_sync_is_bounded(raw: Raw, tag: str) -> None:
    chunk = parse(f"select '{'x' * 1_000_000}' as {tag}")
    with contextlib.suppress(OSError):  # the gateway may close while we still send
        for _ in range(40):
            raw.sock.sendall(chunk)
    answer = raw.until_closed()
    # (the CLI may add a FATAL of its own when its stream ends while it still sends)
    fatal = errors(answer)[0]
    assert fatal["S"] == "FATAL"
    assert "without a Sync" in fatal["M"]
