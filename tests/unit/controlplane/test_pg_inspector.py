"""PostgreSQL inspection: nothing reaches the target before its event is committed, results are
recorded against the right query, and the gateway's own answers arrive in protocol order."""

import asyncio
import base64
import json
import sqlite3
import struct
from pathlib import Path
from typing import Any

import pytest

from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import SqlGuard
from controlplane.relay.pg import inspector as pg_module
from controlplane.relay.pg import names as pg_names_module
from controlplane.relay.pg.inspector import PgInspector
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from trail.chain import verify_chain
from wire.pg import framing
from wire.pg import messages as pgm

Mark = tunnel_pb2.ResultMark

REFUSE_INSERTS = (
    "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
)
ALLOW_INSERTS = "DROP TRIGGER test_refuse_insert"

STARTUP = pgm.startup_message({"user": "alice", "database": "app"})
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"


# ---- frontend messages the builders do not cover ---------------------------------------------


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def parse(sql: str, name: str = "") -> bytes:
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(
    params: list[bytes | None],
    *,
    portal: str = "",
    statement: str = "",
    formats: tuple[int, ...] = (),
) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!h", len(formats)) + b"".join(struct.pack("!h", f) for f in formats)
    body += struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    body += struct.pack("!h", 0)
    return _msg(b"B", body)


def execute(portal: str = "") -> bytes:
    return _msg(b"E", portal.encode() + b"\0" + struct.pack("!i", 0))


def flush() -> bytes:
    return b"H\x00\x00\x00\x04"


# ---- what the agent sends back -------------------------------------------------------------


class Reply:
    """Target bytes and the marks the agent would put on them."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.marks: list[tunnel_pb2.ResultMark] = []

    def raw(self, message: bytes) -> "Reply":
        self.data += message
        return self

    def complete(self, tag: str, rows: int = -1) -> "Reply":
        self.data += pgm.command_complete(tag)
        command = tag.split(" ", maxsplit=1)[0]
        self.marks.append(Mark(kind=Mark.COMPLETE, end=len(self.data), command=command, rows=rows))
        return self

    def error(self, sqlstate: str, message: str) -> "Reply":
        self.data += pgm.error_response(sqlstate=sqlstate, message=message)
        self.marks.append(
            Mark(kind=Mark.ERROR, end=len(self.data), sqlstate=sqlstate, message=message)
        )
        return self

    def ack(self, message: bytes, kind: "Mark.Kind.ValueType") -> "Reply":
        self.data += message
        self.marks.append(Mark(kind=kind, end=len(self.data)))
        return self

    def parsed(self) -> "Reply":
        return self.ack(PARSE_COMPLETE, Mark.PARSE_COMPLETE)

    def bound(self) -> "Reply":
        return self.ack(BIND_COMPLETE, Mark.BIND_COMPLETE)

    def parameter(self, name: str, value: str) -> "Reply":
        self.data += pgm.parameter_status(name, value)
        self.marks.append(Mark(kind=Mark.PARAMETER, end=len(self.data), name=name, value=value))
        return self

    def ready(self, status: str = "I") -> "Reply":
        self.data += pgm.ready_for_query(status)
        self.marks.append(Mark(kind=Mark.READY, end=len(self.data), tx_status=status))
        return self

    def frame(self) -> tunnel_pb2.Frame:
        return tunnel_pb2.Frame(data=bytes(self.data), marks=self.marks)


def select_reply(rows: int, status: str = "I") -> Reply:
    reply = Reply().raw(pgm.row_description([pgm.Column("n")]))
    for n in range(rows):
        reply.raw(pgm.data_row([str(n).encode()]))
    return reply.complete(f"SELECT {rows}", rows).ready(status)


def login_reply() -> Reply:
    return (
        Reply()
        .raw(pgm.authentication_ok())
        .raw(pgm.parameter_status("server_version", "17.2"))
        .parameter("client_encoding", "UTF8")
        .parameter("standard_conforming_strings", "on")
        .raw(pgm.backend_key_data(4242, b"\x01\x02\x03\x04"))
        .ready("I")
    )


def backend_messages(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    """Frame what the client would receive into (tag, body) pairs."""
    framer = framing.MessageFramer(startup_phase=False)
    messages = [(chr(m.tag), bytes(m.body)) for m in framer.feed(b"".join(chunks))]
    assert framer.pending == 0
    return messages


# ---- fixtures ------------------------------------------------------------------------------


class Wakes:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
def ctx() -> SessionContext:
    return SessionContext(
        session_id="sess-1",
        identity=Identity("alice", email="alice@example.com", groups=("dba",)),
        connection={"name": "pg-prod", "type": "postgres"},
        audit_mode="strict",
        source={"ip": "192.0.2.10"},
    )


class Forwarded(list[bytes]):
    """What the inspector sent to the target before it waited for answers."""

    async def __call__(self, data: bytes) -> None:
        self.append(data)


@pytest.fixture
def early() -> Forwarded:
    return Forwarded()


@pytest.fixture
def inspector(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, early: Forwarded
) -> PgInspector:
    return PgInspector(ctx, writer, wakes, forward=early)


@pytest.fixture
async def ready(inspector: PgInspector) -> PgInspector:
    """An inspector whose session is logged in and idle."""
    assert await inspector.from_client(STARTUP) == STARTUP
    await inspector.from_agent(login_reply().frame())
    return inspector


def sql(db_path: Path, statement: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(statement)
    finally:
        conn.close()


def stored(db_path: Path) -> list[dict[str, Any]]:
    """The committed events, read straight from the store."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert verify_chain(rows).broken is None
    return [json.loads(body) for _, body, _ in rows]


async def all_events(writer: AuditWriter, db_path: Path) -> list[dict[str, Any]]:
    """Every event, results included (they are queued, not awaited): drain the writer first."""
    await writer.close()
    return stored(db_path)


def of_type(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["type"] == kind]


# ---- startup -------------------------------------------------------------------------------


async def test_startup_is_forwarded_unchanged_and_first_ready_ends_it_without_a_result(
    inspector: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    forwarded = await inspector.from_client(STARTUP)

    assert forwarded == STARTUP
    assert inspector.startup_params == {"user": "alice", "database": "app"}

    login = login_reply()
    assert await inspector.from_agent(login.frame()) == [bytes(login.data)]
    assert inspector.take_synthetic() == []
    assert await all_events(writer, db_path) == []


async def test_target_bytes_without_marks_pass_through(inspector: PgInspector) -> None:
    await inspector.from_client(STARTUP)
    challenge = pgm.authentication_request(pgm.AUTH_MD5_PASSWORD, b"salt")

    assert await inspector.from_agent(tunnel_pb2.Frame(data=challenge)) == [challenge]
    assert await inspector.from_agent(tunnel_pb2.Frame()) == []


async def test_ssl_request_is_answered_no_by_the_gateway_and_not_forwarded(
    inspector: PgInspector, wakes: Wakes
) -> None:
    assert await inspector.from_client(pgm.ssl_request()) == b""

    assert wakes.count == 1
    assert inspector.take_synthetic() == [b"N"]
    assert inspector.take_synthetic() == []
    # the client then retries its startup in the clear, which goes through
    assert await inspector.from_client(STARTUP) == STARTUP


async def test_password_message_is_never_forwarded_nor_recorded(
    inspector: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await inspector.from_client(STARTUP)

    assert await inspector.from_client(pgm.password_message(b"hunter2")) == b""

    await inspector.from_agent(login_reply().frame())
    conn = sqlite3.connect(db_path)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert "hunter2" not in dump


async def test_cancel_request_inside_a_session_is_a_protocol_error(
    inspector: PgInspector,
) -> None:
    with pytest.raises(framing.ProtocolError, match="CancelRequest"):
        await inspector.from_client(pgm.cancel_request(4242, b"\x01\x02\x03\x04"))


async def test_unknown_message_type_is_a_protocol_error(ready: PgInspector) -> None:
    with pytest.raises(framing.ProtocolError, match="'x'"):
        await ready.from_client(_msg(b"x", b"whatever"))


async def test_a_parse_read_once_is_still_decided_every_time(ready: PgInspector) -> None:
    """Parse messages are remembered by their bytes (drivers repeat them); a malformed one is
    refused every time, and each of the same bytes is still held and released."""
    message = parse("select 1", "s1")
    assert pg_module._read_parse(message) is pg_module._read_parse(message)
    assert pg_module._read_parse(message) == pgm.parse_parse(memoryview(message)[5:])
    broken = _msg(b"P", b"s2\0select 1")  # no NUL after the text, no type count
    for _ in range(2):
        with pytest.raises(framing.ProtocolError, match="Parse"):
            pg_module._read_parse(broken)
    for _ in range(2):
        assert await ready.from_client(message) == b""  # held until its Sync
        assert await ready.from_client(pgm.sync()) == message + pgm.sync()


async def test_terminate_is_forwarded(ready: PgInspector) -> None:
    assert await ready.from_client(pgm.terminate()) == pgm.terminate()


# ---- simple protocol -----------------------------------------------------------------------


async def test_simple_query_is_committed_before_it_is_forwarded(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    message = pgm.query("SELECT * FROM accounts")

    forwarded = await ready.from_client(message)

    assert forwarded == message
    events = stored(db_path)  # no draining: strict mode already committed it
    assert len(events) == 1
    query = events[0]
    assert query["type"] == "db.query"
    assert query["seq"] == 1
    assert query["request"] == {"statement": "SELECT * FROM accounts", "protocol": "simple"}
    assert query["decision"] == {"result": "allow"}
    assert query["session_id"] == "sess-1"
    assert query["user"] == {"sub": "alice", "email": "alice@example.com", "groups": ["dba"]}
    assert query["connection"] == {"name": "pg-prod", "type": "postgres"}
    assert query["audit_mode"] == "strict"
    assert query["source"] == {"ip": "192.0.2.10"}
    assert ready.statements == 1


async def test_complete_and_ready_marks_record_one_result_for_the_query(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await ready.from_client(pgm.query("SELECT n FROM t"))
    reply = select_reply(3)

    assert await ready.from_agent(reply.frame()) == [bytes(reply.data)]

    events = await all_events(writer, db_path)
    [query] = of_type(events, "db.query")
    [result] = of_type(events, "db.result")
    assert result["ref"] == query["seq"]
    assert result["session_id"] == "sess-1"
    assert result["result"]["rows"] == 3
    assert result["result"]["error"] is None
    assert result["result"]["command"] == "SELECT"
    assert result["result"]["masked"] is False
    assert result["result"]["duration_ms"] >= 0


async def test_error_mark_records_the_sqlstate_as_the_result_error(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await ready.from_client(pgm.query("SELECT * FROM nope"))
    reply = Reply().error("42P01", 'relation "nope" does not exist').ready("I")

    assert await ready.from_agent(reply.frame()) == [bytes(reply.data)]

    [result] = of_type(await all_events(writer, db_path), "db.result")
    assert result["ref"] == 1
    assert result["result"]["error"] == "42P01"
    assert result["result"]["message"] == 'relation "nope" does not exist'
    assert result["result"]["rows"] is None


async def test_marks_split_across_frames_still_resolve_the_query(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await ready.from_client(pgm.query("DELETE FROM t"))
    first = Reply().complete("DELETE 4", 4)
    second = Reply().ready("I")

    assert await ready.from_agent(first.frame()) == [bytes(first.data)]
    assert await ready.from_agent(second.frame()) == [bytes(second.data)]

    [result] = of_type(await all_events(writer, db_path), "db.result")
    assert result["result"]["rows"] == 4
    assert result["result"]["command"] == "DELETE"


async def test_consecutive_queries_each_get_their_own_result(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await ready.from_client(pgm.query("SELECT 1"))
    await ready.from_agent(select_reply(1).frame())
    await ready.from_client(pgm.query("SELECT 2"))
    await ready.from_agent(select_reply(2).frame())

    events = await all_events(writer, db_path)
    queries = of_type(events, "db.query")
    results = {r["ref"]: r["result"]["rows"] for r in of_type(events, "db.result")}
    assert [q["request"]["statement"] for q in queries] == ["SELECT 1", "SELECT 2"]
    assert results == {queries[0]["seq"]: 1, queries[1]["seq"]: 2}


# ---- extended protocol ---------------------------------------------------------------------


async def test_extended_pipeline_is_held_until_sync_then_forwarded_whole(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    sql_text = "SELECT * FROM accounts WHERE id = $1 AND owner = $2"
    messages = [parse(sql_text), bind([b"42", None]), execute()]

    for message in messages:
        assert await ready.from_client(message) == b""
    assert stored(db_path) == []
    assert writer.committed == 0

    forwarded = await ready.from_client(pgm.sync())

    assert forwarded == b"".join([*messages, pgm.sync()])
    [query] = stored(db_path)
    assert query["type"] == "db.query"
    assert query["request"] == {
        "statement": sql_text,
        "protocol": "extended",
        "params": ["42", None],
    }


async def test_extended_pipeline_in_one_chunk_is_forwarded_after_its_commit(
    ready: PgInspector, db_path: Path
) -> None:
    data = parse("SELECT $1") + bind([b"x"]) + execute() + pgm.sync()

    assert await ready.from_client(data) == data
    assert len(stored(db_path)) == 1


async def test_binary_parameters_are_recorded_as_base64(ready: PgInspector, db_path: Path) -> None:
    value = b"\x00\x01\xfe\xff"
    data = parse("SELECT $1::bytea") + bind([value], formats=(1,)) + execute() + pgm.sync()

    await ready.from_client(data)

    [query] = stored(db_path)
    assert query["request"]["params"] == ["base64:" + base64.b64encode(value).decode()]


async def test_long_parameters_are_truncated_in_the_event(
    ready: PgInspector, db_path: Path
) -> None:
    data = parse("SELECT $1") + bind([b"a" * 1000]) + execute() + pgm.sync()

    assert await ready.from_client(data) == data  # the target still gets the whole value

    [query] = stored(db_path)
    [param] = query["request"]["params"]
    assert param.startswith("a" * 256)
    assert len(param) < 300


async def test_two_executes_in_one_sync_give_two_queries_resolved_in_order(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    data = (
        parse("SELECT * FROM t WHERE k = $1", name="s1")
        + bind([b"first"], portal="p1", statement="s1")
        + execute("p1")
        + bind([b"second"], portal="p2", statement="s1")
        + execute("p2")
        + pgm.sync()
    )
    # The first Execute may run code that prepares s1 again: the gateway Parses it again.
    cut = data.index(bind([b"second"], portal="p2", statement="s1"))
    own = _msg(b"C", b"Ss1\0") + parse("SELECT * FROM t WHERE k = $1", name="s1")
    assert await ready.from_client(data) == data[:cut] + own + data[cut:]
    queries = stored(db_path)
    assert [q["request"]["params"] for q in queries] == [["first"], ["second"]]
    assert [q["seq"] for q in queries] == [1, 2]

    reply = Reply().parsed().bound()
    reply.raw(pgm.data_row([b"1"])).raw(pgm.data_row([b"2"])).complete("SELECT 2", 2)
    seen = bytes(reply.data)
    reply.ack(CLOSE_COMPLETE, Mark.CLOSE_COMPLETE).parsed()
    cut = len(reply.data)
    reply.bound().complete("SELECT 5", 5).ready("I")
    later = bytes(reply.data[cut:])
    assert b"".join(await ready.from_agent(reply.frame())) == seen + later

    results = of_type(await all_events(writer, db_path), "db.result")
    assert [(r["ref"], r["result"]["rows"]) for r in results] == [(1, 2), (2, 5)]
    assert all(r["result"]["error"] is None for r in results)


async def test_executes_after_an_error_in_their_pipeline_are_recorded_as_skipped(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    data = (
        parse("INSERT INTO t VALUES ($1)", name="s1")
        + bind([b"1"], statement="s1")
        + execute()
        + bind([b"1"], statement="s1")
        + execute()
        + pgm.sync()
    )
    await ready.from_client(data)
    reply = Reply().raw(PARSE_COMPLETE).raw(BIND_COMPLETE).error("23505", "duplicate key")
    await ready.from_agent(reply.ready("I").frame())

    results = of_type(await all_events(writer, db_path), "db.result")
    assert [(r["ref"], r["result"]["error"]) for r in results] == [(1, "23505"), (2, "skipped")]


async def test_describe_and_close_are_held_with_their_pipeline_and_record_nothing(
    ready: PgInspector, db_path: Path
) -> None:
    describe = _msg(b"D", b"Ss1\0")
    close = _msg(b"C", b"Ss1\0")

    assert await ready.from_client(parse("SELECT 1", name="s1") + describe) == b""
    assert await ready.from_client(close) == b""
    forwarded = await ready.from_client(pgm.sync())

    assert forwarded == parse("SELECT 1", name="s1") + describe + close + pgm.sync()
    assert stored(db_path) == []


# ---- refusals ------------------------------------------------------------------------------


async def test_query_refused_by_the_audit_store_is_not_forwarded_and_answered_with_an_error(
    ready: PgInspector, wakes: Wakes, db_path: Path
) -> None:
    sql(db_path, REFUSE_INSERTS)
    wakes.count = 0

    assert await ready.from_client(pgm.query("DROP TABLE accounts")) == b""

    assert wakes.count == 1
    answer = backend_messages(ready.take_synthetic())
    assert [tag for tag, _ in answer] == ["E", "Z"]
    error = pgm.parse_error_fields(answer[0][1])
    assert error.sqlstate == "58000"
    assert "not sent" in error.message
    assert "audit disk is full" in error.message
    assert pgm.parse_ready_for_query(answer[1][1]) == "I"
    assert ready.take_synthetic() == []
    assert stored(db_path) == []
    assert ready.statements == 0


async def test_refused_extended_pipeline_forwards_nothing_and_answers_at_sync(
    ready: PgInspector, db_path: Path
) -> None:
    sql(db_path, REFUSE_INSERTS)
    data = parse("DELETE FROM t WHERE id = $1") + bind([b"1"]) + execute() + pgm.sync()

    assert await ready.from_client(data) == b""

    answer = backend_messages(ready.take_synthetic())
    assert [tag for tag, _ in answer] == ["E", "Z"]
    assert pgm.parse_error_fields(answer[0][1]).sqlstate == "58000"


async def test_session_goes_on_once_the_audit_store_recovers(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    sql(db_path, REFUSE_INSERTS)
    assert await ready.from_client(pgm.query("SELECT 1")) == b""
    ready.take_synthetic()
    sql(db_path, ALLOW_INSERTS)

    message = pgm.query("SELECT 2")
    assert await ready.from_client(message) == message
    await ready.from_agent(select_reply(1).frame())

    events = await all_events(writer, db_path)
    assert [e["request"]["statement"] for e in of_type(events, "db.query")] == ["SELECT 2"]
    [result] = of_type(events, "db.result")
    assert result["ref"] == 1


async def test_refusal_waits_behind_the_query_in_flight(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    first = pgm.query("SELECT pg_sleep(1)")
    assert await ready.from_client(first) == first
    sql(db_path, REFUSE_INSERTS)

    assert await ready.from_client(pgm.query("SELECT 2")) == b""
    assert ready.take_synthetic() == []  # the target has not answered the first query yet
    sql(db_path, ALLOW_INSERTS)

    partial = Reply().raw(pgm.row_description([pgm.Column("pg_sleep")]))
    assert await ready.from_agent(partial.frame()) == [bytes(partial.data)]
    assert ready.take_synthetic() == []

    rest = Reply().raw(pgm.data_row([b""])).complete("SELECT 1", 1).ready("I")
    chunks = await ready.from_agent(rest.frame())

    assert chunks[0] == bytes(rest.data)
    assert [tag for tag, _ in backend_messages(chunks[1:])] == ["E", "Z"]
    assert backend_messages(chunks) == [
        *backend_messages([bytes(rest.data)]),
        *backend_messages(chunks[1:]),
    ]
    [result] = of_type(await all_events(writer, db_path), "db.result")
    assert result["ref"] == 1
    assert result["result"]["rows"] == 1


async def test_target_bytes_after_ready_follow_the_released_answer(
    ready: PgInspector, db_path: Path
) -> None:
    first = pgm.query("SELECT 1")
    await ready.from_client(first)
    sql(db_path, REFUSE_INSERTS)
    await ready.from_client(pgm.query("SELECT 2"))
    sql(db_path, ALLOW_INSERTS)
    notice = pgm.notice_response(sqlstate="01000", message="later")

    chunks = await ready.from_agent(select_reply(1).raw(notice).frame())

    assert [tag for tag, _ in backend_messages(chunks)] == ["T", "D", "C", "Z", "E", "Z", "N"]


async def test_fast_path_function_call_is_refused_as_not_supported(
    ready: PgInspector, db_path: Path
) -> None:
    call = _msg(b"F", struct.pack("!i", 1234) + struct.pack("!hhh", 0, 0, 0))

    assert await ready.from_client(call) == b""

    answer = backend_messages(ready.take_synthetic())
    assert [tag for tag, _ in answer] == ["E", "Z"]
    assert pgm.parse_error_fields(answer[0][1]).sqlstate == "0A000"
    assert stored(db_path) == []


# ---- refusals inside transactions and pipelines ----------------------------------------


async def test_refusal_queued_behind_begin_reports_the_open_transaction(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(pgm.query("BEGIN"))
    sql(db_path, REFUSE_INSERTS)
    await ready.from_client(pgm.query("UPDATE t SET x = 1"))
    sql(db_path, ALLOW_INSERTS)

    chunks = await ready.from_agent(Reply().complete("BEGIN").ready("T").frame())

    messages = backend_messages(chunks)
    assert [tag for tag, _ in messages] == ["C", "Z", "E", "Z"]
    assert pgm.parse_ready_for_query(messages[1][1]) == "T"
    # The target is inside a transaction; the gateway's answer must say so.
    assert pgm.parse_ready_for_query(messages[3][1]) in ("T", "E")


async def test_sync_after_a_refused_flush_batch_still_reaches_the_target(
    ready: PgInspector, db_path: Path
) -> None:
    batch1 = parse("SELECT 1", name="s1") + bind([], statement="s1") + execute() + flush()
    assert await ready.from_client(batch1) == batch1  # committed, forwarded, cycle left open
    sql(db_path, REFUSE_INSERTS)
    assert await ready.from_client(bind([], statement="s1") + execute() + flush()) == b""

    forwarded = await ready.from_client(pgm.sync())

    # Without a Sync the target never sends ReadyForQuery for batch 1, and the refusal's
    # ErrorResponse + ReadyForQuery stay queued behind it for ever.
    assert forwarded.endswith(pgm.sync())

    chunks = await ready.from_agent(Reply().complete("SELECT 1").ready("I").frame())
    messages = backend_messages(chunks)
    # Batch 1's result, then the refusal of batch 2, then the one ReadyForQuery for the Sync.
    assert [tag for tag, _ in messages] == ["C", "E", "Z"]
    assert pgm.parse_error_fields(messages[1][1]).sqlstate == "58000"


async def test_typed_binary_parameters_are_recorded_as_text(
    ready: PgInspector, db_path: Path
) -> None:
    # Parse naming int4 and bool, as psycopg and asyncpg do for binary parameters.
    name, sql_text = b"", b"SELECT $1, $2"
    body = name + b"\x00" + sql_text + b"\x00" + struct.pack("!hII", 2, 23, 16)
    typed_parse = b"P" + struct.pack("!i", len(body) + 4) + body
    data = typed_parse + bind([struct.pack("!i", -41), b"\x01"], formats=(1,)) + execute()

    await ready.from_client(data + pgm.sync())

    [query] = stored(db_path)
    assert query["request"]["params"] == ["-41", "t"]


async def test_credentials_in_parameters_never_reach_the_event(
    ready: PgInspector, db_path: Path
) -> None:
    key = "AKIAIOSFODNN7EXAMPLE"
    data = parse("INSERT INTO keys VALUES ($1)") + bind([key.encode()]) + execute() + pgm.sync()

    assert await ready.from_client(data) == data  # the target still gets the value

    [query] = stored(db_path)
    [param] = query["request"]["params"]
    assert key not in param
    assert param.startswith("AKIA")


async def test_parameters_go_through_the_connections_detectors(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, db_path: Path
) -> None:
    inspector = PgInspector(ctx, writer, wakes, redact=DetectorSet(["email", "secret"]))
    assert await inspector.from_client(STARTUP) == STARTUP
    await inspector.from_agent(login_reply().frame())
    data = parse("SELECT $1, $2") + bind([b"bob@example.com", b"42"]) + execute() + pgm.sync()

    await inspector.from_client(data)

    [query] = stored(db_path)
    assert query["request"]["params"] == ["***@example.com", "42"]


# ---- names are what the target confirmed (decision 0010) -----------------------------------


def close_statement(name: str) -> bytes:
    return _msg(b"C", b"S" + name.encode() + b"\0")


def error_of(chunks: list[bytes]) -> pgm.ErrorFields:
    [fields] = [
        pgm.parse_error_fields(body) for tag, body in backend_messages(chunks) if tag == "E"
    ]
    return fields


async def test_a_parse_the_target_rejected_does_not_rename_the_statement(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(parse("select 2", "s1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())
    await ready.from_client(parse("select 1", "s1") + pgm.sync())  # the target says 42P05
    await ready.from_agent(
        Reply().error("42P05", 'prepared statement "s1" already exists').ready().frame()
    )

    data = bind([], statement="s1") + execute() + pgm.sync()
    assert await ready.from_client(data) == data

    [query] = stored(db_path)
    assert query["request"]["statement"] == "select 2"


async def test_a_denied_statement_is_refused_at_parse(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, db_path: Path
) -> None:
    guard = SqlGuard([Guardrail.model_validate({"name": "g", "deny_statements": ["DROP"]})])
    inspector = PgInspector(ctx, writer, wakes, guard=guard)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())

    assert await inspector.from_client(parse("drop table t", "s1") + pgm.sync()) == b""

    assert error_of(inspector.take_synthetic()).sqlstate == "42501"
    [query] = stored(db_path)
    assert query["request"]["statement"] == "drop table t"
    assert query["decision"]["result"] == "deny"


@pytest.mark.parametrize(
    ("data", "sqlstate"),
    [
        (bind([], statement="nobody") + execute() + pgm.sync(), "26000"),
        (execute("nothing") + pgm.sync(), "34000"),
        (pgm.query("EXECUTE nobody(1)"), "26000"),
        (pgm.query("explain analyze execute nobody"), "26000"),
    ],
)
async def test_a_name_the_target_does_not_hold_is_refused(
    ready: PgInspector, db_path: Path, data: bytes, sqlstate: str
) -> None:
    assert await ready.from_client(data) == b""

    assert error_of(ready.take_synthetic()).sqlstate == sqlstate
    [query] = stored(db_path)
    assert query["decision"]["result"] == "deny"


async def test_a_statement_closed_earlier_in_the_pipeline_is_unknown(
    ready: PgInspector,
) -> None:
    await ready.from_client(parse("select 2", "s1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())

    data = close_statement("s1") + bind([], statement="s1") + execute() + pgm.sync()
    assert await ready.from_client(data) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "26000"


async def test_a_parse_of_the_same_pipeline_is_certain(ready: PgInspector, db_path: Path) -> None:
    data = parse("select 3", "s2") + bind([], statement="s2") + execute() + pgm.sync()
    assert await ready.from_client(data) == data
    [query] = stored(db_path)
    assert query["request"]["statement"] == "select 3"


async def test_a_bind_waits_while_an_earlier_pipeline_may_change_its_statement(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(parse("select 1", "s1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())
    first = parse("select 2", "s1") + pgm.sync()  # not answered yet: may fail, may not
    assert await ready.from_client(first) == first

    data = bind([], statement="s1") + execute() + pgm.sync()
    task = asyncio.create_task(ready.from_client(data))
    await asyncio.sleep(0.05)
    assert not task.done()

    await ready.from_agent(Reply().error("42P05", "already exists").ready().frame())
    assert await asyncio.wait_for(task, 5) == data
    [query] = stored(db_path)
    assert query["request"]["statement"] == "select 1"


async def test_the_unnamed_portal_ends_at_sync(ready: PgInspector) -> None:
    await ready.from_client(parse("select 1") + bind([]) + describe_portal() + pgm.sync())
    await ready.from_agent(
        Reply().parsed().bound().ack(b"n\0\0\0\4", Mark.DESCRIBED).ready().frame()
    )

    assert await ready.from_client(execute() + pgm.sync()) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "34000"


def describe_portal(name: str = "") -> bytes:
    return _msg(b"D", b"P" + name.encode() + b"\0")


async def test_sql_prepare_and_execute_record_the_prepared_text(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(pgm.query("PREPARE p(int) AS select $1 + 1"))
    await ready.from_agent(Reply().complete("PREPARE").ready().frame())

    query = pgm.query("EXECUTE p(41)")
    assert await ready.from_client(query) == query
    # The protocol shares the namespace: Bind may use a statement SQL prepared.
    # The EXECUTE, still unanswered, may run code that prepares p again: its text is unknown.
    data = bind([b"1"], statement="p") + execute() + pgm.sync()
    assert await ready.from_client(data) == data

    _, simple, extended = of_type(stored(db_path), "db.query")
    assert simple["request"]["statement"] == "EXECUTE p(41)"
    assert simple["request"]["prepared"] == {"p": "PREPARE p(int) AS select $1 + 1"}
    assert extended["request"]["statement"] == ""
    assert extended["request"]["prepared_unknown"] == {"p": "PREPARE p(int) AS select $1 + 1"}


async def test_a_bind_after_code_binds_the_recorded_text_parsed_again(
    ready: PgInspector, db_path: Path
) -> None:
    """Code may have deallocated s1 and prepared another text under its name: the gateway
    Parses the text it recorded again right before the Bind; the client never sees it."""
    first = parse("select f($1)", name="s1") + bind([b"1"], statement="s1") + execute()
    assert await ready.from_client(first + pgm.sync()) == first + pgm.sync()
    reply = Reply().parsed().bound().complete("SELECT 1", 1).ready()
    assert await ready.from_agent(reply.frame()) == [bytes(reply.data)]

    again = bind([b"2"], statement="s1") + execute() + pgm.sync()
    own = _msg(b"C", b"Ss1\0") + parse("select f($1)", name="s1")
    assert await ready.from_client(again) == own + again
    # The answers to our Close and Parse arrive split across frames, and are taken out.
    answer = Reply().ack(CLOSE_COMPLETE, Mark.CLOSE_COMPLETE).parsed()
    answer.bound().complete("SELECT 1", 1).ready()
    head = tunnel_pb2.Frame(data=bytes(answer.data[:3]))
    tail = tunnel_pb2.Frame(data=bytes(answer.data[3:]), marks=answer.marks)
    for mark in tail.marks:
        mark.end -= 3
    assert await ready.from_agent(head) == []
    assert b"".join(await ready.from_agent(tail)) == bytes(answer.data[10:])

    *_, repeated = of_type(stored(db_path), "db.query")
    assert repeated["request"]["statement"] == "select f($1)"
    assert repeated["request"]["params"] == ["2"]


async def test_deallocate_forgets_the_statement_once_it_completed(ready: PgInspector) -> None:
    await ready.from_client(pgm.query("PREPARE p AS select 1"))
    await ready.from_agent(Reply().complete("PREPARE").ready().frame())
    await ready.from_client(pgm.query("DEALLOCATE p"))
    await ready.from_agent(Reply().complete("DEALLOCATE").ready().frame())

    assert await ready.from_client(pgm.query("EXECUTE p")) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "26000"


async def test_a_cursor_is_known_until_its_transaction_ends(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(pgm.query("BEGIN; DECLARE c CURSOR FOR select 1"))
    await ready.from_agent(Reply().complete("BEGIN").complete("DECLARE CURSOR").ready("T").frame())

    fetch = pgm.query("FETCH 1 FROM c")
    assert await ready.from_client(fetch) == fetch
    await ready.from_agent(select_reply(1, "T").frame())
    await ready.from_client(pgm.query("COMMIT"))
    await ready.from_agent(Reply().complete("COMMIT").ready("I").frame())

    # Gone as far as the gateway knows; whether code opened one by that name, only the server
    # knows: without guardrails it answers, and the trail claims no text for it.
    assert await ready.from_client(fetch) == fetch
    events = of_type(stored(db_path), "db.query")
    assert events[1]["request"]["cursors"] == {"c": "DECLARE c CURSOR FOR select 1"}
    assert "cursors" not in events[-1]["request"]
    assert events[-1]["request"]["cursors_unknown"] == {"c": None}


async def test_a_prepare_that_failed_is_not_known(ready: PgInspector) -> None:
    await ready.from_client(pgm.query("PREPARE p AS select 1; PREPARE p AS select 2"))
    # The first one ran, the second failed: p is the first.
    await ready.from_agent(Reply().complete("PREPARE").error("42P05", "exists").ready().frame())
    await ready.from_client(pgm.query("select 1; PREPARE q AS select 3"))
    await ready.from_agent(Reply().error("42601", "error").ready().frame())

    assert await ready.from_client(pgm.query("EXECUTE q")) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "26000"


# ---- lexical settings -------------------------------------------------------------------------


async def test_text_pipelined_behind_a_settings_change_waits_and_is_read_as_the_target_will(
    ready: PgInspector, early: Forwarded, db_path: Path
) -> None:
    change = pgm.query("SET client_encoding TO 'GBK'")
    hidden = pgm.query("select E'\u00e9\\'; DROP TABLE t; --'")
    task = asyncio.create_task(ready.from_client(change + hidden))
    await asyncio.sleep(0.05)
    assert not task.done()
    assert early == [change]  # what was decided went out; the rest waits for its answer

    await ready.from_agent(
        Reply().parameter("client_encoding", "GBK").complete("SET").ready().frame()
    )
    assert await asyncio.wait_for(task, 5) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "22021"
    assert "GBK" in error.message
    events = of_type(stored(db_path), "db.query")
    assert events[-1]["decision"]["result"] == "deny"


async def test_a_backslash_with_standard_conforming_strings_off_is_refused(
    ready: PgInspector,
) -> None:
    await ready.from_client(
        pgm.query("select set_config('standard_conforming_strings','off',false)")
    )
    await ready.from_agent(
        Reply()
        .parameter("standard_conforming_strings", "off")
        .complete("SELECT 1", 1)
        .ready()
        .frame()
    )

    assert await ready.from_client(pgm.query("select 'a\\'; drop table t; --'")) == b""
    error = error_of(ready.take_synthetic())
    assert "standard_conforming_strings" in error.message
    plain = pgm.query("select 'plain ascii'")
    assert await ready.from_client(plain) == plain


async def test_text_after_an_unsynced_execute_is_refused_not_read_under_stale_settings(
    ready: PgInspector, early: Forwarded
) -> None:
    """PostgreSQL (14 and later) reports a setting a statement changed only at the next
    ReadyForQuery, never at a Flush: text behind an Execute of the same pipeline cannot be
    read as the server will read it, so the pipeline is refused and nothing of it is sent."""
    change = (
        parse("select set_config('standard_conforming_strings','off',false)") + bind([]) + execute()
    )
    later = parse("select 'x\\'") + bind([]) + execute() + pgm.sync()
    assert await asyncio.wait_for(ready.from_client(change + later), 2) == b""
    assert early == []
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "22021"
    assert "send a Sync before this statement" in error.message
    synced = parse("select 'x\\'") + bind([]) + execute() + pgm.sync()
    assert await asyncio.wait_for(ready.from_client(synced), 2) == synced  # after a Sync: read


async def test_unsensitive_text_does_not_wait(ready: PgInspector) -> None:
    first = pgm.query("select pg_sleep(10)")
    second = pgm.query("select 2")
    assert await asyncio.wait_for(ready.from_client(first + second), 1) == first + second


# ---- limits -----------------------------------------------------------------------------------


async def test_a_batch_without_sync_is_bounded(ready: PgInspector) -> None:
    chunk = parse("select '" + "x" * 1_000_000 + "'")
    with pytest.raises(framing.ProtocolError, match="without a Sync"):
        for _ in range(20):
            await ready.from_client(chunk)


async def test_prepared_statements_per_session_are_bounded(
    ready: PgInspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_names_module, "MAX_NAMES", 2)
    monkeypatch.setattr(pg_module, "MAX_NAMES", 2)
    for name in ("a", "b"):
        await ready.from_client(parse("select 1", name) + pgm.sync())
        await ready.from_agent(Reply().parsed().ready().frame())
    assert await ready.from_client(parse("select 1", "c") + pgm.sync()) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "54000"


async def test_a_failed_unnamed_parse_drops_the_old_unnamed_statement(ready: PgInspector) -> None:
    await ready.from_client(parse("select 1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())
    await ready.from_client(parse("selec oops") + pgm.sync())
    await ready.from_agent(Reply().error("42601", "syntax error").ready().frame())

    assert await ready.from_client(bind([]) + execute() + pgm.sync()) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "26000"


async def test_a_parse_skipped_after_an_error_keeps_the_old_unnamed_statement(
    ready: PgInspector, db_path: Path
) -> None:
    await ready.from_client(parse("select 1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())
    await ready.from_client(
        parse("select 1/0", "x")
        + bind([], statement="x")
        + execute()
        + parse("select 2")
        + pgm.sync()
    )
    await ready.from_agent(
        Reply().parsed().bound().error("22012", "division by zero").ready().frame()
    )

    data = bind([]) + execute() + pgm.sync()
    assert await ready.from_client(data) == data
    assert of_type(stored(db_path), "db.query")[-1]["request"]["statement"] == "select 1"


async def test_settings_reported_at_login_apply_from_the_first_statement(
    inspector: PgInspector,
) -> None:
    await inspector.from_client(STARTUP)
    # e.g. options=-c standard_conforming_strings=off in the startup packet
    login = (
        Reply()
        .raw(pgm.authentication_ok())
        .parameter("client_encoding", "UTF8")
        .parameter("standard_conforming_strings", "off")
        .ready()
    )
    await inspector.from_agent(login.frame())

    assert await inspector.from_client(pgm.query("select 'a\\''; drop table t; --'")) == b""
    assert error_of(inspector.take_synthetic()).sqlstate == "22021"


async def test_text_pipelined_behind_the_startup_waits_for_its_settings(
    inspector: PgInspector,
) -> None:
    hidden = pgm.query("select 'é'")
    task = asyncio.create_task(inspector.from_client(STARTUP + hidden))
    await asyncio.sleep(0.05)
    assert not task.done()
    await inspector.from_agent(login_reply().frame())
    assert await asyncio.wait_for(task, 5) == hidden


async def test_answers_that_do_not_match_the_requests_end_the_session(ready: PgInspector) -> None:
    with pytest.raises(framing.ProtocolError, match="do not match"):
        await ready.from_agent(Reply().parsed().frame())


@pytest.mark.parametrize(
    "before",
    [parse("select 1"), bind([], statement="nobody"), parse("select 1") + flush()],
    ids=["held", "refused", "flushed"],
)
async def test_a_simple_query_inside_an_unfinished_pipeline_ends_the_session(
    ready: PgInspector, before: bytes
) -> None:
    await ready.from_client(before)
    with pytest.raises(framing.ProtocolError, match="send Sync first"):
        await ready.from_client(pgm.query("select 2"))


async def test_a_refused_pipeline_whose_start_was_flushed_still_sends_its_sync(
    ready: PgInspector,
) -> None:
    start = parse("select 1") + flush()
    assert await ready.from_client(start) == start
    assert await ready.from_client(bind([], statement="nobody") + pgm.sync()) == pgm.sync()

    chunks = await ready.from_agent(Reply().parsed().ready().frame())
    assert [tag for tag, _ in backend_messages(chunks)] == ["1", "E", "Z"]


async def test_a_statement_too_deep_to_read_its_names_is_refused(ready: PgInspector) -> None:
    deep = "select " + "array[" * 1000 + "1" + "]" * 1000 + " as close"
    assert await ready.from_client(pgm.query(deep)) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "54001"


async def test_requests_in_flight_are_bounded_by_waiting_for_answers(
    ready: PgInspector, early: Forwarded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pg_module, "MAX_IN_FLIGHT", 4)
    one = parse("select 1") + pgm.sync()  # two requests: Parse and Sync
    task = asyncio.create_task(ready.from_client(one * 3))
    await asyncio.sleep(0.05)
    assert not task.done()
    assert early == [one * 2]  # four unanswered: the third waits

    await ready.from_agent(Reply().parsed().ready().parsed().ready().frame())
    assert await asyncio.wait_for(task, 5) == one


async def test_after_a_failure_in_a_flushed_pipeline_nothing_waits_for_skipped_messages(
    ready: PgInspector, early: Forwarded, writer: AuditWriter, db_path: Path
) -> None:
    """The target skips the rest of a pipeline after a failed message, up to its Sync, and
    answers none of it: text read only once earlier requests were answered must not wait for
    those answers (the session would hang without its ReadyForQuery)."""
    flushed = describe_portal("nosuch") + flush()
    assert await ready.from_client(flushed) == flushed
    await ready.from_agent(Reply().error("34000", 'portal "nosuch" does not exist').frame())

    skipped = parse("select 1") + bind([]) + execute() + flush()
    sensitive = parse("select 'caf\u00e9'") + bind([]) + execute() + pgm.sync()
    forwarded = await asyncio.wait_for(ready.from_client(skipped + sensitive), 2)
    assert b"".join(early) + forwarded == skipped + sensitive

    answer = await ready.from_agent(Reply().ready().frame())
    assert [tag for tag, _ in backend_messages(answer)] == ["Z"]
    results = of_type(await all_events(writer, db_path), "db.result")
    assert [r["result"]["error"] for r in results] == ["skipped", "skipped"]
    # The Sync ended the skipping: the next pipeline is answered and waited for as usual.
    assert await ready.from_client(parse("select 2") + pgm.sync()) != b""
    await ready.from_agent(Reply().parsed().ready().frame())


async def test_a_name_longer_than_the_server_keeps_is_refused(
    ready: PgInspector, early: Forwarded
) -> None:
    """The server keys names by their first 63 bytes: `a…a1` and `a…a2` would be one object."""
    long = "a" * 63 + "1"
    sent = parse("select 1", name=long) + pgm.sync()
    assert await asyncio.wait_for(ready.from_client(sent), 2) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "42622" and "63 bytes" in error.message
    fits = parse("select 1", name="a" * 63) + pgm.sync()
    assert await asyncio.wait_for(ready.from_client(fits), 2) == fits


async def test_a_name_that_is_not_ascii_is_refused(ready: PgInspector, early: Forwarded) -> None:
    """The server converts a name to the database's encoding first: EUC_JP holds one character
    for both U+00A6 and U+FFE4, so `s¦` and `s￤` would be one statement there."""
    sent = parse("select 1", name="s\u00a6") + pgm.sync()
    assert await asyncio.wait_for(ready.from_client(sent), 2) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "42622" and "not ASCII" in error.message


# ---- cursors that code may have re-opened (decision 0010) ----------------------------------

DECLARED = "DECLARE c CURSOR FOR select 1"


def guarded(ctx: SessionContext, writer: AuditWriter, wakes: Wakes) -> PgInspector:
    guard = SqlGuard([Guardrail.model_validate({"name": "g", "deny_statements": ["DROP"]})])
    return PgInspector(ctx, writer, wakes, guard=guard)


async def declared(inspector: PgInspector, cursor: str = DECLARED) -> PgInspector:
    await inspector.from_client(pgm.query(f"BEGIN; {cursor}"))
    await inspector.from_agent(
        Reply().complete("BEGIN").complete("DECLARE CURSOR").ready("T").frame()
    )
    return inspector


async def ran(inspector: PgInspector, sql: str, reply: Reply | None = None) -> None:
    """A simple query, forwarded and answered (in the open transaction)."""
    data = pgm.query(sql)
    assert await inspector.from_client(data) == data
    await inspector.from_agent((reply or select_reply(1, "T")).frame())


async def test_a_cursor_is_not_claimed_after_code_that_may_have_reopened_it(
    ready: PgInspector, db_path: Path
) -> None:
    """select f() may close c and open another cursor named c: the FETCH that follows is
    forwarded (no guardrail has to read it), and the trail names the cursor without a text."""
    await declared(ready)
    await ran(ready, "select now() as before")  # a SELECT may call functions
    fetch = pgm.query("FETCH 1 FROM c")
    assert await ready.from_client(fetch) == fetch

    request = of_type(stored(db_path), "db.query")[-1]["request"]
    assert "cursors" not in request
    assert request["cursors_unknown"] == {"c": DECLARED}


async def test_a_guardrail_that_cannot_read_a_cursor_refuses_its_fetch(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, db_path: Path
) -> None:
    inspector = guarded(ctx, writer, wakes)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())
    await declared(inspector)
    await ran(inspector, "select f()")

    assert await inspector.from_client(pgm.query("MOVE 1 IN c")) == b""
    error = error_of(inspector.take_synthetic())
    assert error.sqlstate == "42501"
    assert 'cursor "c" may have been closed and opened again' in error.message
    assert 'guardrail "g" cannot check' in error.message
    assert "DECLARE it again" in error.message
    [*_, denied] = of_type(stored(db_path), "db.query")
    assert denied["decision"]["rule"] == "(unknown cursor)"
    assert denied["request"]["cursors_unknown"] == {"c": DECLARED}


async def test_a_cursor_a_function_opened_is_read_only_without_guardrails(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, ready: PgInspector, db_path: Path
) -> None:
    """`SELECT f()` returns "<unnamed portal 1>": the gateway never saw its query."""
    fetch = pgm.query('FETCH ALL FROM "<unnamed portal 1>"')
    assert await ready.from_client(fetch) == fetch
    assert of_type(stored(db_path), "db.query")[-1]["request"]["cursors_unknown"] == {
        "<unnamed portal 1>": None
    }

    inspector = guarded(ctx, writer, wakes)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())
    assert await inspector.from_client(fetch) == b""
    error = error_of(inspector.take_synthetic())
    assert error.sqlstate == "42501"
    assert "was not declared through the gateway" in error.message
    assert "RETURNS TABLE or SETOF" in error.message


@pytest.mark.parametrize(
    "between",
    [
        "FETCH 1 FROM c",
        "SET work_mem = '64MB'",
        "SHOW work_mem",
        "SAVEPOINT a",
        "CLOSE other",
        "select 1",
        "SELECT 'x' AS a, NULL, -2.5",
    ],
)
async def test_its_own_fetches_and_statements_that_run_no_code_keep_a_cursor_proven(
    ready: PgInspector, db_path: Path, between: str
) -> None:
    await declared(ready)
    await ran(ready, between)
    fetch = pgm.query("FETCH 1 FROM c")
    assert await ready.from_client(fetch) == fetch
    assert of_type(stored(db_path), "db.query")[-1]["request"]["cursors"] == {"c": DECLARED}


async def test_fetching_another_cursor_runs_its_query_which_may_reopen_this_one(
    ready: PgInspector, db_path: Path
) -> None:
    await declared(ready)
    await declared(ready, "DECLARE d CURSOR FOR select 2")  # planning d may call functions
    await ran(ready, "FETCH 1 FROM d")
    data = pgm.query("FETCH 1 FROM d; FETCH 1 FROM c; FETCH 1 FROM d")
    assert await ready.from_client(data) == data
    request = of_type(stored(db_path), "db.query")[-1]["request"]
    # d was kept by its own FETCH, until c's ran; c was lost to d's DECLARE and FETCH.
    assert "cursors" not in request
    assert request["cursors_unknown"] == {"c": DECLARED, "d": "DECLARE d CURSOR FOR select 2"}


async def test_code_earlier_in_the_same_query_or_still_unanswered_counts_too(
    ready: PgInspector, db_path: Path
) -> None:
    await declared(ready)
    same = pgm.query("select f(); FETCH 1 FROM c")
    assert await ready.from_client(same) == same
    await ready.from_agent(select_reply(1, "T").frame())
    await ran(ready, "FETCH 1 FROM c")  # proven again? No: nothing declared it since
    # Pipelined behind an unanswered statement that may run code: not claimed, not waited for.
    await declared(ready, "DECLARE e CURSOR FOR select 3")
    pipelined = pgm.query("select f()") + pgm.query("FETCH 1 FROM e")
    assert await asyncio.wait_for(ready.from_client(pipelined), 1) == pipelined

    *_, first, second, _declare, _select, third = of_type(stored(db_path), "db.query")
    assert first["request"]["cursors_unknown"] == {"c": DECLARED}
    assert second["request"]["cursors_unknown"] == {"c": DECLARED}
    assert third["request"]["cursors_unknown"] == {"e": "DECLARE e CURSOR FOR select 3"}


async def test_a_commit_after_code_leaves_holdable_cursors_unproven(
    ready: PgInspector, db_path: Path
) -> None:
    """COMMIT runs deferred triggers and each holdable cursor's query (to keep its rows)."""
    held = "DECLARE h CURSOR WITH HOLD FOR select 1"
    await declared(ready, held)
    await ran(ready, "COMMIT", Reply().complete("COMMIT").ready("I"))
    fetch = pgm.query("FETCH 1 FROM h")
    assert await ready.from_client(fetch) == fetch
    assert of_type(stored(db_path), "db.query")[-1]["request"]["cursors_unknown"] == {"h": held}


async def bound_then_code(inspector: PgInspector, portal_text: str = "select 1") -> bytes:
    """Portal p1 bound and executed, executed again (which keeps it), then code that may have
    closed it and opened another portal by its name; the next Execute of p1, to send."""
    await inspector.from_client(pgm.query("BEGIN"))
    await inspector.from_agent(Reply().complete("BEGIN").ready("T").frame())
    bound = parse(portal_text) + bind([], portal="p1") + execute("p1") + pgm.sync()
    assert await inspector.from_client(bound) == bound
    await inspector.from_agent(Reply().parsed().bound().complete("SELECT 1", 1).ready("T").frame())
    again = execute("p1") + pgm.sync()
    assert await inspector.from_client(again) == again
    await inspector.from_agent(Reply().complete("SELECT 0", 0).ready("T").frame())
    await ran(inspector, "select f()")
    return again


async def test_a_portal_that_code_may_have_reopened_runs_with_its_text_unknown(
    ready: PgInspector, db_path: Path
) -> None:
    """What PostgreSQL logs for that Execute is the portal's text as it is now, which may be
    the re-opened one's: the event claims no text, it names the portal and marks its text
    unknown, like a FETCH of such a cursor."""
    again = await bound_then_code(ready)
    assert await ready.from_client(again) == again
    *_, kept, _code, unknown = of_type(stored(db_path), "db.query")
    assert kept["request"]["statement"] == "select 1"
    assert unknown["decision"]["result"] == "allow"
    assert unknown["request"]["statement"] == ""
    assert unknown["request"]["portal"] == "p1"
    assert unknown["request"]["cursors_unknown"] == {"p1": "select 1"}
    assert "cursors" not in unknown["request"]


async def test_a_guardrail_that_cannot_read_a_portal_refuses_its_execute(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, db_path: Path
) -> None:
    inspector = guarded(ctx, writer, wakes)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())
    again = await bound_then_code(inspector)
    assert await inspector.from_client(again) == b""
    error = error_of(inspector.take_synthetic())
    assert error.sqlstate == "42501"
    assert 'portal "p1" may have been closed and opened again' in error.message
    assert 'guardrail "g" cannot check' in error.message
    assert "Bind it again after that code" in error.message
    [*_, denied] = of_type(stored(db_path), "db.query")
    assert denied["decision"]["rule"] == "(unknown cursor)"
    assert denied["request"]["portal"] == "p1"
    assert denied["request"]["cursors_unknown"] == {"p1": "select 1"}


async def test_a_reopened_portal_whose_text_names_cursors_is_refused(
    ready: PgInspector, db_path: Path
) -> None:
    """If it was not re-opened, its own text would fetch c (a second Execute of a FETCH
    portal re-runs nothing, but the first one does): what that does to the names cannot be
    applied without knowing it ran."""
    await declared(ready)
    await ready.from_client(pgm.query("COMMIT"))  # (the portal's own transaction follows)
    await ready.from_agent(Reply().complete("COMMIT").ready("I").frame())
    again = await bound_then_code(ready, "DECLARE d CURSOR FOR select 2")
    assert await ready.from_client(again) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "34000"
    assert "Bind it again" in error.message


async def test_a_bind_that_plans_may_run_code_but_not_one_of_a_utility_statement(
    ready: PgInspector, db_path: Path
) -> None:
    """psycopg reads a server-side cursor with FETCH through the extended protocol."""
    await declared(ready)
    fetch = parse("FETCH 1 FROM c") + bind([]) + execute() + pgm.sync()
    assert await ready.from_client(fetch) == fetch
    planned = parse("select 1 + 1") + bind([]) + execute() + parse("FETCH 1 FROM c")
    planned += bind([]) + execute() + pgm.sync()
    assert await ready.from_client(planned) == planned
    *_, kept, _select, lost = of_type(stored(db_path), "db.query")
    assert kept["request"]["cursors"] == {"c": DECLARED}
    assert lost["request"]["cursors_unknown"] == {"c": DECLARED}


async def test_a_text_whose_names_depend_on_standard_conforming_strings_is_refused(
    ready: PgInspector,
) -> None:
    """A configuration reload changes the setting before the next statement, and PostgreSQL
    reports it only after that statement ran: off, this text replaces s1."""
    hidden = pgm.query("select 'a\\''; prepare s1 as select 'swapped'; --'")
    assert await ready.from_client(hidden) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "22021"
    assert "E'…'" in error.message


async def test_a_setting_reported_in_the_middle_of_a_result_applies_to_the_next_text(
    ready: PgInspector,
) -> None:
    """The ParameterStatus may come between rows (PostgreSQL 13 and older report at once) and
    in a frame of its own: the text behind the statement is read after all of it."""
    change = pgm.query("select set_config('client_encoding', 'LATIN1', false), g")
    hidden = pgm.query("select 'caf\u00e9'")
    task = asyncio.create_task(ready.from_client(change + hidden))
    await asyncio.sleep(0.05)
    first = Reply().raw(pgm.row_description([pgm.Column("n")])).raw(pgm.data_row([b"1"]))
    await ready.from_agent(first.frame())
    await ready.from_agent(Reply().parameter("client_encoding", "LATIN1").frame())
    assert not task.done()
    await ready.from_agent(Reply().raw(pgm.data_row([b"2"])).complete("SELECT 2", 2).frame())
    assert not task.done()
    await ready.from_agent(Reply().ready().frame())
    assert await asyncio.wait_for(task, 5) == b""
    error = error_of(ready.take_synthetic())
    assert error.sqlstate == "22021" and "LATIN1" in error.message


# ---- the session ends with statements in flight --------------------------------------------


async def test_finish_gives_every_statement_in_flight_a_result_saying_why_it_is_unknown(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    """Whatever ended the session (here a revoked token), a statement sent and not answered
    gets a result: outcome unknown, and the reason; one that answered gets its real result."""
    await ready.from_client(pgm.query("SELECT 1") + pgm.query("SELECT pg_sleep(60)"))
    await ready.from_agent(select_reply(1).frame())
    with writer.watching("sess-1") as loss:
        await ready.finish("the token was revoked")
    assert not loss.lost.is_set()
    events = await all_events(writer, db_path)
    first, second = of_type(events, "db.query")
    results = {e["ref"]: e["result"] for e in of_type(events, "db.result")}
    assert results[first["seq"]]["rows"] == 1 and results[first["seq"]]["error"] is None
    assert results[second["seq"]]["error"] == "unknown"
    assert results[second["seq"]]["message"] == (
        "the session ended before the result arrived: the token was revoked"
    )
    assert len(results) == 2


async def test_finish_of_an_idle_session_records_nothing(
    ready: PgInspector, writer: AuditWriter, db_path: Path
) -> None:
    await ready.from_client(pgm.query("SELECT 1"))
    await ready.from_agent(select_reply(1).frame())
    await ready.finish("closed")
    await ready.finish("closed")  # twice: still one result
    assert len(of_type(await all_events(writer, db_path), "db.result")) == 1


async def test_every_statement_in_flight_is_tried_and_a_lost_one_is_reported(
    ctx: SessionContext, writer: AuditWriter, wakes: Wakes, db_path: Path
) -> None:
    """Async mode: the second statement's own event was never committed, so its result has no
    seq to refer to. It is counted and reported as lost, and the third still gets its result
    (the first failure used to stop the others)."""
    from controlplane.audit.events import draft
    from controlplane.audit.writer import AuditUnavailable

    ctx.audit_mode = "async"
    inspector = PgInspector(ctx, writer, wakes)
    await inspector.from_client(STARTUP)
    await inspector.from_agent(login_reply().frame())
    await inspector.from_client(pgm.query("SELECT 'one'"))
    await writer.commit(draft("test.marker"))  # the first query's event is committed
    sql(db_path, REFUSE_INSERTS)
    await inspector.from_client(pgm.query("SELECT 'two'"))
    with pytest.raises(AuditUnavailable):
        await writer.commit(draft("test.marker"))  # the second one's commit failed with it
    sql(db_path, ALLOW_INSERTS)
    await inspector.from_client(pgm.query("SELECT 'three'"))
    with writer.watching("sess-1") as loss:
        await inspector.finish("the login expired")
    assert (loss.count, writer.result_failures) == (1, 1)
    assert "db.result could not be recorded" in loss.reason
    events = await all_events(writer, db_path)
    texts = {e["seq"]: e["request"]["statement"] for e in of_type(events, "db.query")}
    assert sorted(texts.values()) == ["SELECT 'one'", "SELECT 'three'"]
    results = of_type(events, "db.result")
    assert sorted(texts[r["ref"]] for r in results) == ["SELECT 'one'", "SELECT 'three'"]
    assert all(r["result"]["error"] == "unknown" for r in results)


@pytest.mark.parametrize(
    ("sql", "key", "name", "texts"),
    [
        (
            "PREPARE p AS select 1; EXECUTE p; DEALLOCATE p; PREPARE p AS select 2; EXECUTE p",
            "prepared",
            "p",
            ["PREPARE p AS select 1", "PREPARE p AS select 2"],
        ),
        (
            "BEGIN; DECLARE c CURSOR FOR select 1; FETCH c; CLOSE c; "
            "DECLARE c CURSOR FOR select 2; FETCH c; FETCH c",
            "cursors",
            "c",
            ["DECLARE c CURSOR FOR select 1", "DECLARE c CURSOR FOR select 2"],
        ),
    ],
)
async def test_a_name_used_for_two_texts_in_one_query_maps_to_both(
    ready: PgInspector, db_path: Path, sql: str, key: str, name: str, texts: list[str]
) -> None:
    """One event for the query: the name stood for one text, then another; claiming the last
    for every use would misstate what the first ran."""
    assert await ready.from_client(pgm.query(sql)) == pgm.query(sql)
    [query] = of_type(stored(db_path), "db.query")
    assert query["request"][key] == {name: texts}


@pytest.mark.parametrize(
    ("drop", "reply"),
    [
        (pgm.query("DISCARD ALL"), Reply().complete("DISCARD ALL").ready()),
        (pgm.query("select f(); DEALLOCATE s1"), Reply().complete("SELECT 1", 1)
         .complete("DEALLOCATE").ready()),
        (_msg(b"C", b"Ss1\0") + pgm.sync(), Reply().ack(CLOSE_COMPLETE, Mark.CLOSE_COMPLETE)
         .ready()),
    ],
)  # fmt: skip
async def test_a_bind_after_a_drop_not_yet_answered_waits_and_is_refused(
    ready: PgInspector, db_path: Path, drop: bytes, reply: Reply
) -> None:
    """Parsing s1 again would make a statement the server dropped: the Bind waits instead."""
    await ready.from_client(parse("select f()", "s1") + pgm.sync())
    await ready.from_agent(Reply().parsed().ready().frame())
    assert await ready.from_client(drop) == drop

    task = asyncio.create_task(ready.from_client(bind([], statement="s1") + execute() + pgm.sync()))
    await asyncio.sleep(0.05)
    assert not task.done()
    await ready.from_agent(reply.frame())
    assert await asyncio.wait_for(task, 5) == b""
    assert error_of(ready.take_synthetic()).sqlstate == "26000"


async def test_messages_of_our_own_do_not_count_towards_the_held_limit(
    ready: PgInspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five Binds of s1 in one pipeline, each after code: four Close and Parse pairs of our
    own join the client's 12 messages, past a limit of 12 that the client alone stays within."""
    monkeypatch.setattr(pg_module, "MAX_HELD_MESSAGES", 12)
    data = parse("select f()", "s1")
    data += b"".join(bind([], portal=f"p{n}", statement="s1") + execute(f"p{n}") for n in range(5))
    forwarded = await ready.from_client(data + pgm.sync())
    assert forwarded.count(b"Ss1\0") == 4  # Close S s1 before each Bind but the first
    with pytest.raises(framing.ProtocolError):
        await ready.from_client(data + bind([], statement="s1") + pgm.sync())
