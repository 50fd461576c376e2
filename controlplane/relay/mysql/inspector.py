"""MySQL inspection on the client's side of a session.

The control plane frames the client's packets, turns each command into audit events and commits
them *before* the command is forwarded: a COM_QUERY gives one ``db.query`` per statement of its
text (a multi-statement text is split, and refused whole if a guardrail denies any part), a
COM_STMT_PREPARE one with its text, each COM_STMT_EXECUTE one with the prepared text and its
parameters (redacted as PostgreSQL's are), a COM_INIT_DB one as ``USE``, a COM_FIELD_LIST one
as ``SHOW COLUMNS``. ``KILL QUERY`` is recorded as ``db.cancel``. COM_CHANGE_USER, the
replication commands and the deprecated ones are refused, as is ``LOAD DATA LOCAL`` unless the
connection allows it.

A refusal is an ERR_Packet of the gateway's own (1142 for a guardrail, naming it), and the
session goes on. MySQL answers commands in order, so requests and answers wait in one ordered
queue: an answer of the gateway's own goes out once the target answered everything before it.
A prepared statement's text is kept only once the target confirmed it (COM_STMT_PREPARE_OK,
marked by the agent with the statement id); an id the target does not hold is refused.
Responses are not framed here: the agent marks where each result ended (``agent/mysql``).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

from controlplane.audit.events import Draft, SessionContext, draft, draft_result
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.guardrails import Decision
from controlplane.policy.mysql_guardrails import MysqlGuard
from controlplane.policy.mysql_sql import (
    MAX_VERSIONED,
    Piece,
    Unreadable,
    kills_query,
    loads_local,
    redact,
    split_agreed,
)
from controlplane.policy.statement_secrets import held_secret, withheld
from controlplane.relay.inspection import EndCause, Opening, record
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from wire.mysql import messages as msg
from wire.mysql.constants import (
    ER_CONNECTION_LOST,
    ER_NET_READ_ERROR,
    ER_SERVER_SHUTDOWN,
    ER_SPECIFIC_ACCESS_DENIED,
    ER_TABLEACCESS_DENIED,
    ER_UNKNOWN_COM,
    ER_UNKNOWN_ERROR,
    ER_UNKNOWN_STMT_HANDLER,
    Command,
)
from wire.mysql.packets import Packet, PacketFramer, ProtocolError, encode

PARAM_LIMIT = 256  # characters of one parameter value kept in an event
MAX_PREPARED = 16_384  # statements one session may hold (MySQL's max_prepared_stmt_count)
AGENT_LOST_MESSAGE = "agent lost before the result arrived"
DENIED_SQLSTATE = "42000"
Mark = tunnel_pb2.ResultMark
FATAL_ERRORS = {
    EndCause.PROTOCOL: (ER_NET_READ_ERROR, "08S01"),
    EndCause.SHUTDOWN: (ER_SERVER_SHUTDOWN, "08S01"),
    EndCause.AUDIT: (ER_UNKNOWN_ERROR, "HY000"),
    EndCause.AGENT_LOST: (ER_CONNECTION_LOST, "08S01"),
}
COMPLETE, ERROR, READY = int(Mark.COMPLETE), int(Mark.ERROR), int(Mark.READY)
PREPARED = int(Mark.PARSE_COMPLETE)

#: Commands relayed without an event: they run no statement.
_QUIET = frozenset(
    {
        Command.PING,
        Command.STATISTICS,
        Command.SET_OPTION,
        Command.STMT_RESET,
        Command.STMT_FETCH,
        Command.STMT_SEND_LONG_DATA,
        Command.STMT_CLOSE,
        Command.RESET_CONNECTION,
        Command.QUIT,
    }
)
_BY_ID = frozenset({Command.STMT_RESET, Command.STMT_FETCH, Command.STMT_SEND_LONG_DATA})
_UNANSWERED = frozenset({Command.STMT_SEND_LONG_DATA, Command.STMT_CLOSE, Command.QUIT})
_NO_LOCAL_INFILE = Decision(
    False,
    "(local infile)",
    "LOAD DATA LOCAL reads a file of the client's host, which this connection does not allow"
    " (target.local_infile)",
)
#: A text whose statements are not known may hold LOAD … LOCAL in one of its readings.
_MAY_LOAD_LOCAL = re.compile(r"(?is)\bLOAD\b.*\bLOCAL\b")
_THREADED_TEXT: Final = 64 * 1024
"""A statement text longer than this is read in `_TEXT_READER` (the tokenizer is Python, about
a second a megabyte, every way the server may read the text): the event loop serves on."""
_VERSIONED = re.compile(r"/\*M?!")


def _threaded(sql: str) -> bool:
    """Whether a text is read in `_TEXT_READER`: its length times the ways it may be read (up
    to 2**MAX_VERSIONED for its executable comments, twice for each of a backslash, a double
    quote and a bracket), not its length alone: 60 KB read 256 ways is seconds."""
    if len(sql) > _THREADED_TEXT:
        return True
    ways = 1 << min(len(_VERSIONED.findall(sql)), MAX_VERSIONED)
    ways <<= sum(mark in sql for mark in ("\\", '"', "["))
    return len(sql) * ways > _THREADED_TEXT


_TEXT_READER: Final = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mysql-text")
"""One thread for large texts, one at a time: they wait for each other, and hold up nothing
else (the default executor's threads serve the store)."""
_REFUSED = {
    Command.CHANGE_USER: "COM_CHANGE_USER is refused: the gateway's session is one identity's;"
    " open a new connection instead",
    Command.PROCESS_KILL: "COM_PROCESS_KILL is refused; use KILL QUERY to cancel a statement",
    Command.SHUTDOWN: "COM_SHUTDOWN is refused",
}


@dataclass(slots=True)
class Statement:
    """One audited statement waiting for its result."""

    seq_future: Any  # asyncio.Future[int] in async mode, int once known
    started: float
    rows: int | None = None
    affected: int | None = None
    error: str | None = None
    code: int | None = None
    message: str | None = None
    masked: bool = False
    secret: bool = False  # its recorded text had a secret taken out: so has the target's message
    bytes_out: int = 0
    prepare: str | None = None  # COM_STMT_PREPARE: the text the target will confirm


@dataclass(slots=True)
class Cycle:
    """One command the target will answer, or an answer of our own."""

    statements: deque[Statement] = field(default_factory=deque)
    done: list[Statement] = field(default_factory=list)
    synthetic: bytes | None = None
    prepare: str | None = None  # COM_STMT_PREPARE's text, kept once the target confirms it
    resets: bool = False  # COM_RESET_CONNECTION: the target drops its prepared statements


@dataclass(slots=True)
class Prepared:
    text: str
    params: int
    types: list[tuple[int, bool]] | None = None
    long_data: set[int] = field(default_factory=set)  # parameters sent ahead of the execute


class MysqlInspector:
    def __init__(
        self,
        ctx: SessionContext,
        audit: AuditWriter,
        wake: Callable[[], None],
        guard: MysqlGuard | None = None,
        redact_params: DetectorSet | None = None,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
        local_infile: bool = False,
    ) -> None:
        self.session = ctx
        self._audit = audit
        self._wake = wake
        self._forward = forward
        self._strict = ctx.audit_mode == "strict"
        self._guard = guard or MysqlGuard(())
        self._redact = redact_params if redact_params is not None else DetectorSet(["secret"])
        self._local_infile = local_infile
        self._framer = PacketFramer()
        self._cycles: deque[Cycle] = deque()
        self._prepared: dict[int, Prepared] = {}
        self._logged_in = False
        self._login_sent = False  # the client's one login packet went to the agent
        self._closing: Cycle | None = None
        self._audit_error = ""
        self._next_seq = 1  # what a packet of ours answering the last command starts with
        self.statements = 0
        self.denied = 0
        self.finished = False
        self.drain_timeout: float | None = 30.0
        self.end_on_client_eof = True

    # ---- client → target ------------------------------------------------------------------

    async def from_client(self, data: bytes) -> bytes:
        """Frame client packets; return what may now be forwarded (its events committed)."""
        out: list[bytes] = []
        for packet in self._framer.feed(data):
            if not self._logged_in:
                if self._login_sent:
                    # The agent reads one login packet and would relay what follows it to the
                    # target unread here: a client speaks again only after its login's OK.
                    raise ProtocolError(
                        "the client sent a command before its login completed; "
                        "wait for the server's OK before sending commands"
                    )
                self._login_sent = True
                out.append(encode(_without_password(packet.payload), packet.seq))
                continue
            if packet.seq != 0:
                # The rest of an exchange a command began (a LOCAL INFILE's file).
                out.append(encode(packet.payload, packet.seq))
                continue
            self._next_seq = (packet.last_seq + 1) & 0xFF
            await self._command(packet, out)
        return b"".join(out)

    async def _command(self, packet: Packet, out: list[bytes]) -> None:
        cmd = packet.first
        payload = packet.payload
        if cmd == Command.QUERY:
            await self._query(packet, out)
        elif cmd == Command.STMT_PREPARE:
            await self._prepare(packet, out)
        elif cmd == Command.STMT_EXECUTE:
            await self._execute(packet, out)
        elif cmd == Command.INIT_DB:
            database = payload[1:].decode("utf-8", "replace")
            sql = "USE `" + database.replace("`", "``") + "`"
            await self._statements(packet, out, [(sql, self._guard.check(sql), "init_db")])
        elif cmd == Command.FIELD_LIST:
            sql = _field_list(payload)
            await self._statements(packet, out, [(sql, self._guard.check(sql), "field_list")])
        elif cmd in _QUIET:
            known = cmd not in _BY_ID or msg.statement_id(payload) in self._prepared
            if cmd == Command.STMT_SEND_LONG_DATA and known and len(payload) >= 7:
                param = int.from_bytes(payload[5:7], "little")
                self._prepared[msg.statement_id(payload)].long_data.add(param)
            elif cmd == Command.STMT_RESET and known:
                self._prepared[msg.statement_id(payload)].long_data.clear()
            if cmd == Command.STMT_CLOSE:
                self._prepared.pop(msg.statement_id(payload), None)
            elif not known and cmd in _UNANSWERED:
                return  # long data for a statement the target does not hold: it goes nowhere
            elif not known:
                self._unknown_statement(packet, msg.statement_id(payload))
                return
            if cmd not in _UNANSWERED:
                self._cycles.append(Cycle(resets=cmd == Command.RESET_CONNECTION))
            out.append(encode(payload, packet.seq))
        elif cmd in _REFUSED:
            self._refuse(packet, ER_SPECIFIC_ACCESS_DENIED, DENIED_SQLSTATE, _REFUSED[cmd])  # type: ignore[index]
        else:
            self._refuse(
                packet,
                ER_UNKNOWN_COM,
                "08S01",
                f"command 0x{cmd:02x} is not relayed by the gateway",
            )

    async def _query(self, packet: Packet, out: list[bytes]) -> None:
        sql = _text(packet.payload)
        if sql is None:
            self._refuse(packet, ER_UNKNOWN_ERROR, "HY000", "the statement is not valid UTF-8")
            return
        if _threaded(sql):
            loop = asyncio.get_running_loop()
            decided, unsplit = await loop.run_in_executor(_TEXT_READER, self._read_query, sql)
        else:
            decided, unsplit = self._read_query(sql)
        await self._statements(packet, out, decided, unsplit=unsplit)

    def _read_query(self, sql: str) -> tuple[list[tuple[str, Decision, str]], bool]:
        """A COM_QUERY's statements, each decided, and whether they are the whole text as one
        (it could not be split). Pure: a large text is read on a thread of its own."""
        try:
            pieces: list[Piece] | None = split_agreed(sql)
        except Unreadable:
            pieces = None
        if pieces is None or not pieces:
            # Text the gateway cannot split, or whose statements depend on the session's
            # sql_mode: one event for all of it, marked, decided under every reading.
            decision = self._guard.check(sql)
            if decision.allowed and not self._local_infile and _MAY_LOAD_LOCAL.search(sql):
                decision = _NO_LOCAL_INFILE
            return [(sql, decision, "query")], True
        decided: list[tuple[str, Decision, str]] = []
        for piece in pieces:
            decision = self._guard.check(piece.text)
            if decision.allowed and not self._local_infile and loads_local(piece.text):
                decision = _NO_LOCAL_INFILE
            decided.append((piece.text, decision, "cancel" if kills_query(piece.text) else "query"))
        return decided, False

    async def _statements(
        self,
        packet: Packet,
        out: list[bytes],
        decided: list[tuple[str, Decision, str]],
        *,
        unsplit: bool = False,
    ) -> None:
        """Record one command's statements; forward it if every one is allowed."""
        refusal = next((d for _, d, _ in decided if not d.allowed), None)
        events = []
        for text, own, protocol in decided:
            decision = own
            if refusal is not None and own.allowed:
                decision = Decision(
                    False,
                    refusal.rule,
                    f"not sent: another statement of the same text was denied ({refusal.reason})",
                )
            events.append(self._event(text, decision, protocol=protocol, unsplit=unsplit))
        statements = await self._record(events)
        if statements is None:
            self._refuse(packet, ER_UNKNOWN_ERROR, "HY000", self._audit_failure())
            return
        if refusal is not None:
            self.denied += 1
            self._refuse(
                packet,
                ER_TABLEACCESS_DENIED,
                DENIED_SQLSTATE,
                f"{refusal.reason} (rule {refusal.rule})",
            )
            return
        self._cycles.append(Cycle(statements=deque(statements)))
        out.append(encode(packet.payload, packet.seq))

    async def _prepare(self, packet: Packet, out: list[bytes]) -> None:
        sql = _text(packet.payload)
        if sql is None:
            self._refuse(packet, ER_UNKNOWN_ERROR, "HY000", "the statement is not valid UTF-8")
            return
        if len(self._prepared) >= MAX_PREPARED:
            self._refuse(
                packet,
                ER_UNKNOWN_ERROR,
                "HY000",
                f"this session holds {MAX_PREPARED} prepared statements; close some first",
            )
            return
        before = len(self._cycles)
        if _threaded(sql):
            loop = asyncio.get_running_loop()
            decision = await loop.run_in_executor(_TEXT_READER, self._guard.check, sql)
        else:
            decision = self._guard.check(sql)
        await self._statements(packet, out, [(sql, decision, "prepare")])
        if len(self._cycles) > before and self._cycles[-1].synthetic is None:
            self._cycles[-1].prepare = sql

    async def _execute(self, packet: Packet, out: list[bytes]) -> None:
        sid = msg.statement_id(packet.payload)
        prepared = self._prepared.get(sid)
        if prepared is None:
            self._unknown_statement(packet, sid)
            return
        long_data = frozenset(prepared.long_data)
        execute = msg.parse_execute(packet.payload, prepared.params, prepared.types, long_data)
        types = execute.types or prepared.types or []
        params = [
            None
            if value is None
            else "(long data)"
            if index in long_data
            else self._param(msg.binary_to_text(t, u, value))
            for index, (value, (t, u)) in enumerate(zip(execute.values, types, strict=False))
        ]
        decision = self._guard.check(prepared.text)
        event = self._event(prepared.text, decision, protocol="execute", params=params)
        statements = await self._record([event])
        if statements is None:
            self._refuse(packet, ER_UNKNOWN_ERROR, "HY000", self._audit_failure())
            return
        if not decision.allowed:
            self.denied += 1
            reason = f"{decision.reason} (rule {decision.rule})"
            self._refuse(packet, ER_TABLEACCESS_DENIED, DENIED_SQLSTATE, reason)
            return
        if execute.types is not None:
            prepared.types = execute.types
        prepared.long_data.clear()  # the execute consumed it
        self._cycles.append(Cycle(statements=deque(statements)))
        out.append(encode(packet.payload, packet.seq))

    def _param(self, value: str) -> str:
        masked = self._redact.mask(value)
        value = masked if masked is not None else value
        return value if len(value) <= PARAM_LIMIT else value[:PARAM_LIMIT] + "…"

    def _unknown_statement(self, packet: Packet, sid: int) -> None:
        self._refuse(
            packet,
            ER_UNKNOWN_STMT_HANDLER,
            "HY000",
            f"unknown prepared statement handler ({sid}): the target has not confirmed it",
        )

    def _event(
        self,
        sql: str,
        decision: Decision,
        *,
        protocol: str,
        params: list[str | None] | None = None,
        unsplit: bool = False,
    ) -> Draft:
        request: dict[str, Any] = {"statement": redact(sql), "protocol": protocol}
        if unsplit:
            request["unsplit"] = True  # the whole text: where its statements end is not known
        if params:
            request["params"] = params
        kind = "db.cancel" if protocol == "cancel" else "db.query"
        return draft(kind, session=self.session, request=request, decision=decision.as_event())

    async def _record(self, events: list[Draft]) -> list[Statement] | None:
        """Commit (strict) or queue (async) events; None when the store refused them."""
        try:
            seqs = await record(self._audit, events, strict=self._strict)
        except AuditUnavailable as exc:
            self._audit_error = str(exc)
            return None
        self.statements += len(events)
        now = time.monotonic()
        return [
            Statement(seq, now, secret=held_secret(event.body["request"].get("statement", "")))
            for seq, event in zip(seqs, events, strict=True)
        ]

    def _audit_failure(self) -> str:
        return f"not sent to the database: {self._audit_error}"

    def _refuse(self, packet: Packet, code: int, sqlstate: str, message: str) -> None:
        """Answer a command ourselves; nothing of it reaches the target."""
        answer = encode(msg.err(code, sqlstate, f"gatehouse: {message}"), packet.last_seq + 1)
        self._cycles.append(Cycle(synthetic=answer))
        self._wake()

    # ---- target → client ------------------------------------------------------------------

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """Apply the agent's marks: record results, and slot in answers of our own."""
        data = frame.data
        if not self._logged_in:
            for mark in frame.marks:
                if mark.kind == READY:
                    self._logged_in = True
            return [data] if data else []
        chunks: list[bytes] = []
        start = counted = 0
        for mark in frame.marks:
            if (running := self._running()) is not None:
                running.bytes_out += mark.end - counted
            counted = mark.end
            kind = mark.kind
            if kind == READY:
                chunks.append(data[start : mark.end])
                start = mark.end
                await self._finish_cycle()
                chunks.extend(self.take_synthetic())
            else:
                self._statement_mark(mark)
        if counted < len(data) and (running := self._running()) is not None:
            running.bytes_out += len(data) - counted
        if start < len(data):
            chunks.append(data[start:])
        return [c for c in chunks if c]

    def _statement_mark(self, mark: tunnel_pb2.ResultMark) -> None:
        cycle = self._cycles[0] if self._cycles else None
        if cycle is None or cycle.synthetic is not None:
            return
        if mark.kind == PREPARED and cycle.prepare is not None:
            self._prepared[int(mark.name)] = Prepared(cycle.prepare, int(mark.value or 0))
        if not cycle.statements:
            return
        statement = cycle.statements.popleft()
        if mark.kind == ERROR:
            statement.error, statement.code = mark.sqlstate, mark.code
            statement.message = withheld(mark.message) if statement.secret else mark.message
        elif mark.command == "SELECT":
            statement.rows = mark.rows
        elif mark.kind == COMPLETE and mark.rows >= 0:
            statement.affected = mark.rows
        statement.masked = mark.masked
        cycle.done.append(statement)

    def _running(self) -> Statement | None:
        if self._cycles and self._cycles[0].statements:
            return self._cycles[0].statements[0]
        return None

    async def _finish_cycle(self) -> None:
        if not self._cycles or self._cycles[0].synthetic is not None:
            return
        cycle = self._cycles.popleft()
        if cycle.resets:
            self._prepared.clear()
        self._closing = cycle
        await self._cycle_results(cycle, skipped=True)
        self._closing = None

    async def _cycle_results(
        self, cycle: Cycle, *, skipped: bool = False, unknown: str | None = None
    ) -> list[asyncio.Future[int]]:
        queued: list[asyncio.Future[int]] = []
        while cycle.done:
            future = await self._result(cycle.done[0], skipped=False)
            cycle.done.pop(0)
            if future is not None:
                queued.append(future)
        while cycle.statements:
            statement = cycle.statements[0]
            if unknown is not None:
                statement.error, statement.message = "unknown", unknown
            future = await self._result(statement, skipped=skipped and unknown is None)
            cycle.statements.popleft()
            if future is not None:
                queued.append(future)
        return queued

    async def _result(self, statement: Statement, *, skipped: bool) -> asyncio.Future[int] | None:
        try:
            ref = statement.seq_future
            if not isinstance(ref, int):
                ref = await ref
            return await self._audit.submit(self._result_event(statement, ref, skipped=skipped))
        except AuditUnavailable as exc:
            self._audit.result_lost(self.session.session_id, "db.result", exc)
            return None

    def _result_event(self, statement: Statement, ref: int, *, skipped: bool) -> Draft:
        result: dict[str, Any] = {
            "rows": statement.rows,
            "affected_rows": statement.affected,
            "duration_ms": round((time.monotonic() - statement.started) * 1000, 3),
            "error": statement.error,
            "masked": statement.masked,
            "bytes": {"in": 0, "out": statement.bytes_out},
        }
        if statement.code is not None:
            result["code"] = statement.code
        if statement.message:
            result["message"] = statement.message
        if skipped:
            result["error"] = result["error"] or "skipped"
            result["message"] = "not executed: an earlier statement of its text failed"
        return draft_result("db.result", session=self.session, ref=ref, result=result)

    def take_synthetic(self) -> list[bytes]:
        """Answers of our own that are now due (nothing of the target's is still ahead)."""
        due = []
        while self._cycles and self._cycles[0].synthetic is not None:
            due.append(self._cycles.popleft().synthetic or b"")
        return due

    @property
    def incomplete(self) -> bool:
        return self._framer.pending > 0

    def cancel_event(self) -> Draft | None:
        return draft("db.cancel", session=self.session)

    def closing(self) -> list[bytes]:
        return self.take_synthetic()

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        """The session's last words: an ERR packet (MySQL has no FATAL; the connection closes)."""
        code, sqlstate = FATAL_ERRORS[cause]
        return encode(msg.err(code, sqlstate, f"gatehouse: {message}"), self._next_seq)

    async def finish(self, reason: str) -> None:
        await self._abandon(f"the session ended before the result arrived: {reason}")

    async def agent_lost(self) -> None:
        await self._abandon(AGENT_LOST_MESSAGE)

    async def _abandon(self, message: str) -> None:
        queued: list[asyncio.Future[int]] = []
        if self._closing is not None:
            queued += await self._cycle_results(self._closing, unknown=message)
            self._closing = None
        while self._cycles:
            queued += await self._cycle_results(self._cycles[0], unknown=message)
            self._cycles.popleft()
        await asyncio.gather(*queued, return_exceptions=True)


def _without_password(payload: bytes) -> bytes:
    """The client's handshake response with its password proof dropped: the agent logs in with
    its own credential, and what the client typed never travels further."""
    try:
        response = msg.parse_handshake_response(payload)
    except ProtocolError:
        return payload  # the agent refuses it ("Bad handshake")
    if response.ssl_request or not response.auth_response:
        return payload
    return msg.handshake_response(
        capabilities=response.capabilities,
        user=response.user,
        auth_response=b"",
        plugin=response.plugin,
        database=response.database,
        charset=response.charset,
        max_packet=response.max_packet,
        attributes=response.attributes or None,
    )


def _field_list(payload: bytes) -> str:
    """COM_FIELD_LIST (a table, then a wildcard) as the statement that reads the same."""
    table, _, wildcard = payload[1:].partition(b"\x00")
    sql = "SHOW COLUMNS FROM `" + table.decode("utf-8", "replace").replace("`", "``") + "`"
    if not wildcard:
        return sql
    pattern = wildcard.decode("utf-8", "replace").replace("\\", "\\\\").replace("'", "''")
    return f"{sql} LIKE '{pattern}'"


def _text(payload: bytes) -> str | None:
    try:
        return payload[1:].decode("utf-8")
    except UnicodeDecodeError:
        return None


def open_inspector(opening: Opening) -> MysqlInspector:
    """A `mysql` session's inspector, with its connection's guardrails on MySQL's grammar and
    the detectors that mask parameter values in its events."""
    return MysqlInspector(
        opening.session,
        opening.audit,
        opening.tunnel.wake,
        guard=opening.policy.mysql_guard(opening.connection),
        redact_params=opening.policy.parameter_detectors(opening.connection),
        forward=opening.forward,
        local_infile=bool(getattr(opening.target, "local_infile", False)),
    )
