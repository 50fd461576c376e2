"""MySQL inspection: nothing reaches the target before its events are committed, each statement
gets its result, prepared statements are kept only once the target confirmed them, and the
gateway's own answers are ERR packets in order."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy import mysql_sql
from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import Decision
from controlplane.policy.mysql_guardrails import MysqlGuard
from controlplane.relay.mysql.inspector import MysqlInspector
from gatehouse.v1 import tunnel_pb2
from trail.chain import verify_chain
from wire.mysql import messages as msg
from wire.mysql.constants import Command, FieldType
from wire.mysql.packets import PacketFramer, encode

Mark = tunnel_pb2.ResultMark
REFUSE_INSERTS = (
    "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
)
LOGIN = encode(msg.handshake_response(capabilities=0, user="x", auth_response=b"", plugin=""), 1)


class Wakes:
    count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def wakes() -> Wakes:
    return Wakes()


@pytest.fixture
async def inspector(writer: AuditWriter, wakes: Wakes) -> MysqlInspector:
    ctx = SessionContext(
        session_id="sess-1",
        identity=Identity("alice", email="alice@example.com", groups=("dba",)),
        connection={"name": "my", "type": "mysql"},
        audit_mode="strict",
        source={"ip": "192.0.2.10"},
    )
    guard = MysqlGuard([Guardrail(name="no-drop", deny_statements=["DROP"])])
    inspector = MysqlInspector(ctx, writer, wakes, guard=guard)
    assert await inspector.from_client(LOGIN) == LOGIN
    ok = encode(msg.ok(), 2)
    await inspector.from_agent(
        tunnel_pb2.Frame(
            data=ok,
            marks=[Mark(kind=Mark.COMPLETE, end=len(ok)), Mark(kind=Mark.READY, end=len(ok))],
        )
    )
    return inspector


async def test_the_clients_password_proof_never_reaches_the_agent(
    writer: AuditWriter, wakes: Wakes
) -> None:
    ctx = SessionContext(
        session_id="sess-2",
        identity=Identity("alice"),
        connection={"name": "my", "type": "mysql"},
        audit_mode="strict",
        source={},
    )
    inspector = MysqlInspector(ctx, writer, wakes)
    response = msg.handshake_response(
        capabilities=0,
        user="bob",
        auth_response=b"proof-of-hunter2",
        plugin="mysql_native_password",
        database="app",
    )
    forwarded = packets([await inspector.from_client(encode(response, 1))])
    parsed = msg.parse_handshake_response(forwarded[0])
    assert (parsed.user, parsed.database, parsed.auth_response) == ("bob", "app", b"")


def query(sql: str) -> bytes:
    return encode(msg.command(Command.QUERY, sql.encode()), 0)


def ok_reply(affected: int = 0, seq: int = 1) -> tunnel_pb2.Frame:
    data = encode(msg.ok(affected_rows=affected), seq)
    return tunnel_pb2.Frame(
        data=data,
        marks=[
            Mark(kind=Mark.COMPLETE, end=len(data), command="Query", rows=affected),
            Mark(kind=Mark.READY, end=len(data), tx_status="I"),
        ],
    )


def stored(db_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    assert verify_chain(rows).broken is None
    return [json.loads(body) for _, body, _ in rows]


def packets(chunks: list[bytes]) -> list[bytes]:
    return [p.payload for p in PacketFramer().feed(b"".join(chunks))]


async def test_each_statement_is_committed_before_the_text_is_forwarded(
    inspector: MysqlInspector, writer: AuditWriter, db_path: Path
) -> None:
    data = query("INSERT INTO t VALUES (1); SELECT 2")
    assert await inspector.from_client(data) == data
    queries = [e for e in stored(db_path) if e["type"] == "db.query"]
    assert [q["request"]["statement"] for q in queries] == ["INSERT INTO t VALUES (1)", "SELECT 2"]
    first = encode(msg.ok(affected_rows=1, status=8), 1)
    rest = encode(b"\x01", 2)
    frame = tunnel_pb2.Frame(
        data=first + rest,
        marks=[
            Mark(kind=Mark.COMPLETE, end=len(first), command="Query", rows=1),
            Mark(kind=Mark.COMPLETE, end=len(first) + len(rest), command="SELECT", rows=1),
            Mark(kind=Mark.READY, end=len(first) + len(rest)),
        ],
    )
    assert b"".join(await inspector.from_agent(frame)) == first + rest
    await writer.close()
    results = {e["ref"]: e["result"] for e in stored(db_path) if e["type"] == "db.result"}
    assert results[queries[0]["seq"]]["affected_rows"] == 1
    assert results[queries[1]["seq"]]["rows"] == 1


async def test_a_denied_statement_denies_its_whole_text_and_the_session_goes_on(
    inspector: MysqlInspector, wakes: Wakes, db_path: Path
) -> None:
    assert await inspector.from_client(query("SELECT 1; DROP TABLE t")) == b""
    answer = packets(inspector.take_synthetic())
    err = msg.parse_err(answer[0])
    assert (err.code, err.sqlstate) == (1142, "42000")
    assert 'guardrail "no-drop"' in err.message
    decisions = [e["decision"] for e in stored(db_path) if e["type"] == "db.query"]
    assert [d["result"] for d in decisions] == ["deny", "deny"]
    assert "another statement" in decisions[0]["reason"]
    data = query("SELECT 3")
    assert await inspector.from_client(data) == data


async def test_an_unsplit_text_is_one_marked_event_and_may_not_load_local(
    inspector: MysqlInspector, db_path: Path
) -> None:
    """Under NO_BACKSLASH_ESCAPES the server reads a LOAD DATA LOCAL after the first string."""
    text = "SELECT '\\''; SELECT '; LOAD DATA LOCAL INFILE 'f' INTO TABLE t; -- '"
    assert await inspector.from_client(query(text)) == b""
    err = msg.parse_err(packets(inspector.take_synthetic())[0])
    assert err.code == 1142 and "LOAD DATA LOCAL" in err.message
    text = "SELECT '\\''; SELECT '; SELECT 2; -- '"
    assert await inspector.from_client(query(text)) == query(text)
    queries = [e for e in stored(db_path) if e["type"] == "db.query"]
    assert [q["request"]["unsplit"] for q in queries] == [True, True]
    assert [q["decision"]["result"] for q in queries] == ["deny", "allow"]
    assert queries[1]["request"]["statement"] == text


async def test_a_failed_commit_refuses_the_statement(
    inspector: MysqlInspector, db_path: Path
) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(REFUSE_INSERTS)
    conn.close()
    assert await inspector.from_client(query("SELECT 1")) == b""
    err = msg.parse_err(packets(inspector.take_synthetic())[0])
    assert err.code == 1105
    assert "not sent to the database" in err.message


async def test_a_refusal_waits_for_the_answers_before_it(inspector: MysqlInspector) -> None:
    forwarded = query("SELECT SLEEP(1)")
    assert await inspector.from_client(forwarded + query("DROP TABLE t")) == forwarded
    assert inspector.take_synthetic() == []  # the target has not answered the first yet
    chunks = await inspector.from_agent(ok_reply())
    payloads = packets(chunks)
    assert payloads[0][0] == 0x00 and payloads[1][0] == 0xFF


async def test_prepared_statements_are_known_once_confirmed(
    inspector: MysqlInspector, writer: AuditWriter, db_path: Path
) -> None:
    execute = encode(
        msg.command(Command.STMT_EXECUTE)
        + (7).to_bytes(4, "little")
        + b"\x00\x01\x00\x00\x00"
        + b"\x00\x01"
        + bytes([FieldType.VAR_STRING, 0])
        + msg.lenenc_bytes(b"password=hunter2"),
        0,
    )
    # Not confirmed: an unknown handler, never forwarded.
    assert await inspector.from_client(execute) == b""
    assert msg.parse_err(packets(inspector.take_synthetic())[0]).code == 1243
    prepare = encode(msg.command(Command.STMT_PREPARE, b"SELECT ?"), 0)
    assert await inspector.from_client(prepare) == prepare
    confirmed = encode(msg.prepare_ok(7, 1, 1), 1)
    await inspector.from_agent(
        tunnel_pb2.Frame(
            data=confirmed,
            marks=[
                Mark(kind=Mark.PARSE_COMPLETE, end=len(confirmed), name="7", value="1"),
                Mark(kind=Mark.READY, end=len(confirmed)),
            ],
        )
    )
    assert await inspector.from_client(execute) == execute
    await writer.close()
    queries = [e for e in stored(db_path) if e["type"] == "db.query"]
    assert [q["request"]["protocol"] for q in queries] == ["prepare", "execute"]
    assert queries[1]["request"]["statement"] == "SELECT ?"
    assert "hunter2" not in json.dumps(queries[1]["request"]["params"])


async def test_change_user_is_refused(inspector: MysqlInspector) -> None:
    assert (
        await inspector.from_client(encode(msg.command(Command.CHANGE_USER, b"root\x00"), 0)) == b""
    )
    err = msg.parse_err(packets(inspector.take_synthetic())[0])
    assert "COM_CHANGE_USER is refused" in err.message


async def test_load_data_local_is_refused_unless_allowed(inspector: MysqlInspector) -> None:
    assert (
        await inspector.from_client(query("LOAD DATA LOCAL INFILE '/etc/passwd' INTO TABLE t"))
        == b""
    )
    err = msg.parse_err(packets(inspector.take_synthetic())[0])
    assert "LOAD DATA LOCAL" in err.message


async def test_kill_query_is_recorded_as_a_cancel(inspector: MysqlInspector, db_path: Path) -> None:
    data = query("KILL QUERY 42")
    assert await inspector.from_client(data) == data
    assert [e["type"] for e in stored(db_path)][-1] == "db.cancel"


async def test_passwords_in_statements_never_reach_the_trail(
    inspector: MysqlInspector, db_path: Path
) -> None:
    await inspector.from_client(query("CREATE USER bob IDENTIFIED BY 'hunter2'"))
    assert "hunter2" not in json.dumps(stored(db_path))


async def test_a_large_text_is_read_off_the_event_loop(
    inspector: MysqlInspector, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tokenizer takes about a second a megabyte: a large text must not stop the loop
    that serves every other session."""
    threads: list[str] = []
    check = MysqlGuard.check

    def watched(guard: MysqlGuard, sql: str) -> Decision:
        threads.append(threading.current_thread().name)
        return check(guard, sql)

    monkeypatch.setattr(MysqlGuard, "check", watched)
    rows = ",".join(f"({i}, 'row {i}')" for i in range(8000))
    text = f"INSERT INTO t VALUES {rows}; DROP TABLE t"
    assert len(text) > 64 * 1024
    assert await inspector.from_client(query(text)) == b""
    assert msg.parse_err(packets(inspector.take_synthetic())[0]).code == 1142
    assert threads and all(name.startswith("mysql-text") for name in threads)
    queries = [e for e in stored(db_path) if e["type"] == "db.query"]
    assert [q["request"]["statement"] for q in queries][-1] == "DROP TABLE t"
    data = query("SELECT 1")
    assert await inspector.from_client(data) == data
    assert threads[-1] == threading.current_thread().name  # a small one, on the loop


async def test_a_text_read_many_ways_is_read_off_the_event_loop(
    inspector: MysqlInspector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under 64 KB, a text with five executable comments, a backslash, a double quote and a
    bracket is read 256 ways: seconds of the loop's time, as a text of megabytes is."""
    threads: list[str] = []
    check = MysqlGuard.check

    def watched(guard: MysqlGuard, sql: str) -> Decision:
        threads.append(threading.current_thread().name)
        return check(guard, sql)

    monkeypatch.setattr(MysqlGuard, "check", watched)
    text = "SELECT \"\\\\\", '[' " + "/*!1 1*/ " * 5 + "FROM t WHERE c = '" + "y" * 8000 + "'"
    assert len(text) < 64 * 1024
    data = query(text)
    assert await inspector.from_client(data) == data
    assert threads and all(name.startswith("mysql-text") for name in threads)


async def test_a_text_beyond_the_reading_budget_is_one_event_and_refused_under_guardrails(
    inspector: MysqlInspector, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mysql_sql, "READ_BUDGET", 1000)
    text = "SELECT '" + "\\\\" * 300 + "'; SELECT 2"  # 600 characters, read two ways
    assert await inspector.from_client(query(text)) == b""
    err = msg.parse_err(packets(inspector.take_synthetic())[0])
    assert err.code == 1142 and "send it in smaller statements" in err.message
    (event,) = [e for e in stored(db_path) if e["type"] == "db.query"]
    assert event["request"]["unsplit"] is True
    assert event["request"]["statement"] == text
    plain = "SELECT '" + "x" * 600 + "'; SELECT 2"  # one way: within it
    assert await inspector.from_client(query(plain)) == query(plain)
