"""Hypothesis on whole MySQL sessions through the inspector: random commands (allowed and
denied queries, multi-statements, prepares, executes of known and unknown statements, pings,
COM_INIT_DB), sent one at a time or pipelined, answered by a simulated agent. Whatever the mix:
nothing denied is forwarded, every forwarded statement was committed first and gets exactly
one result, and the client gets one answer per command, in order."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.audit.events import SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.policy.document import Guardrail
from controlplane.policy.mysql_guardrails import MysqlGuard
from controlplane.relay.mysql.inspector import MysqlInspector
from controlplane.store.database import Database
from gatehouse.v1 import tunnel_pb2
from wire.mysql import messages as msg
from wire.mysql.constants import Command
from wire.mysql.packets import PacketFramer, encode

Mark = tunnel_pb2.ResultMark
GUARD = MysqlGuard([Guardrail(name="no-drop", deny_statements=["DROP"])])
QUERIES = st.sampled_from(
    [
        "SELECT 1",
        "UPDATE t SET a = 1",
        "SELECT 1; SELECT 2",
        "DROP TABLE t",
        "SELECT 1; DROP TABLE t",
    ]
)
COMMANDS = st.one_of(
    st.tuples(st.just("query"), QUERIES),
    st.tuples(st.just("prepare"), st.sampled_from(["SELECT ?", "DROP TABLE t"])),
    st.tuples(st.just("execute"), st.integers(1, 4)),
    st.tuples(st.just("ping"), st.just("")),
    st.tuples(st.just("init_db"), st.just("app")),
)


def _payload(kind: str, arg: Any) -> bytes:
    if kind == "query":
        return msg.command(Command.QUERY, arg.encode())
    if kind == "prepare":
        return msg.command(Command.STMT_PREPARE, arg.encode())
    if kind == "execute":
        body = arg.to_bytes(4, "little") + b"\x00\x01\x00\x00\x00" + b"\x00\x01\x08\x00"
        return msg.command(Command.STMT_EXECUTE, body + (5).to_bytes(8, "little"))
    if kind == "ping":
        return msg.command(Command.PING)
    return msg.command(Command.INIT_DB, arg.encode())


class Agent:
    """Answers forwarded commands as a server would, with the agent's marks."""

    def __init__(self) -> None:
        self.framer = PacketFramer()
        self.next_id = 1
        self.commands: list[bytes] = []

    def answer(self, data: bytes) -> list[tunnel_pb2.Frame]:
        frames = []
        for packet in self.framer.feed(data):
            self.commands.append(packet.payload)
            frames.append(self._reply(packet.payload))
        return frames

    def _reply(self, payload: bytes) -> tunnel_pb2.Frame:
        if payload[0] == Command.STMT_PREPARE:
            data = encode(msg.prepare_ok(self.next_id, 0, 1), 1)
            marks = [
                Mark(kind=Mark.PARSE_COMPLETE, end=len(data), name=str(self.next_id), value="1")
            ]
            self.next_id += 1
        else:
            count = payload[1:].count(b";") + 1 if payload[0] == Command.QUERY else 1
            data, marks = b"", []
            for index in range(count):
                last = index == count - 1
                data += encode(msg.ok(status=2 if last else 10), 1 + index)
                marks.append(Mark(kind=Mark.COMPLETE, end=len(data), command="OK", rows=0))
        marks.append(Mark(kind=Mark.READY, end=len(data)))
        return tunnel_pb2.Frame(data=data, marks=marks)


def _expected(script: list[tuple[tuple[str, Any], bool]]) -> list[int]:
    """The first byte of each answer, in order: ERR for a refusal, else the target's OK. A
    prepare is confirmed (its id known) only once its batch was answered."""
    out: list[int] = []
    confirmed = pending = 0
    for (kind, arg), pipelined in script:
        if kind in ("query", "prepare"):
            refused = "DROP" in arg
            pending += kind == "prepare" and not refused
        elif kind == "execute":
            refused = arg > confirmed
        else:
            refused = False
        out.append(0xFF if refused else 0x00)
        if not pipelined:
            confirmed, pending = confirmed + pending, 0
    return out


def _events(db_path: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT body FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [json.loads(body) for (body,) in rows]


async def _session(db_path: Path, script: list[tuple[tuple[str, Any], bool]]) -> None:
    db = Database(f"sqlite:///{db_path}")
    db.migrate()
    writer = AuditWriter(db)
    writer.start()
    ctx = SessionContext(
        session_id="s",
        identity=Identity("alice"),
        connection={"name": "my", "type": "mysql"},
        audit_mode="strict",
        source={},
    )
    inspector = MysqlInspector(ctx, writer, lambda: None, guard=GUARD)
    login = encode(
        msg.handshake_response(capabilities=0, user="u", auth_response=b"", plugin=""), 1
    )
    await inspector.from_client(login)
    ok = encode(msg.ok(), 2)
    await inspector.from_agent(
        tunnel_pb2.Frame(data=ok, marks=[Mark(kind=Mark.READY, end=len(ok))])
    )
    agent = Agent()
    answers: list[int] = []  # the first byte of each answer the client got
    sent = 0
    batch: list[bytes] = []
    for (kind, arg), pipelined in script:
        batch.append(_payload(kind, arg))
        sent += 1
        if pipelined:
            continue
        committed_before = len(_events(db_path))
        forwarded = await inspector.from_client(b"".join(encode(p, 0) for p in batch))
        batch = []
        committed = len(_events(db_path)) - committed_before
        before = len(agent.commands)
        frames = agent.answer(forwarded)
        statements = [c for c in agent.commands[before:] if c[0] != Command.PING]
        assert committed >= len(statements)  # each was committed before it was forwarded
        chunks = inspector.take_synthetic()
        for frame in frames:
            chunks += await inspector.from_agent(frame)
        framer = PacketFramer()
        for packet in framer.feed(b"".join(chunks)):
            if packet.seq == 1:  # the first packet of an answer
                answers.append(packet.first)
    if batch:
        forwarded = await inspector.from_client(b"".join(encode(p, 0) for p in batch))
        chunks = inspector.take_synthetic()
        for frame in agent.answer(forwarded):
            chunks += await inspector.from_agent(frame)
        answers += [p.first for p in PacketFramer().feed(b"".join(chunks)) if p.seq == 1]
    await inspector.finish("test over")
    await writer.close()
    db.dispose()
    events = _events(db_path)
    assert answers == _expected(script)
    assert len(answers) == sent
    for command in agent.commands:
        assert b"DROP" not in command  # nothing denied reached the target
    queries = [e for e in events if e["type"] == "db.query"]
    results = [e["ref"] for e in events if e["type"] == "db.result"]
    allowed = [q["seq"] for q in queries if q["decision"]["result"] == "allow"]
    assert sorted(results) == sorted(allowed)  # one result each, none for a refusal


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(script=st.lists(st.tuples(COMMANDS, st.booleans()), min_size=1, max_size=12))
def test_whole_sessions(tmp_path_factory: Any, script: list[tuple[tuple[str, Any], bool]]) -> None:
    db_path = tmp_path_factory.mktemp("mysql-session") / "g.db"
    asyncio.run(_session(db_path, script))
