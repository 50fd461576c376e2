"""PostgreSQL inspection on the client's side of a session.

The control plane frames what the client sends, turns each request into an audit event and
commits it *before* the request is forwarded: a simple `Query` on its own, extended-protocol
messages held until the `Sync` (or `Flush`) that ends their batch, so that every `Execute` of a
pipeline is committed before any of it reaches the target. Responses are not framed here again:
the agent, which parses them anyway for masking, marks where each statement completed and
where the target became ready, and this module turns those marks into `db.result` events.

When the control plane answers a request itself (the audit store failed, an unsupported
message), its answer must reach the client in the same order a database would give it, so
requests and answers wait in one ordered queue of cycles, each ending at a ReadyForQuery.
"""

from __future__ import annotations

import base64
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.audit.events import Draft, SessionContext, draft
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.guardrails import Decision, SqlGuard
from controlplane.policy.statement_secrets import redact_statement
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from wire.pg import framing
from wire.pg import messages as pgm
from wire.pg.types import binary_to_text

PARAM_LIMIT = 256  # characters of one parameter value kept in an event
AUDIT_FAILED_SQLSTATE = "58000"
NOT_SUPPORTED_SQLSTATE = "0A000"
DENIED_SQLSTATE = "42501"  # insufficient_privilege: what a server says when it refuses
Chunk = bytes | memoryview
READY_LENGTH = 6  # 'Z', int32 length 5, the status byte
AGENT_LOST_MESSAGE = "agent lost before the result arrived"

Q, P, B, E, D, C, S, H, X, F = (ord(c) for c in "QPBEDCSHXF")
COPY_DATA, COPY_DONE, COPY_FAIL, PASSWORD = (ord(c) for c in "dcfp")
PASSTHROUGH = {D, C}  # Describe and Close name objects only; they run no statement


@dataclass(slots=True)
class Statement:
    """One audited statement waiting for its result."""

    seq_future: Any  # asyncio.Future[int] in async mode, int once known
    started: float
    rows: int | None = None
    commands: list[str] = field(default_factory=list)
    error: str | None = None
    message: str | None = None
    masked: bool = False
    copy_in: bool = False  # the client sent COPY FROM STDIN data (or its end)
    bytes_in: int = 0  # COPY FROM STDIN data the client sent
    bytes_out: int = 0  # the target's response, as sent to the client


@dataclass(slots=True)
class Cycle:
    """Requests answered by the target up to one ReadyForQuery, or an answer of our own."""

    simple: bool = False
    statements: deque[Statement] = field(default_factory=deque)
    done: list[Statement] = field(default_factory=list)
    synthetic: bytes | None = None
    # Our answer ends with a ReadyForQuery, built when it is sent: the transaction status is
    # whatever the target reported last by then, not when the answer was decided.
    with_ready: bool = False
    # Our answer to a refused part of this cycle's pipeline, given just before its ReadyForQuery.
    injected: bytes = b""
    closed: bool = False  # no more requests join this cycle (its Sync was sent)


class PgInspector:
    def __init__(
        self,
        ctx: SessionContext,
        audit: AuditWriter,
        wake: Callable[[], None],
        guard: SqlGuard | None = None,
        redact: DetectorSet | None = None,
    ) -> None:
        self.session = ctx  # what every event of this session repeats
        self._audit = audit
        self._wake = wake
        self._strict = ctx.audit_mode == "strict"
        self._guard = guard or SqlGuard(())
        self._redact = redact if redact is not None else DetectorSet(["secret"])
        self._framer = framing.MessageFramer(startup_phase=True)
        self._cycles: deque[Cycle] = deque()
        self._prepared: dict[str, tuple[str, tuple[int, ...]]] = {}
        self._held_decisions: list[Decision] = []
        self._portals: dict[str, tuple[str, list[str | None]]] = {}
        self._held: list[bytes] = []  # extended-protocol messages waiting for Sync/Flush
        self._held_events: list[Draft] = []
        self._open: Cycle | None = None
        self._tx_status = "I"
        self._discarding = False  # a refused pipeline: drop messages up to its Sync
        self._started = False  # past the StartupMessage: every message is tagged
        self._audit_error = ""
        self.startup_params: dict[str, str] = {}
        self.statements = 0
        self.denied = 0
        # The relay's interface: a PostgreSQL session ends with its client's stream.
        self.finished = False
        self.drain_timeout: float | None = 30.0
        self.end_on_client_eof = True

    # ---- client → target ------------------------------------------------------------------

    async def from_client(self, data: bytes) -> bytes:
        """Frame client bytes; return what may now be forwarded (its events committed)."""
        out: list[Chunk] = []  # joined once at the end: one copy of what is forwarded
        for msg in self._framer.feed(data):
            tag = msg.tag
            if tag == Q:
                await self._query(msg, out)
            elif tag in (P, B, E) or tag in PASSTHROUGH:
                if not self._discarding:
                    self._hold(msg)
            elif tag in (S, H):
                self._held.append(bytes(msg.raw))
                await self._release(out, sync=tag == S)
            elif tag in (COPY_DATA, COPY_DONE, COPY_FAIL):
                out.append(msg.raw)  # the data of a COPY FROM STDIN whose statement was audited
                if (running := self._running()) is not None:
                    running.copy_in = True
                    running.bytes_in += len(msg.body) if tag == COPY_DATA else 0
            elif tag == X:
                out.append(msg.raw)
            elif tag == PASSWORD:
                pass  # the agent logs in itself; a client's password is dropped, never logged
            elif tag == F:
                self._refuse(
                    NOT_SUPPORTED_SQLSTATE,
                    "gatehouse: the fast-path function call protocol is not supported; "
                    "call the function with SELECT instead",
                )
            elif tag == 0 and not self._started:
                self._startup(msg, out)
            else:
                raise framing.ProtocolError(f"unexpected frontend message type {chr(tag)!r}")
        return b"".join(out)

    def _startup(self, msg: framing.Message, out: list[Chunk]) -> None:
        startup = pgm.parse_startup(msg.body)
        if isinstance(startup, pgm.SSLRequest | pgm.GSSENCRequest):
            # TLS is the job of the local leg (the CLI); inside the tunnel, say "no".
            self._queue_answer(b"N", with_ready=False)
        elif isinstance(startup, pgm.StartupMessage):
            self._started = True
            self.startup_params = dict(startup.params)
            self._cycles.append(Cycle(closed=True))  # ends with the target's first ReadyForQuery
            out.append(msg.raw)
        else:
            raise framing.ProtocolError("a CancelRequest cannot travel inside a session")

    async def _query(self, msg: framing.Message, out: list[Chunk]) -> None:
        sql = pgm.parse_query(msg.body)
        decision = self._guard.check(sql)
        statements = await self._record([self._event(sql, decision, protocol="simple")])
        if statements is None:
            self._refuse(AUDIT_FAILED_SQLSTATE, self._audit_failure())
            return
        if not decision.allowed:
            self.denied += 1
            self._refuse(DENIED_SQLSTATE, f"gatehouse: {decision.reason}")
            return
        self._cycles.append(Cycle(simple=True, statements=deque(statements), closed=True))
        out.append(msg.raw)

    def _hold(self, msg: framing.Message) -> None:
        tag = msg.tag
        if tag == P:
            parse = pgm.parse_parse(msg.body)
            self._prepared[parse.name] = (parse.query, parse.param_types)
        elif tag == B:
            bind = pgm.parse_bind(msg.body)
            sql, types = self._prepared.get(bind.statement, ("", ()))
            params = [
                self._redacted(_param(value, fmt, types[i] if i < len(types) else 0))
                for i, (value, fmt) in enumerate(bind.parameters())
            ]
            self._portals[bind.portal] = (sql, params)
        elif tag == E:
            portal = pgm.parse_execute(msg.body).portal
            sql, params = self._portals.get(portal, ("", []))
            decision = self._guard.check(sql)
            self._held_decisions.append(decision)
            self._held_events.append(self._event(sql, decision, protocol="extended", params=params))
        elif tag == C:
            close = pgm.parse_close(msg.body)
            (self._prepared if close.kind == "S" else self._portals).pop(close.name, None)
        self._held.append(bytes(msg.raw))

    def _redacted(self, value: str | None) -> str | None:
        """A parameter as the event may keep it: what the detectors find is masked."""
        if value is None or not self._redact:
            return value
        masked = self._redact.mask(value)
        return value if masked is None else masked

    async def _release(self, out: list[Chunk], *, sync: bool) -> None:
        held, events, decisions = self._held, self._held_events, self._held_decisions
        self._held, self._held_events, self._held_decisions = [], [], []
        if self._discarding:
            # Like the server after an error: skip everything up to the Sync, then answer it.
            if sync:
                self._discarding = False
                self._end_refused_pipeline(out, held[-1])
            return
        denied = next((d for d in decisions if not d.allowed), None)
        if denied is not None:
            # One denied statement refuses its whole pipeline, which never reaches the target;
            # every statement of it is recorded as refused.
            for event, decision in zip(events, decisions, strict=True):
                if decision.allowed:
                    event.body["decision"] = {
                        "result": "deny",
                        "rule": denied.rule,
                        "reason": f"not sent: its pipeline held a denied statement "
                        f"({denied.reason})",
                    }
            self.denied += len(events)
        statements = await self._record(events)
        if statements is None or denied is not None:
            if statements is None:
                answer = self._error(AUDIT_FAILED_SQLSTATE, self._audit_failure())
            else:
                reason = denied.reason if denied else ""
                answer = self._error(DENIED_SQLSTATE, f"gatehouse: {reason}")
            if self._open is not None:
                # The target holds an unfinished part of this pipeline: it still needs the
                # Sync, and our error belongs just before the ReadyForQuery that answers it.
                self._open.injected += answer
                self._discarding = not sync
                if sync:
                    self._end_refused_pipeline(out, held[-1])
            else:
                self._queue_answer(answer, with_ready=sync)
                self._discarding = not sync
            return
        cycle = self._open
        if cycle is None:
            if not sync and not statements:
                # A Flush with no Execute in it (psycopg sends one after each Sync): the target
                # answers it without a ReadyForQuery, so it must not open a cycle.
                out.extend(held)
                return
            cycle = Cycle()
            self._cycles.append(cycle)
        cycle.statements.extend(statements)
        cycle.closed = sync
        self._open = None if sync else cycle
        out.extend(held)

    def _end_refused_pipeline(self, out: list[Chunk], sync_message: bytes) -> None:
        """Answer the Sync of a refused pipeline: the target's, if it holds part of it."""
        if self._open is not None:
            out.append(sync_message)  # a Sync runs no statement; it ends what the target holds
            self._open.closed = True
            self._open = None
        else:
            self._queue_answer(b"", with_ready=True)

    async def _record(self, events: list[Draft]) -> list[Statement] | None:
        """Commit (strict) or queue (async) events; None when the store refused them."""
        try:
            if self._strict:
                seqs: list[Any] = await self._audit.commit_all(events)
            else:
                seqs = [await self._audit.submit(e) for e in events]
        except AuditUnavailable as exc:
            self._audit_error = str(exc)
            return None
        self.statements += len(events)
        now = time.monotonic()
        return [Statement(seq, now) for seq in seqs]

    def _refuse(self, sqlstate: str, message: str) -> None:
        """Answer a request ourselves, ReadyForQuery included; nothing of it reaches the target."""
        self._queue_answer(self._error(sqlstate, message), with_ready=True)

    def _audit_failure(self) -> str:
        return f"gatehouse: not sent to the database: {self._audit_error}"

    @staticmethod
    def _error(sqlstate: str, message: str) -> bytes:
        return pgm.error_response(
            sqlstate=sqlstate,
            message=message,
            hint="nothing reached the database; try again, or ask an administrator",
        )

    def _queue_answer(self, answer: bytes, *, with_ready: bool) -> None:
        self._cycles.append(Cycle(synthetic=answer, with_ready=with_ready))
        self._wake()

    def _event(
        self,
        sql: str,
        decision: Decision,
        *,
        protocol: str,
        params: list[str | None] | None = None,
    ) -> Draft:
        request: dict[str, Any] = {"statement": redact_statement(sql), "protocol": protocol}
        if params:
            request["params"] = params
        return draft(
            "db.query", session=self.session, request=request, decision=decision.as_event()
        )

    # ---- target → client ------------------------------------------------------------------

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """Apply the agent's marks: record results, and slot in answers of our own."""
        data = frame.data
        if not frame.marks:
            if (running := self._running()) is not None:
                running.bytes_out += len(data)
            return [data] if data else []
        chunks: list[bytes] = []
        start = counted = 0
        for mark in frame.marks:
            if (running := self._running()) is not None:
                running.bytes_out += mark.end - counted
            counted = mark.end
            if mark.kind == tunnel_pb2.ResultMark.READY:
                head = self._cycles[0] if self._cycles else None
                if head is not None and head.injected:
                    ready_at = mark.end - READY_LENGTH
                    chunks += (data[start:ready_at], head.injected, data[ready_at : mark.end])
                else:
                    chunks.append(data[start : mark.end])
                start = mark.end
                self._tx_status = mark.tx_status or self._tx_status
                await self._finish_cycle()
                chunks.extend(self.take_synthetic())
            else:
                self._statement_mark(mark)
        if counted < len(data) and (running := self._running()) is not None:
            running.bytes_out += len(data) - counted
        if start < len(data):
            chunks.append(data[start:])
        return [c for c in chunks if c]

    @property
    def incomplete(self) -> bool:
        """The client left in the middle of a message (PostgreSQL: 08P01, incomplete message)."""
        return self._framer.pending > 0

    def cancel_event(self) -> Draft:
        """A client's cancel request: recorded (it changes what the target does), then sent."""
        return draft("db.cancel", session=self.session)

    def closing(self) -> list[bytes]:
        """The agent's stream ended: answers of our own still due go out."""
        return self.take_synthetic()

    def fatal(self, message: str, sqlstate: str = "08P01") -> bytes:
        """The session's last words to the client: a FATAL ErrorResponse."""
        return pgm.error_response(
            severity="FATAL", sqlstate=sqlstate, message=f"gatehouse: {message}"
        )

    async def finish(self, reason: str) -> None:
        """Every statement's result was recorded as it came; nothing is left at the end."""

    def _running(self) -> Statement | None:
        """The statement the target is working on now, if it is one we recorded."""
        if self._cycles and self._cycles[0].statements:
            return self._cycles[0].statements[0]
        return None

    def take_synthetic(self) -> list[bytes]:
        """Answers of our own that are now due (nothing of the target's is still ahead)."""
        due = []
        while self._cycles and self._cycles[0].synthetic is not None:
            cycle = self._cycles.popleft()
            ready = pgm.ready_for_query(self._tx_status) if cycle.with_ready else b""
            due.append((cycle.synthetic or b"") + ready)
        return due

    def _statement_mark(self, mark: tunnel_pb2.ResultMark) -> None:
        cycle = self._cycles[0] if self._cycles else None
        if cycle is None or not cycle.statements:
            return  # e.g. an error during startup: the session end records it
        statement = cycle.statements[0]
        if mark.kind == tunnel_pb2.ResultMark.ERROR:
            statement.error, statement.message = mark.sqlstate, mark.message
        else:
            statement.commands.append(mark.command)
            if mark.rows >= 0:
                statement.rows = (statement.rows or 0) + mark.rows
        statement.masked = statement.masked or mark.masked
        if not cycle.simple:
            cycle.done.append(cycle.statements.popleft())

    async def _finish_cycle(self) -> None:
        if not self._cycles or self._cycles[0].synthetic is not None:
            return
        cycle = self._cycles.popleft()
        if cycle is self._open:
            self._open = None
        for statement in cycle.done:
            await self._result(statement, skipped=False)
        for statement in cycle.statements:  # the simple query, or executes the target skipped
            await self._result(statement, skipped=not cycle.simple)

    async def _result(self, statement: Statement, *, skipped: bool) -> None:
        ref = statement.seq_future
        if not isinstance(ref, int):
            ref = await ref  # async mode: the query's own commit comes first
        result: dict[str, Any] = {
            "rows": statement.rows,
            "duration_ms": round((time.monotonic() - statement.started) * 1000, 3),
            "error": statement.error,
            "masked": statement.masked,
        }
        if statement.commands:
            result["command"] = "; ".join(statement.commands)
        result["bytes"] = {"in": statement.bytes_in, "out": statement.bytes_out}
        if "COPY" in statement.commands:
            result["copy"] = {
                "direction": "in" if statement.copy_in else "out",
                "rows": statement.rows,
                "bytes": statement.bytes_in or statement.bytes_out,
            }
        if statement.message:
            result["message"] = statement.message
        if skipped:
            result["error"] = result["error"] or "skipped"
            result["message"] = "not executed: an earlier message of its pipeline failed"
        await self._audit.submit(draft("db.result", session=self.session, ref=ref, result=result))

    async def agent_lost(self) -> None:
        """The agent's stream broke: statements that completed get their result, the others
        one saying the outcome is unknown (it may have run, or not)."""
        while self._cycles:
            cycle = self._cycles.popleft()
            for statement in cycle.done:
                await self._result(statement, skipped=False)
            for statement in cycle.statements:
                statement.error, statement.message = "unknown", AGENT_LOST_MESSAGE
                await self._result(statement, skipped=False)
        self._open = None


def _param(value: bytes | None, fmt: int, type_oid: int) -> str | None:
    """A parameter as the event keeps it: text as text, binary rendered by its type where we
    can (else base64), all truncated."""
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace") if fmt == 0 else None
    if text is None:
        text = binary_to_text(type_oid, value[: PARAM_LIMIT * 4])
    if text is None:
        text = "base64:" + base64.b64encode(value[:PARAM_LIMIT]).decode("ascii")
    return text if len(text) <= PARAM_LIMIT else text[:PARAM_LIMIT] + "…"
