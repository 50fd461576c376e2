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

What a prepared statement or portal stands for is known only from the target's answers: every
forwarded request waits in a second queue until the target answered it (the agent marks
ParseComplete, BindComplete, CloseComplete, the end of a Describe, every CommandComplete, error
and ReadyForQuery), and only then does a name change (``pg_names``). A name that an unanswered
request may still create is resolved once the target answered; a name the target does not hold
is refused. A cursor's text is claimed only while no code that could have re-opened it ran
(``pg_names``); a prepared statement code may have prepared again is Parsed again by the
gateway before the client's Bind of it, or recorded as unknown (decision 0033). Text whose
reading depends on the session's lexical settings is parsed only once every earlier request
was answered, under the settings the target reported (``pg_lexical``). Decision 0010 explains
all three.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.audit.events import Draft, SessionContext, draft, draft_result
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.guardrails import Decision, SqlGuard
from controlplane.policy.statement_secrets import held_secret, redact_statement, withheld
from controlplane.relay.inspection import EndCause, Opening, record
from controlplane.relay.pg import sql as pg_sql
from controlplane.relay.pg import startup
from controlplane.relay.pg.lexical import LexicalSettings, sensitive
from controlplane.relay.pg.names import MAX_NAMES, UNKNOWN, Names, Overlay, Portal, Prepared, Step
from gatehouse.v1 import tunnel_pb2
from redact.detectors import DetectorSet
from wire.pg import codes, framing
from wire.pg import messages as pgm
from wire.pg.types import binary_to_text

PARAM_LIMIT = 256  # characters of one parameter value kept in an event
AUDIT_FAILED_SQLSTATE = codes.SYSTEM_ERROR
NOT_SUPPORTED_SQLSTATE = codes.FEATURE_NOT_SUPPORTED
DENIED_SQLSTATE = codes.INSUFFICIENT_PRIVILEGE
UNKNOWN_STATEMENT_SQLSTATE = codes.INVALID_SQL_STATEMENT_NAME
UNKNOWN_CURSOR_SQLSTATE = codes.INVALID_CURSOR_NAME
UNREADABLE_SQLSTATE = codes.CHARACTER_NOT_IN_REPERTOIRE
NAME_TOO_LONG_SQLSTATE = codes.NAME_TOO_LONG
# PostgreSQL keys prepared statements and portals by their first NAMEDATALEN - 1 bytes: two
# longer names that share them are one object on the server and two here. Refused instead.
MAX_NAME_BYTES = 63
# … bytes of the database's encoding, into which the server converts a name first: EUC_JP
# holds one character for both U+00A6 and U+FFE4, EUC_TW four bytes for some three of UTF-8.
# ASCII converts to itself everywhere; other names are refused too.
AFTER_CODE = (
    "text with a non-ASCII character or a backslash follows a message that may have "
    "run code (an Execute, a Bind that plans or reads parameters, the data of a COPY of the "
    "extended protocol) with no Sync between them, and PostgreSQL reports a setting that code "
    "may have changed (client_encoding, standard_conforming_strings) only at the ReadyForQuery "
    "of the next Sync, so the gateway cannot know how the server would read it; send a Sync "
    "before this statement"
)
LIMIT_SQLSTATE = codes.PROGRAM_LIMIT_EXCEEDED
TOO_COMPLEX_SQLSTATE = codes.STATEMENT_TOO_COMPLEX
FATAL_SQLSTATES = {
    EndCause.PROTOCOL: codes.PROTOCOL_VIOLATION,
    EndCause.SHUTDOWN: codes.ADMIN_SHUTDOWN,  # what a server says when it ends a session
    EndCause.AUDIT: codes.SYSTEM_ERROR,
    EndCause.AGENT_LOST: codes.CONNECTION_FAILURE,
}
_COPY_BROKEN = (
    "a request was sent during COPY FROM STDIN; end the copy with CopyDone or CopyFail first"
)
UNKNOWN_CURSOR_RULE = "(unknown cursor)"
UNKNOWN_STATEMENT_RULE = "(unknown prepared statement)"
ALL = "\0all"  # in Expect.creates: every name (DEALLOCATE ALL, DISCARD ALL); no name holds NUL
Chunk = bytes | memoryview
READY_LENGTH = 6  # 'Z', int32 length 5, the status byte
AGENT_LOST_MESSAGE = "agent lost before the result arrived"
FLUSH_MESSAGE = b"H\x00\x00\x00\x04"

#: What one session may hold of an extended-protocol batch before its Sync or Flush: the
#: messages wait in memory until their events are committed. Past either, the session ends.
#: (The largest held message is not counted: one message alone may be larger.)
MAX_HELD_BYTES = 16 * 1024 * 1024
MAX_HELD_MESSAGES = 10_000
#: Requests forwarded and not yet answered (each is remembered until its answer): past this,
#: the inspector forwards nothing more until half of them were answered.
MAX_IN_FLIGHT = 20_000
#: Parse messages up to this size are read once per process (`_read_parse`): at most 1,024
#: of them, 4 MiB.
MAX_REMEMBERED_PARSE = 4096

Q, P, B, E, D = codes.QUERY, codes.PARSE, codes.BIND, codes.EXECUTE, codes.DESCRIBE
C, S, H, X, F = codes.CLOSE, codes.SYNC, codes.FLUSH, codes.TERMINATE, codes.FUNCTION_CALL
COPY_DATA, COPY_DONE, COPY_FAIL = codes.COPY_DATA, codes.COPY_DONE, codes.COPY_FAIL
PASSWORD = codes.PASSWORD_MESSAGE
STARTUP_TAG = 0  # the StartupMessage, answered by the first ReadyForQuery
Mark = tunnel_pb2.ResultMark
# The mark kinds as plain ints: reading a protobuf enum attribute costs on every mark.
COMPLETE, ERROR, READY = int(Mark.COMPLETE), int(Mark.ERROR), int(Mark.READY)
DESCRIBED, PARAMETER = int(Mark.DESCRIBED), int(Mark.PARAMETER)
COPY_IN = int(Mark.COPY_IN)
_ACKS = {int(Mark.PARSE_COMPLETE): P, int(Mark.BIND_COMPLETE): B, int(Mark.CLOSE_COMPLETE): C}
_ACKS[DESCRIBED] = D
_OWN_ANSWERS = (pgm.PARSE_COMPLETE, pgm.CLOSE_COMPLETE)


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
    secret: bool = False  # its recorded text had a secret taken out: so has the target's message
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


@dataclass(slots=True)
class Expect:
    """One forwarded request the target has not answered yet, and what its answer changes."""

    tag: int
    name: str = ""  # Parse: the statement; Bind: the portal; Close: what it closes
    close_kind: str = ""  # Close: 'S' or 'P'
    prepared: Prepared | None = None  # Parse: what ParseComplete confirms
    portal: Portal | None = None  # Bind: what BindComplete confirms
    effects: deque[Step] = field(default_factory=deque)  # Query/Execute: its statements
    creates: frozenset[tuple[str, str]] = frozenset()  # ('S'|'P', name) it may create
    runs_code: bool = False  # it may run user-defined code (which may re-open portals) …
    keeps: frozenset[str] = frozenset()  # … but not the portals it runs
    # Which client message made it: the count of messages that would end a COPY FROM STDIN
    # (all but Sync, Flush and CopyData) when it arrived; -1 until it is stamped.
    epoch: int = -1
    cycle: Cycle | None = None  # Sync: the cycle whose ReadyForQuery answers it
    # Sent by the gateway itself (a statement Parsed again): its answer is not the client's.
    own: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why the gateway answers a request itself instead of forwarding it."""

    sqlstate: str
    reason: str  # without the "gatehouse: " prefix
    rule: str | None = None
    resolved: Resolved | None = None  # what the names of the refused text stood for


@dataclass(slots=True)
class Resolved:
    """The texts the names of a statement stand for, as the target holds them."""

    prepared: dict[str, str | list[str]] = field(default_factory=dict)
    cursors: dict[str, str | list[str]] = field(default_factory=dict)
    # Cursors whose text cannot be known: the text they were declared with (None: never seen
    # declared); code that ran since may have closed them and opened others by their names.
    unknown: dict[str, str | None] = field(default_factory=dict)
    # Prepared statements whose text cannot be known: the text they were prepared with; code
    # that ran since may have deallocated them and prepared others by their names.
    prepared_unknown: dict[str, str] = field(default_factory=dict)

    def texts(self) -> list[str]:
        claimed = [*self.prepared.values(), *self.cursors.values()]
        return [
            text for texts in claimed for text in ([texts] if isinstance(texts, str) else texts)
        ]

    @staticmethod
    def claim(texts: dict[str, str | list[str]], name: str, text: str) -> None:
        """``name`` stands for ``text`` where the statement uses it now. A text that uses one
        name for several texts (``EXECUTE p; DEALLOCATE p; PREPARE p AS …; EXECUTE p``) maps
        it to the list of them, in the order it uses them: never one text for all."""
        known = texts.get(name)
        if known is None or known == text:
            texts[name] = text
        elif isinstance(known, str):
            texts[name] = [known, text]
        elif known[-1] != text:
            known.append(text)


class PgInspector:
    def __init__(
        self,
        ctx: SessionContext,
        audit: AuditWriter,
        wake: Callable[[], None],
        guard: SqlGuard | None = None,
        redact: DetectorSet | None = None,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.session = ctx  # what every event of this session repeats
        self._audit = audit
        self._wake = wake
        # Sends decided bytes to the target before the inspector waits for its answers.
        self._forward = forward
        self._strict = ctx.audit_mode == "strict"
        self._guard = guard or SqlGuard(())
        self._redact = redact if redact is not None else DetectorSet(["secret"])
        self._framer = framing.MessageFramer(startup_phase=True)
        self._cycles: deque[Cycle] = deque()
        self._names = Names()  # what the target confirmed
        self._overlay = Overlay()  # what the current pipeline creates, up to its Sync
        self._expect: deque[Expect] = deque()  # forwarded, not yet answered
        self._answered = asyncio.Event()
        self._answered.set()
        self._drained = asyncio.Event()  # the unanswered requests fell below half the limit
        self._creating = 0  # unanswered requests that may create a name
        self._running_code = 0  # unanswered requests that may run user-defined code
        # … and, by name, how many of them run that portal (a plain dict: Counter's update and
        # subtract cost more than the rest of pushing and popping a request)
        self._kept: dict[str, int] = {}
        # An extended-protocol message failed and the Sync that ends its pipeline was not
        # forwarded yet: the target skips (and never answers) every message up to that Sync.
        self._skipping = False
        # The target reads COPY data for the request made at this epoch: it ignores the
        # Syncs of the same epoch, which therefore get no ReadyForQuery.
        self._copy_epoch: int | None = None
        self._copy_tag = 0
        self._epoch = 0
        self._copy_ends: set[int] = set()  # epochs begun by a CopyDone or CopyFail
        self._copy_broken = False  # a message other than copy data followed a running COPY
        self._lexical = LexicalSettings()
        self._held: list[tuple[bytes, Expect | None]] = []  # waiting for Sync/Flush
        self._held_bytes = 0
        self._held_largest = 0  # the largest held message, which the bytes limit leaves out
        self._held_own = 0  # held messages of our own (a statement Parsed again)
        self._held_events: list[Draft] = []
        self._held_decisions: list[Decision] = []
        self._refusal: Refusal | None = None  # the held batch is refused
        self._open: Cycle | None = None
        self._closing: Cycle | None = None  # taken off `_cycles`, its results being recorded
        self._unsynced = False  # extended messages went out without their Sync yet
        self._tx_status = "I"
        self._discarding = False  # a refused pipeline: drop messages up to its Sync
        # A message that may run code (an Execute, a Bind that plans or reads parameters, the
        # data of an extended-protocol COPY) went out after the last Sync the target answers:
        # PostgreSQL (14 and later) reports a setting that code changed only at the next
        # ReadyForQuery, so text after it cannot be read safely until a Sync.
        self._code_unreported = False
        self._started = False  # past the StartupMessage: every message is tagged
        # The target's bytes held back: the start of an answer to a request of our own.
        self._carry = b""
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
            if tag not in (S, H, COPY_DATA):
                if self._copy_epoch == self._epoch and tag not in (COPY_DONE, COPY_FAIL, X):
                    # The target would fail the copy and consume the message unanswered: what
                    # the trail says ran could no longer be kept in order.
                    raise framing.ProtocolError(
                        f"message type {chr(tag)!r} during COPY FROM STDIN (end it with "
                        "CopyDone or CopyFail first)"
                    )
                self._epoch += 1  # a COPY FROM STDIN the target runs ends here
                if tag in (COPY_DONE, COPY_FAIL):
                    self._copy_ends.add(self._epoch)
            if len(self._expect) >= MAX_IN_FLIGHT and tag not in (COPY_DATA, COPY_DONE, COPY_FAIL):
                await self._throttle(out)
            if tag == Q:
                await self._query(msg, out)
            elif tag in (P, B, E, D, C):
                if not (self._discarding or self._refusal):
                    await self._hold(msg, out)
            elif tag in (S, H):
                if tag == S:
                    self._code_unreported = False
                self._keep(bytes(msg.raw), Expect(S) if tag == S else None)
                await self._release(out, sync=tag == S)
            elif tag in (COPY_DATA, COPY_DONE, COPY_FAIL):
                out.append(msg.raw)  # the data of a COPY FROM STDIN whose statement was audited
                if not (self._copy_epoch is not None and self._copy_tag == Q):
                    # The COPY (its triggers too) runs while the target ignores the Syncs sent
                    # with its Execute: only a Sync after its data reports what it changed. A
                    # simple Query's COPY is reported by that Query's own ReadyForQuery.
                    self._code_unreported = True
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
                await self._startup(msg, out)
            else:
                raise framing.ProtocolError(f"unexpected frontend message type {chr(tag)!r}")
        return b"".join(out)

    async def _startup(self, msg: framing.Message, out: list[Chunk]) -> None:
        startup = pgm.parse_startup(msg.body)
        if isinstance(startup, pgm.SSLRequest | pgm.GSSENCRequest):
            # TLS is the job of the local leg (the CLI); inside the tunnel, say "no".
            self._queue_answer(codes.SSL_REFUSED, with_ready=False)
        elif isinstance(startup, pgm.StartupMessage):
            self._started = True
            self.startup_params = dict(startup.params)
            statements = await self._startup_settings()
            # Ends with the target's first ReadyForQuery, which gives the settings' results.
            self._cycles.append(Cycle(simple=True, statements=deque(statements), closed=True))
            self._push(Expect(STARTUP_TAG))  # its ParameterStatus set the lexical settings
            out.append(msg.raw)
        else:
            raise framing.ProtocolError("a CancelRequest cannot travel inside a session")

    async def _startup_settings(self) -> list[Statement]:
        """Decide and record, as the `SET`s they amount to (one text, as a simple Query of them
        would be), the settings the StartupMessage makes (`role=…`, `options=-c …`): the
        server applies them before any statement. Refused, the session ends before anything
        reaches the target."""
        try:
            found = startup.settings(self.startup_params)
        except startup.StartupRefused as exc:
            raise framing.ProtocolError(f"{exc}; nothing reached the database") from None
        if not found:
            return []
        sql = "; ".join(startup.statement(name, value) for name, value in found)
        decision = self._guard.check(sql)
        statements = await self._record([self._event(sql, decision, protocol="startup")])
        if statements is None:  # (the session's FATAL adds its own "gatehouse: ")
            raise framing.ProtocolError(f"not sent to the database: {self._audit_error}")
        if not decision.allowed:
            self.denied += 1
            raise framing.ProtocolError(
                f"the settings of the startup ({redact_statement(sql)[:200]}) are refused: "
                f"{decision.reason}; connect without them"
            )
        return statements

    async def _query(self, msg: framing.Message, out: list[Chunk]) -> None:
        if self._held or self._unsynced or self._discarding or self._refusal:
            # The server would run it before the pipeline's end, and answer both with one
            # ReadyForQuery; what the trail says ran could not be kept in order.
            raise framing.ProtocolError(
                "a simple Query inside an unfinished extended-protocol pipeline (send Sync first)"
            )
        sql = pgm.parse_query(msg.body)
        outcome: Refusal | tuple[Decision, Resolved, list[Step]]
        if sensitive(sql) and self._code_unreported:
            # Behind the data of an extended-protocol COPY whose Syncs the target ignored.
            outcome = Refusal(UNREADABLE_SQLSTATE, AFTER_CODE, "(unreadable)")
        else:
            if sensitive(sql):
                await self._settle(out)
            outcome = await self._decide(sql, Overlay(), out)
        refusal: Refusal | None
        steps: list[Step]
        if isinstance(outcome, Refusal):
            refusal, resolved, steps = outcome, outcome.resolved or Resolved(), []
            decision = Decision(False, refusal.rule or refusal.sqlstate, refusal.reason)
        else:
            decision, resolved, steps = outcome
            refusal = None if decision.allowed else Refusal(DENIED_SQLSTATE, decision.reason or "")
        event = self._event(sql, decision, protocol="simple", resolved=resolved)
        statements = await self._record([event])
        if statements is None:
            self._refuse(AUDIT_FAILED_SQLSTATE, self._audit_failure())
            return
        if refusal is not None:
            self.denied += 1
            self._refuse(refusal.sqlstate, f"gatehouse: {refusal.reason}")
            return
        self._cycles.append(Cycle(simple=True, statements=deque(statements), closed=True))
        # A simple Query drops the unnamed statement and portal when it starts.
        self._names.drop_statement("")
        self._names.drop_portal("")
        self._push(_expect(Q, steps))
        out.append(msg.raw)

    async def _decide(
        self, sql: str, overlay: Overlay, out: list[Chunk], runs: frozenset[str] = frozenset()
    ) -> Refusal | tuple[Decision, Resolved, list[Step]]:
        """The guard's decision on ``sql`` and on every text a name in it stands for.

        ``runs``: the portal a protocol Execute of ``sql`` runs (its code cannot replace it).
        """
        why = self._lexical.unreadable(sql)
        if why is not None:
            return Refusal(UNREADABLE_SQLSTATE, why, "(unreadable)")
        found = pg_sql.statements(sql)
        if isinstance(found, pg_sql.Unreadable):
            if found.too_complex:
                return Refusal(TOO_COMPLEX_SQLSTATE, found.reason, "(unparseable)")
            return Refusal(UNREADABLE_SQLSTATE, found.reason, "(unreadable)")
        creates = sum(1 for st in found if st.effect and st.effect.op in ("prepare", "declare"))
        if creates and not self._room(creates):
            return Refusal(LIMIT_SQLSTATE, self._full(), "(limit)")
        resolved = Resolved()
        steps = []
        for st in found:
            for name in st.executes:
                prepared = await self._statement(name, overlay, out)
                if prepared is None:
                    return Refusal(UNKNOWN_STATEMENT_SQLSTATE, _unknown("prepared statement", name))
                if prepared.proven and name not in resolved.prepared_unknown:
                    resolved.claim(resolved.prepared, name, prepared.text)
                else:  # not claimed for the text at all if any of its uses is unproven
                    resolved.prepared.pop(name, None)
                    resolved.prepared_unknown[name] = prepared.text
            keeps = runs
            if st.fetches is not None:
                portal = await self._portal(st.fetches, overlay, out)
                if portal is None:
                    return Refusal(UNKNOWN_CURSOR_SQLSTATE, _unknown("cursor", st.fetches))
                if portal.proven and st.fetches not in resolved.unknown:
                    resolved.claim(resolved.cursors, st.fetches, portal.text)
                else:  # not claimed for the text at all if any of its uses is unproven
                    resolved.cursors.pop(st.fetches, None)
                    resolved.unknown[st.fetches] = portal.text if portal.known else None
                keeps = runs | {st.fetches}
            step = Step(st.effect, st.runs_code, keeps)
            overlay.run(step)
            steps.append(step)
        if resolved.unknown and self._guard.names:
            # A guardrail would have to read what the cursor runs, and nobody can say.
            reason = _unknowable(resolved.unknown, self._guard.names)
            return Refusal(DENIED_SQLSTATE, reason, UNKNOWN_CURSOR_RULE, resolved)
        if resolved.prepared_unknown and self._guard.names:
            reason = _unknowable_statement(next(iter(resolved.prepared_unknown)), self._guard.names)
            return Refusal(DENIED_SQLSTATE, reason, UNKNOWN_STATEMENT_RULE, resolved)
        decision = self._guard.check(sql)
        for text in resolved.texts():
            if not decision.allowed:
                break
            decision = self._guard.check(text)
        return decision, resolved, steps

    async def _statement(self, name: str, overlay: Overlay, out: list[Chunk]) -> Prepared | None:
        """What prepared statement ``name`` is when the request runs: None when the target has
        none, unproven when code may have deallocated and prepared it again since it was
        confirmed (earlier in the pipeline, or in a request still unanswered)."""
        changed, prepared = overlay.statement(name)
        if changed:
            return prepared
        if overlay.statements_cleared:
            return None
        if self._may_create("S", name):
            await self._settle(out)
        prepared = self._names.statement(name)
        code = overlay.runs or self._running_code
        if prepared is not None and prepared.proven and name and code:
            return prepared.with_proven(False)
        return prepared

    async def _portal(self, name: str, overlay: Overlay, out: list[Chunk]) -> Portal | None:
        """What portal or cursor ``name`` is when the request runs: None when the target has
        none, ``UNKNOWN`` when code may have opened one the inspector never saw, and unproven
        when code may have closed and re-opened it since it was confirmed."""
        changed, portal = overlay.portal(name)
        if changed:
            return portal
        if overlay.portals_cleared:
            return UNKNOWN if overlay.code_ran and name else None
        if self._may_create("P", name):
            await self._settle(out)
        portal = self._names.portal(name)
        if portal is None:
            return UNKNOWN if name else None  # no code can open a portal without a name
        replaced = (overlay.code_ran and name not in overlay.kept) or self._code_pending(name)
        if portal.proven and name and replaced:
            return portal.unproven()
        return portal

    def _code_pending(self, name: str) -> bool:
        """Whether an unanswered request may run code that re-opens portal ``name``.

        One that runs the portal itself cannot, unless its implicit COMMIT runs code (deferred
        triggers): only inside a transaction block does it keep the portal.
        """
        if not self._running_code:
            return False
        return self._tx_status != "T" or self._kept.get(name, 0) < self._running_code

    def _may_create(self, kind: str, name: str) -> bool:
        """Whether an unanswered request may still give ``name`` another meaning."""
        if not self._creating:
            return False
        return any((kind, name) in e.creates or (kind, ALL) in e.creates for e in self._expect)

    def _room(self, more: int = 1) -> bool:
        return len(self._names) + len(self._overlay) + self._creating + more <= MAX_NAMES

    @staticmethod
    def _full() -> str:
        return (
            f"this session holds {MAX_NAMES} prepared statements and portals, the gateway's "
            "limit; close some (Close, DEALLOCATE, CLOSE) first"
        )

    async def _settle(self, out: list[Chunk]) -> None:
        """Forward what is decided, then wait until the target answered every request.

        A batch held without its Sync goes out first with a Flush of our own, so that the
        target answers it now: waiting for an answer the target was never asked for would
        never end.
        """
        if self._held and not (self._discarding or self._refusal):
            self._keep(FLUSH_MESSAGE, None)
            await self._release(out, sync=False)
        if not self._expect:
            return
        if out:
            if self._forward is None:
                raise RuntimeError("the inspector must wait, but it has no way to forward")
            data = b"".join(out)
            out.clear()
            await self._forward(data)
        while self._expect:
            await self._answered.wait()

    async def _throttle(self, out: list[Chunk]) -> None:
        """Too many requests are unanswered: forward what is decided, and wait for answers.

        Everything forwarded ended with a Sync or Flush, so the target answers it; the data of
        a COPY FROM STDIN is never held here, so a running COPY still gets it.
        """
        if out:
            if self._forward is None:
                raise RuntimeError("the inspector must wait, but it has no way to forward")
            data = b"".join(out)
            out.clear()
            await self._forward(data)
        while len(self._expect) >= MAX_IN_FLIGHT // 2:
            self._drained.clear()
            await self._drained.wait()

    def _keep(self, raw: bytes, expect: Expect | None) -> None:
        """Hold one message of the batch, within the session's limits (messages of our own
        count for their bytes, not in the count of messages: at most two for each Bind)."""
        # The largest message does not count: one message alone may be larger (a 20 MB
        # parameter; the framer bounds a message at 64 MiB).
        largest = max(self._held_largest, len(raw))
        over = self._held_bytes + len(raw) - largest > MAX_HELD_BYTES
        own = expect is not None and expect.own
        if over or (not own and len(self._held) - self._held_own >= MAX_HELD_MESSAGES):
            raise framing.ProtocolError(
                f"more than {MAX_HELD_BYTES // (1024 * 1024)} MiB or {MAX_HELD_MESSAGES} "
                "extended-protocol messages without a Sync or Flush; send Sync more often"
            )
        if expect is not None:
            expect.epoch = self._epoch
        self._held.append((raw, expect))
        self._held_own += own
        self._held_bytes += len(raw)
        self._held_largest = largest

    async def _hold(self, msg: framing.Message, out: list[Chunk]) -> None:
        tag = msg.tag
        raw = bytes(msg.raw)
        expect: Expect
        if tag == P:
            parse = _read_parse(raw) if len(raw) <= MAX_REMEMBERED_PARSE else None
            if parse is None:
                parse = pgm.parse_parse(msg.body)
            if self._refuse_long(parse.query, parse.name):
                return
            if sensitive(parse.query):
                if self._code_unreported and not self._skipping:  # skipped: never read
                    self._refuse_held(
                        parse.query, Refusal(UNREADABLE_SQLSTATE, AFTER_CODE, "(unreadable)")
                    )
                    return
                await self._settle(out)
                if self._discarding:
                    return
            why = self._lexical.unreadable(parse.query)
            if why is not None:
                self._refuse_held(parse.query, Refusal(UNREADABLE_SQLSTATE, why, "(unreadable)"))
                return
            decision = self._guard.check(parse.query)
            if not decision.allowed:
                self._refuse_held(
                    parse.query, Refusal(DENIED_SQLSTATE, decision.reason or "", decision.rule)
                )
                return
            if not self._room():
                self._refuse_held(parse.query, Refusal(LIMIT_SQLSTATE, self._full(), "(limit)"))
                return
            read = pg_sql.statements(parse.query)
            planned = isinstance(read, pg_sql.Unreadable) or any(st.planned for st in read)
            prepared = Prepared(parse.query, parse.param_types, planned)
            self._overlay.prepare(parse.name, prepared)
            expect = Expect(P, name=parse.name, prepared=prepared, creates=_one("S", parse.name))
        elif tag == B:
            bind = pgm.parse_bind(msg.body)
            if self._refuse_long("", bind.statement, bind.portal):
                return
            found = await self._statement(bind.statement, self._overlay, out)
            if self._discarding:
                return
            if found is None:
                reason = _unknown("prepared statement", bind.statement)
                self._refuse_held("", Refusal(UNKNOWN_STATEMENT_SQLSTATE, reason), bind.statement)
                return
            if not self._room():
                self._refuse_held(found.text, Refusal(LIMIT_SQLSTATE, self._full(), "(limit)"))
                return
            if not found.proven and found.parsed and self._may_parse_again(found):
                found = self._parse_again(bind.statement, found)
            if not found.proven and self._guard.names:
                # A guardrail would have to read what the statement runs, and nobody can say.
                resolved = Resolved(prepared_unknown={bind.statement: found.text})
                reason = _unknowable_statement(bind.statement, self._guard.names, protocol=True)
                denied = Refusal(DENIED_SQLSTATE, reason, UNKNOWN_STATEMENT_RULE, resolved)
                self._refuse_held("", denied, bind.statement)
                return
            types = found.param_types
            params = tuple(
                self._redacted(_param(value, fmt, types[i] if i < len(types) else 0))
                for i, (value, fmt) in enumerate(bind.parameters())
            )
            # Planning may call functions, and so may a parameter's input (a domain's CHECK);
            # what a statement of unknown text plans is unknown.
            code = found.planned or bool(params) or not found.proven
            self._code_unreported |= code
            bound = Step(runs_code=code, keeps=frozenset({bind.portal}))
            self._overlay.run(bound)
            inner = None if found.parsed else found.planned
            if found.proven:
                portal = Portal(found.text, params, inner_code=inner)
            else:  # its Execute is recorded with its text unknown
                portal = Portal(
                    found.text, params, statement=bind.statement, proven=False, inner_code=inner
                )
            self._overlay.bind(bind.portal, portal)
            expect = Expect(
                B,
                name=bind.portal,
                portal=portal,
                creates=_one("P", bind.portal),
                runs_code=bound.runs_code,
                keeps=bound.keeps,
            )
        elif tag == E:
            self._code_unreported = True
            name = pgm.parse_execute(msg.body).portal
            if self._refuse_long("", name):
                return
            running = await self._portal(name, self._overlay, out)
            if self._discarding:
                return
            if running is None or not running.known:
                reason = _unknown("portal", name)
                if name:
                    reason += "; a cursor a function opened is read with SQL FETCH"
                self._refuse_held("", Refusal(UNKNOWN_CURSOR_SQLSTATE, reason), portal=name)
                return
            if not running.proven:
                refusal = self._unproven_execute(name, running)
                if refusal is not None:
                    self._refuse_held("", refusal, portal=name)
                    return
                expect = _expect(E, [Step(runs_code=True, keeps=frozenset({name}))])
                self._keep(raw, expect)
                return
            if running.inner_code is None:
                outcome = await self._decide(running.text, self._overlay, out, frozenset({name}))
            else:
                outcome = self._decide_inner(name, running)
            if self._discarding:
                return
            if isinstance(outcome, Refusal):
                self._refuse_held(running.text, outcome, params=running.params)
                return
            decision, resolved, steps = outcome
            self._held_decisions.append(decision)
            self._held_events.append(
                self._event(
                    running.text,
                    decision,
                    protocol="extended",
                    params=list(running.params),
                    resolved=resolved,
                )
            )
            if not decision.allowed:
                self._refusal = Refusal(DENIED_SQLSTATE, decision.reason or "", decision.rule)
                return
            expect = _expect(E, steps)
        elif tag == C:
            close = pgm.parse_close(msg.body)
            if self._refuse_long("", close.name):
                return
            if close.kind == "S":
                self._overlay.deallocate(close.name)
            else:
                self._overlay.close(close.name)
            # (Closing a statement gives its name another meaning: see _expect.)
            drops = _one("S", close.name) if close.kind == "S" else frozenset()
            expect = Expect(C, name=close.name, close_kind=close.kind, creates=drops)
        else:  # Describe names objects only; it runs no statement
            expect = Expect(D)
        self._keep(raw, expect)

    def _decide_inner(self, name: str, running: Portal) -> tuple[Decision, Resolved, list[Step]]:
        """An Execute of a portal bound from a statement SQL PREPARE made: the server runs the
        query inside (a SELECT, INSERT, UPDATE, DELETE, MERGE or VALUES: it names no prepared
        statement or cursor), not the PREPARE, so it creates nothing and may run code. The
        event's text is the whole PREPARE, which is what PostgreSQL logs."""
        step = Step(runs_code=bool(running.inner_code), keeps=frozenset({name}))
        self._overlay.run(step)
        return self._guard.check(running.text), Resolved(), [step]

    def _may_parse_again(self, found: Prepared) -> bool:
        """Whether Parsing ``found`` again reads it as it was read: a text that reads the same
        under every lexical setting, and not in a failed transaction (where a Parse fails, and
        the Close before it would have dropped the client's statement)."""
        return self._tx_status != "E" and not sensitive(found.text)

    def _parse_again(self, name: str, found: Prepared) -> Prepared:
        """Make prepared statement ``name`` the text the gateway knows again, right before the
        client's Bind of it, in the same pipeline: Close and Parse of our own, whose answers
        the client never sees. Code that ran since may have deallocated it and prepared
        another text under its name; nothing runs between our Parse and the Bind, so what the
        Bind binds is the text that is recorded. Only for a text that reads the same under
        every lexical setting (it is read again under today's)."""
        proven = found.with_proven(True)
        close = pgm.close_message("S", name)
        self._keep(close, Expect(C, name=name, close_kind="S", own=True))
        parse = pgm.parse_message(name, found.text, found.param_types)
        again = Expect(P, name=name, prepared=proven, creates=_one("S", name), own=True)
        self._keep(parse, again)
        self._overlay.prepare(name, proven)
        return proven

    def _unproven_execute(self, name: str, portal: Portal) -> Refusal | None:
        """An Execute of portal ``name``, which code may have closed and opened again since it
        was bound: recorded with its text unknown and forwarded, like a FETCH of such a cursor,
        or refused (None: it was recorded and may go).

        The event claims no text: PostgreSQL logs `execute <name>: <the text that runs>`, which
        may be the re-opened portal's. Its statement stays empty, ``portal`` names what ran and
        ``cursors_unknown`` the text it was bound with.
        """
        resolved = Resolved(unknown={name: portal.text})
        if portal.statement is not None:
            resolved.prepared_unknown[portal.statement] = portal.text
        if self._guard.names:
            # A guardrail would have to read what the portal runs, and nobody can say.
            reason = _unknowable(resolved.unknown, self._guard.names, protocol=True)
            return Refusal(DENIED_SQLSTATE, reason, UNKNOWN_CURSOR_RULE, resolved)
        found = pg_sql.statements(portal.text)
        if portal.statement is not None and not isinstance(found, pg_sql.Unreadable):
            # Bound from a statement SQL prepared: it runs the query inside, not the PREPARE.
            found = [st for st in found if not _prepares(st, portal.statement)]
        if isinstance(found, pg_sql.Unreadable) or any(map(pg_sql.touches_names, found)):
            # What its own text would do to the names cannot be applied, nor left out.
            if portal.statement is not None:
                reason = _reprepared(portal.statement)
                return Refusal(UNKNOWN_STATEMENT_SQLSTATE, reason, resolved=resolved)
            return Refusal(UNKNOWN_CURSOR_SQLSTATE, _reopened(name), resolved=resolved)
        decision = Decision(True)
        event = self._event("", decision, protocol="extended", resolved=resolved)
        event.body["request"]["portal"] = name
        self._held_decisions.append(decision)
        self._held_events.append(event)
        return None

    def _refuse_long(self, sql: str, *names: str) -> bool:
        """Refuse the batch when the server may keep a name as another (see MAX_NAME_BYTES):
        one longer than it keeps, or one that is not ASCII."""
        for name in names:
            if not name.isascii() or len(name) > MAX_NAME_BYTES:
                reason = (
                    f"gatehouse: the name {name[:20]!r}… is not ASCII or is longer than "
                    f"{MAX_NAME_BYTES} bytes, which PostgreSQL may keep as another name (it "
                    "cuts names and converts them to the database's encoding); use a shorter "
                    "ASCII prepared statement or portal name"
                )
                self._refuse_held(sql, Refusal(NAME_TOO_LONG_SQLSTATE, reason, "(name)"))
                return True
        return False

    def _refuse_held(
        self,
        sql: str,
        refusal: Refusal,
        statement: str | None = None,
        *,
        portal: str | None = None,
        params: tuple[str | None, ...] = (),
    ) -> None:
        """Refuse the batch being held, recording the request that made it so."""
        decision = Decision(False, refusal.rule or refusal.sqlstate, refusal.reason)
        event = self._event(
            sql, decision, protocol="extended", params=list(params), resolved=refusal.resolved
        )
        if statement is not None:
            event.body["request"]["prepared_name"] = statement
        if portal is not None:
            event.body["request"]["portal"] = portal
        self._held_decisions.append(decision)
        self._held_events.append(event)
        self._refusal = refusal

    def _redacted(self, value: str | None) -> str | None:
        """A parameter as the event may keep it: what the detectors find is masked."""
        if value is None or not self._redact:
            return value
        masked = self._redact.mask(value)
        return value if masked is None else masked

    async def _release(self, out: list[Chunk], *, sync: bool) -> None:
        held, events, decisions = self._held, self._held_events, self._held_decisions
        self._held, self._held_events, self._held_decisions = [], [], []
        self._held_bytes = self._held_largest = self._held_own = 0
        refusal, self._refusal = self._refusal, None
        if sync:
            self._overlay = Overlay()
        if self._discarding:
            # Like the server after an error: skip everything up to the Sync, then answer it.
            if sync:
                self._discarding = False
                self._end_refused_pipeline(out, held[-1][0])
            return
        if refusal is not None:
            # One refused request refuses its whole pipeline, which never reaches the target;
            # every statement of it is recorded as refused.
            for event, decision in zip(events, decisions, strict=True):
                if decision.allowed:
                    event.body["decision"] = {
                        "result": "deny",
                        "rule": refusal.rule or refusal.sqlstate,
                        "reason": f"not sent: its pipeline held a refused request "
                        f"({refusal.reason})",
                    }
            self.denied += len(events)
        statements = await self._record(events)
        if statements is None or refusal is not None:
            if self._open is None and self._unsynced:
                # The target holds the start of this pipeline (flushed, no Execute in it): it
                # still needs the Sync, whose ReadyForQuery our error goes before.
                self._open = Cycle()
                self._cycles.append(self._open)
            if statements is None:
                answer = self._error(AUDIT_FAILED_SQLSTATE, self._audit_failure())
            else:
                assert refusal is not None
                answer = self._error(refusal.sqlstate, f"gatehouse: {refusal.reason}")
            if self._open is not None:
                # The target holds an unfinished part of this pipeline: it still needs the
                # Sync, and our error belongs just before the ReadyForQuery that answers it.
                self._open.injected += answer
                self._discarding = not sync
                if sync:
                    self._end_refused_pipeline(out, held[-1][0])
            else:
                self._queue_answer(answer, with_ready=sync)
                self._discarding = not sync
            if not sync:
                self._overlay = Overlay()  # nothing of it runs; the rest is skipped
            return
        cycle = self._open
        if cycle is None and (sync or statements):
            cycle = Cycle()
            self._cycles.append(cycle)
        # else: a Flush with no Execute in it (psycopg sends one after each Sync): the target
        # answers it without a ReadyForQuery, so it must not open a cycle.
        if cycle is not None:
            cycle.statements.extend(statements)
            cycle.closed = sync
            self._open = None if sync else cycle
        if sync:
            self._unsynced = False
            if (own := held[-1][1]) is not None:
                own.cycle = cycle  # the Sync's ReadyForQuery ends this cycle
        elif any(expect is not None for _, expect in held):
            self._unsynced = True
        for raw, expect in held:
            out.append(raw)
            if expect is not None:
                self._push(expect)

    def _end_refused_pipeline(self, out: list[Chunk], sync_message: bytes) -> None:
        """Answer the Sync of a refused pipeline: the target's, if it holds part of it."""
        if self._open is not None:
            out.append(sync_message)  # a Sync runs no statement; it ends what the target holds
            cycle, self._open = self._open, None
            cycle.closed = True
            self._unsynced = False
            self._push(Expect(S, cycle=cycle))
        else:
            self._queue_answer(b"", with_ready=True)

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
        resolved: Resolved | None = None,
    ) -> Draft:
        request: dict[str, Any] = {"statement": redact_statement(sql), "protocol": protocol}
        if params:
            request["params"] = params
        if resolved is not None and resolved.prepared:
            request["prepared"] = resolved.prepared
        if resolved is not None and resolved.cursors:
            request["cursors"] = resolved.cursors
        if resolved is not None and resolved.unknown:
            request["cursors_unknown"] = resolved.unknown
        if resolved is not None and resolved.prepared_unknown:
            request["prepared_unknown"] = resolved.prepared_unknown
        return draft(
            "db.query", session=self.session, request=request, decision=decision.as_event()
        )

    # ---- what the target holds ------------------------------------------------------------

    def _push(self, expect: Expect) -> None:
        if expect.epoch < 0:
            expect.epoch = self._epoch
        if expect.tag == S and expect.epoch == self._copy_epoch:
            self._ignored_sync(expect)  # the target reads COPY data: it ignores this Sync
            return
        if expect.tag == S:
            self._skipping = False
        elif self._skipping:
            return  # the target skips it without an answer: waiting for one would never end
        self._expect.append(expect)
        if expect.creates:
            self._creating += 1
        if expect.runs_code:
            self._running_code += 1
            kept = self._kept
            for name in expect.keeps:
                kept[name] = kept.get(name, 0) + 1
        self._answered.clear()

    def _pop(self) -> Expect:
        expect = self._expect.popleft()
        if expect.creates:
            self._creating -= 1
        if expect.runs_code:
            self._running_code -= 1
            kept = self._kept
            for name in expect.keeps:
                count = kept.get(name, 0) - 1
                if count:
                    kept[name] = count
                else:
                    kept.pop(name, None)
        if not self._expect:
            self._answered.set()
        if len(self._expect) < MAX_IN_FLIGHT // 2:
            self._drained.set()
        return expect

    def _copy_in(self) -> None:
        """The target started reading COPY data for the request in front: until the client's
        next message other than CopyData, Sync or Flush, it ignores every Sync and Flush."""
        front = self._expect[0] if self._expect else None
        if front is None or front.tag not in (Q, E):
            return
        self._copy_epoch, self._copy_tag = front.epoch, front.tag
        self._copy_ends = {e for e in self._copy_ends if e > front.epoch}
        if self._epoch > front.epoch and front.epoch + 1 not in self._copy_ends:
            # The client sent another request right behind the COPY: the target fails the
            # copy and consumes that request without an answer, which nothing can wait for.
            self._copy_broken = True
        ignored = [e for e in self._expect if e.tag == S and e.epoch == front.epoch]
        if not ignored:
            return
        self._expect = deque(e for e in self._expect if not any(e is i for i in ignored))
        for sync in ignored:
            self._ignored_sync(sync)

    def _ignored_sync(self, sync: Expect) -> None:
        """A Sync the target ignored answers nothing: the cycle it closed goes on to the next
        Sync the target will answer (or stays open), so that no ReadyForQuery is awaited twice."""
        cycle = sync.cycle
        head = next((c for c in self._cycles if c.synthetic is None), None)
        if cycle is None or head is None:
            return
        if cycle is not head:
            if self._copy_tag != E and (cycle.statements or cycle.injected):
                return  # not the copy's pipeline; leave it as it is
            self._merge(head, cycle)
        following = next((e for e in self._expect if e.tag == S and e.cycle is not None), None)
        if following is not None:
            if following.cycle is not head:
                assert following.cycle is not None
                self._merge(head, following.cycle)
                following.cycle = head
            head.closed = True
        elif self._copy_tag == E:
            if self._open is not None and self._open is not head:
                self._merge(head, self._open)
            head.closed = False
            self._open = head
            self._unsynced = True

    def _merge(self, into: Cycle, cycle: Cycle) -> None:
        """One ReadyForQuery answers both cycles: ``cycle`` joins ``into``."""
        into.statements.extend(cycle.statements)
        into.done.extend(cycle.done)
        into.injected += cycle.injected
        self._cycles = deque(c for c in self._cycles if c is not cycle)
        if self._open is cycle:
            self._open = into

    def _answer(self, mark: tunnel_pb2.ResultMark, kind: int) -> None:
        """Apply one of the target's answers to the names it holds."""
        front = self._expect[0] if self._expect else None
        if kind in _ACKS:
            if front is not None and front.tag == Q and kind == DESCRIBED:
                return  # a simple query's RowDescription
            if front is None or front.tag != _ACKS[kind]:
                raise framing.ProtocolError(
                    "the agent's answers do not match the requests sent to the database"
                )
            done = self._pop()
            if done.runs_code:  # a Bind that planned: first its code, then its portal
                self._names.unprove(done.keeps)
            if done.prepared is not None:
                self._names.prepare(done.name, done.prepared)
            elif done.portal is not None:
                self._names.bind(done.name, done.portal)
            elif done.tag == C and done.close_kind == "S":
                self._names.drop_statement(done.name)
            elif done.tag == C:
                self._names.drop_portal(done.name)
        elif kind == COMPLETE:
            if front is not None and front.epoch == self._copy_epoch:
                self._copy_epoch = None  # the copy (or the statement after it) ended
            if front is None or front.tag not in (Q, E):
                return
            if front.tag == E:
                self._pop()  # one Execute runs one statement: every step of it is done
                while front.effects:
                    self._names.run(front.effects.popleft())
            elif front.effects:
                self._names.run(front.effects.popleft())  # one statement of the query
        elif kind == ERROR:
            if front is not None and front.epoch == self._copy_epoch:
                self._copy_epoch = None  # the target left copy-in mode
            if front is None or front.tag in (S, STARTUP_TAG):
                return
            if front.tag == Q:
                if front.effects and front.effects[0].runs_code:  # it may have run code first
                    self._names.unprove(front.effects[0].keeps)
                front.effects.clear()  # the rest of the query does not run
                return
            if front.runs_code:  # the message that failed may have run code first
                self._names.unprove(front.keeps)
            # An extended-protocol message failed: the target skips the rest up to the Sync.
            if front.tag == P and front.name == "":
                self._names.drop_statement("")  # a failed unnamed Parse drops the old one
            self._names.drop_portal("")
            while self._expect and self._expect[0].tag != S:
                self._pop()
            # No Sync forwarded after it (a flushed part of a pipeline): what the client still
            # sends of that pipeline is skipped too, up to its Sync.
            self._skipping = not self._expect
        elif kind == READY:
            while front is not None and front.tag not in (S, Q, STARTUP_TAG):
                self._pop()  # unconfirmed: an agent without name marks; never trusted
                if front.runs_code:
                    self._names.unprove(front.keeps)
                front = self._expect[0] if self._expect else None
            if front is not None:
                for step in self._pop().effects:  # statements whose end was not marked
                    if step.runs_code:
                        self._names.unprove(step.keeps)
            self._names.drop_portal("")  # the unnamed portal ends at Sync
            if mark.tx_status == "I":
                self._names.transaction_ended()

    # ---- target → client ------------------------------------------------------------------

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """Apply the agent's marks: record results, and slot in answers of our own."""
        data = frame.data
        shift = len(self._carry)  # bytes held back from the last frame come first
        if shift:
            data, self._carry = self._carry + data, b""
        if not frame.marks:
            if self._own_answer_due():
                self._carry = data
                return []
            if (running := self._running()) is not None:
                running.bytes_out += len(data) - shift
            return [data] if data else []
        chunks: list[bytes] = []
        start, counted = 0, shift
        for mark in frame.marks:
            end = mark.end + shift
            if (running := self._running()) is not None:
                running.bytes_out += end - counted
            counted = end
            kind = mark.kind
            if kind == PARAMETER:
                self._lexical.update(mark.name, mark.value)
                continue
            if kind == COPY_IN:
                self._copy_in()
                if self._copy_broken:
                    self.finished = True
                    await self._abandon(_COPY_BROKEN)
                    chunks += (data[start:end], self.fatal(_COPY_BROKEN))
                    return [c for c in chunks if c]
                continue
            own = self._own_answer_due()
            self._answer(mark, kind)
            if kind in _ACKS:
                if own:  # the answer to a Close or Parse of our own: the client sent none
                    begin = end - len(pgm.PARSE_COMPLETE)
                    if begin < start or data[begin:end] not in _OWN_ANSWERS:
                        raise framing.ProtocolError("an unexpected answer to the gateway's Parse")
                    chunks.append(data[start:begin])
                    start = end
                continue
            if kind == READY:
                head = self._cycles[0] if self._cycles else None
                if head is not None and head.injected:
                    ready_at = end - READY_LENGTH
                    chunks += (data[start:ready_at], head.injected, data[ready_at:end])
                else:
                    chunks.append(data[start:end])
                start = end
                self._tx_status = mark.tx_status or self._tx_status
                await self._finish_cycle()
                chunks.extend(self.take_synthetic())
            else:
                self._statement_mark(mark)
        if counted < len(data) and (running := self._running()) is not None:
            running.bytes_out += len(data) - counted
        if start < len(data):
            if self._own_answer_due():  # it may begin here: held until its mark arrives
                self._carry = data[start:]
            else:
                chunks.append(data[start:])
        return [c for c in chunks if c]

    def _own_answer_due(self) -> bool:
        """Whether the target answers a request of the gateway's own next."""
        return bool(self._expect) and self._expect[0].own

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

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        """The session's last words to the client: a FATAL ErrorResponse."""
        return pgm.error_response(
            severity="FATAL", sqlstate=FATAL_SQLSTATES[cause], message=f"gatehouse: {message}"
        )

    async def finish(self, reason: str) -> None:
        """The session ended (its client left, its token was revoked, its agent was revoked or
        lost, a result could not be recorded…): every statement still in flight gets a result
        saying its outcome is unknown, and why; one that completed gets its real result."""
        await self._abandon(f"the session ended before the result arrived: {reason}")

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
        if mark.kind == ERROR:
            statement.error = mark.sqlstate
            statement.message = withheld(mark.message) if statement.secret else mark.message
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
        self._closing = cycle  # if the session ends halfway, `_abandon` takes over from here
        # The simple query, or the executes the target skipped, are left in `statements`.
        await self._cycle_results(cycle, skipped=not cycle.simple)
        self._closing = None

    async def _cycle_results(
        self, cycle: Cycle, *, skipped: bool = False, unknown: str | None = None
    ) -> list[asyncio.Future[int]]:
        """Queue the result of every statement of `cycle`: those done with their outcome, the
        others `skipped`, or with an `unknown` outcome and its reason. Each statement leaves the
        cycle only once its result is queued, so a pump stopped halfway loses none of them."""
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
            future = await self._result(statement, skipped=skipped)
            cycle.statements.popleft()
            if future is not None:
                queued.append(future)
        return queued

    async def _result(self, statement: Statement, *, skipped: bool) -> asyncio.Future[int] | None:
        """Queue the statement's `db.result`; its commit is watched by the writer. None when it
        cannot even be queued, which is reported as a lost result (never silent)."""
        try:
            ref = statement.seq_future
            if not isinstance(ref, int):
                ref = await ref  # async mode: the query's own commit comes first
            return await self._audit.submit(self._result_event(statement, ref, skipped=skipped))
        except AuditUnavailable as exc:
            self._audit.result_lost(self.session.session_id, "db.result", exc)
            return None

    def _result_event(self, statement: Statement, ref: int, *, skipped: bool) -> Draft:
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
        return draft_result("db.result", session=self.session, ref=ref, result=result)

    async def agent_lost(self) -> None:
        """The agent's stream broke: statements that completed get their result, the others
        one saying the outcome is unknown (it may have run, or not)."""
        await self._abandon(AGENT_LOST_MESSAGE)

    async def _abandon(self, message: str) -> None:
        """The session ends with requests in flight: each gets a result with ``message``.

        Every one is tried, whatever happened to the others (a result that cannot be recorded
        is reported by `_result` or the writer), and their commits are awaited: the session's
        watch is still on, so a loss is known before the session's end is recorded.
        """
        queued: list[asyncio.Future[int]] = []
        if self._closing is not None:  # a cycle whose results were being recorded
            queued += await self._cycle_results(self._closing, unknown=message)
            self._closing = None
        while self._cycles:
            queued += await self._cycle_results(self._cycles[0], unknown=message)
            self._cycles.popleft()
        self._open = None
        await asyncio.gather(*queued, return_exceptions=True)  # failures: counted, reported


@functools.lru_cache(maxsize=1024)
def _read_parse(raw: bytes) -> pgm.Parse:
    """A Parse message read (it is immutable), remembered by its bytes: drivers and pgbench
    send the same few Parse messages over and over. What the inspector decides about it
    still depends on the session (its settings, its names, the guard) and is done each time."""
    return pgm.parse_parse(memoryview(raw)[5:])


def _expect(tag: int, steps: list[Step]) -> Expect:
    """A Query or Execute awaiting its answers, with what each of its statements does."""
    effects = [step.effect for step in steps if step.effect is not None]
    creates = frozenset(
        ("S" if e.op == "prepare" else "P", e.name)
        for e in effects
        if e.op in ("prepare", "declare") and e.name is not None
    )
    # What drops a statement gives its name another meaning too: a Bind of it waits for the
    # answer rather than Parse it again (which would make a statement the server dropped).
    creates |= {("S", e.name or ALL) for e in effects if e.op in ("deallocate", "discard")}
    code = [step.keeps for step in steps if step.runs_code]
    keeps = frozenset.intersection(*code) if code else frozenset()
    return Expect(tag, effects=deque(steps), creates=creates, runs_code=bool(code), keeps=keeps)


def _prepares(statement: pg_sql.SqlStatement, name: str) -> bool:
    effect = statement.effect
    return effect is not None and effect.op == "prepare" and effect.name == name


def _one(kind: str, name: str) -> frozenset[tuple[str, str]]:
    return frozenset({(kind, name)})


def _unknown(what: str, name: str) -> str:
    shown = f'"{name}"' if name else "(unnamed)"
    return (
        f"{what} {shown} does not exist, or the database has not confirmed it; nothing was "
        "sent to the database"
    )


_CODE = "a function, procedure, DO block or trigger"


def _reopened(name: str) -> str:
    return (
        f'portal "{name}" may have been closed and opened again by code that ran since it was '
        f"bound ({_CODE} can do that), and its statement names prepared statements or cursors, "
        "so the gateway cannot say what it would do to them; nothing was sent to the database: "
        "Bind it again, or read it to its end before running other statements"
    )


def _reprepared(name: str) -> str:
    return (
        f'prepared statement "{name}" may have been deallocated and prepared again by code '
        f"that ran since it was prepared ({_CODE} can do that), and its text names prepared "
        "statements or cursors, so the gateway cannot say what it would do to them; nothing "
        "was sent to the database: Parse it again after that code"
    )


def _unknowable_statement(name: str, guardrails: tuple[str, ...], *, protocol: bool = False) -> str:
    """Why a Bind or SQL EXECUTE of a prepared statement whose text cannot be known is refused."""
    rules = ", ".join(f'"{rule}"' for rule in guardrails)
    guardrail = "guardrail" if len(guardrails) == 1 else "guardrails"
    again = "Parse it again" if protocol else "PREPARE it again"
    return (
        f'prepared statement "{name}" may have been deallocated and prepared again by code that '
        f"ran since it was prepared ({_CODE}; any statement but a few utility ones may call "
        f"some), so its text is not known, and {guardrail} {rules} cannot check what it would "
        f"run; {again} (under a new name, or after Close or DEALLOCATE) after that code"
    )


def _unknowable(
    cursors: dict[str, str | None], guardrails: tuple[str, ...], *, protocol: bool = False
) -> str:
    """Why a FETCH or MOVE of cursors (or an Execute of a portal) whose query cannot be known
    is refused."""
    name, declared = next(iter(cursors.items()))
    rules = ", ".join(f'"{rule}"' for rule in guardrails)
    guardrail = "guardrail" if len(guardrails) == 1 else "guardrails"
    if protocol:
        return (
            f'portal "{name}" may have been closed and opened again by code that ran since it '
            f"was bound ({_CODE}; any statement but a few utility ones may call some), so its "
            f"query is not known, and {guardrail} {rules} cannot check what it would run; "
            "Bind it again after that code, or read it to its end before running other "
            "statements"
        )
    if declared is None:
        how = (
            f'cursor "{name}" was not declared through the gateway; if code ({_CODE}) opened '
            "it, the gateway cannot see its query"
        )
        fix = "have the function return its rows (RETURNS TABLE or SETOF), or DECLARE the cursor"
    else:
        how = (
            f'cursor "{name}" may have been closed and opened again by code that ran since it '
            f"was declared ({_CODE}), so its query is not known"
        )
        fix = "DECLARE it again after that code"
    return f"{how}, and {guardrail} {rules} cannot check what it would run; {fix}"


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


def open_inspector(opening: Opening) -> PgInspector:
    """A `postgres` session's inspector, with its connection's guardrails and the detectors
    that mask parameter values in its events."""
    return PgInspector(
        opening.session,
        opening.audit,
        opening.tunnel.wake,
        guard=opening.policy.guard(opening.connection),
        redact=opening.policy.parameter_detectors(opening.connection),
        forward=opening.forward,
    )
