"""Command and terminal inspection for `ssh` and `shell` sessions, on the control plane.

The client's first message says what to run. It is decided by the connection's command
guardrails and recorded (`ssh.exec`, `ssh.session` or `shell.command`, committed before it is
forwarded in strict mode); a denied command never reaches the agent, the client gets the
rule's reason and exit status 126. Then both directions are framed (wire/term) to count bytes,
record a terminal session as asciicast v2, and turn the target's exit into `ssh.result` /
`shell.result` — committed before the exit status is passed on, so the status a caller sees
is already in the trail.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, Literal

from controlplane.audit.events import Draft, SessionContext, draft
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.commands import CommandGuard
from controlplane.policy.guardrails import Decision
from controlplane.relay.recording import LineTracker, Recording, Store
from gatehouse.v1 import tunnel_pb2
from wire.term import codec
from wire.term.codec import ProtocolError

log = logging.getLogger(__name__)

DENIED_STATUS: Final = 126  # "found but cannot be run", as shells say; the error names the rule
GATEWAY_STATUS: Final = 255  # what ssh itself reports when it, not the command, failed

Kind = Literal["ssh", "shell"]


class TermInspector:
    """One `ssh` or `shell` session: one command (or login shell) from start to exit."""

    def __init__(
        self,
        ctx: SessionContext,
        audit: AuditWriter,
        wake: Callable[[], None],
        *,
        kind: Kind,
        mode: str,
        guard: CommandGuard,
        store: Store,
        recorded: Callable[[int], Awaitable[None]],
        workdir: str | None = None,
    ) -> None:
        self.session = ctx
        self._audit = audit
        self._wake = wake
        self._kind = kind
        self._mode = mode
        self._guard = guard
        self._store = store
        self._recorded = recorded  # the result event that vouches for the recording
        self._workdir = workdir
        self._strict = ctx.audit_mode == "strict"
        self._from_client = codec.TermFramer.from_client()
        self._from_target = codec.TermFramer.from_target()
        self._start: codec.Start | None = None
        self._ref: Any = None  # seq (or its future, async mode) of the command's event
        self._started = 0.0
        self._recording: Recording | None = None
        self._lines: LineTracker | None = None
        self._answer: list[bytes] = []  # our own answer (a refusal), due to the client
        self._refused = False
        self._exit_seen = False
        self._resulted = False
        self.finished = False  # our own exit was handed to the client: the session is over
        # The client's stream ending is not the command's end: it runs to its exit.
        self.drain_timeout: float | None = None
        self.end_on_client_eof = False
        self.statements = 0
        self.bytes_in = self.bytes_out = self.bytes_err = 0

    # ---- client → target ------------------------------------------------------------------

    @property
    def incomplete(self) -> bool:
        return self._from_client.incomplete

    async def from_client(self, data: bytes) -> bytes:
        """Frame client bytes; return what may be forwarded (the command already recorded)."""
        out: list[memoryview] = []
        for msg in self._from_client.feed(data):
            if self._refused:
                continue  # nothing of a refused session reaches the agent
            if msg.tag == codec.START:
                if self._start is not None:
                    raise ProtocolError("a session runs one command; `start` came twice")
                if await self._begin(codec.parse_start(msg.body)):
                    out.append(msg.raw)
                continue
            if self._start is None:
                raise ProtocolError("a terminal session must begin with `start`")
            if msg.tag == codec.INPUT:
                self.bytes_in += len(msg.body)
                if self._lines is not None:
                    self._lines.typed(bytes(msg.body))
            elif msg.tag == codec.WINDOW:
                cols, rows = codec.parse_window(msg.body)
                if self._recording is not None:
                    await self._recording.resize(cols, rows)
            elif msg.tag == codec.SIGNAL:
                codec.parse_signal(msg.body)
            out.append(msg.raw)
        await self._typed_lines()
        return b"".join(out)

    def cancel_event(self) -> Draft | None:
        """A PostgreSQL-style cancel means nothing here: Ctrl-C travels as input or signal."""
        return None

    async def _begin(self, start: codec.Start) -> bool:
        """Decide and record the command; False when it must not be forwarded."""
        self._start = start
        decision = self._decide(start)
        try:
            event = self._command_event(start, decision)
            if self._strict:
                self._ref = await self._audit.commit(event)
            else:
                self._ref = await self._audit.submit(event)
        except AuditUnavailable as exc:
            self._refuse(f"gatehouse: not run: the audit store refused its record: {exc}")
            return False
        self.statements = 1
        if not decision.allowed:
            self._refuse(f"gatehouse: {decision.reason}", DENIED_STATUS)
            return False
        self._started = time.monotonic()
        if start.pty is not None:
            self._recording = Recording(
                self._store,
                width=start.pty.cols,
                height=start.pty.rows,
                term=start.pty.term,
                title=_title(self.session, start),
            )
            self._lines = LineTracker()
        return True

    def _decide(self, start: codec.Start) -> Decision:
        if self._mode == "exec" and (start.interactive or start.subsystem is not None):
            # Access rules grant `exec` for commands: a shell or sftp is the `connect` mode's.
            what = (
                "an interactive shell" if start.interactive else f"the {start.subsystem} subsystem"
            )
            return Decision(
                False,
                "(mode)",
                f"{what} needs the connect mode (`gatehouse ssh` or `gatehouse connect`); "
                "this session was opened for exec",
            )
        if self._kind == "shell" and start.argv:
            return self._guard.check_argv(start.argv)
        if start.argv or start.command is not None:
            return self._guard.check_text(start.command_line())
        # A login shell or a subsystem (sftp) is no command a guardrail can read; who may open
        # one is the access rules' `connect` mode. The session is recorded all the same.
        return Decision(True)

    def _command_event(self, start: codec.Start, decision: Decision) -> Draft:
        request: dict[str, Any] = {}
        if self._kind == "shell" and start.argv:
            request["argv"] = list(start.argv)
        elif start.argv or start.command is not None:
            request["command"] = start.command_line()
        if start.subsystem is not None:
            request["subsystem"] = start.subsystem
        if self._kind == "shell":
            request["workdir"] = self._workdir
        if start.pty is not None:
            request["pty"] = {
                "term": start.pty.term,
                "cols": start.pty.cols,
                "rows": start.pty.rows,
            }
        if self._kind == "shell":
            event_type = "shell.command"
        else:
            event_type = "ssh.session" if start.interactive else "ssh.exec"
        return draft(
            event_type, session=self.session, request=request, decision=decision.as_event()
        )

    def _refuse(self, message: str, status: int = GATEWAY_STATUS) -> None:
        self._refused = True
        self._answer.append(codec.encode(codec.STDERR, (message + "\n").encode()))
        self._answer.append(codec.encode_exit(codec.Exit(status, error=message)))
        self._wake()

    # ---- target → client ------------------------------------------------------------------

    async def from_agent(self, frame: tunnel_pb2.Frame) -> list[bytes]:
        """Count and record what the target printed; record its exit before passing it on."""
        data = frame.data
        for msg in self._from_target.feed(data):
            if msg.tag == codec.STDOUT:
                self.bytes_out += len(msg.body)
                if self._recording is not None:
                    await self._recording.output(msg.body)
                if self._lines is not None:
                    self._lines.printed(msg.body)
            elif msg.tag == codec.STDERR:
                self.bytes_err += len(msg.body)
            else:
                self._exit_seen = True
                await self._result(codec.parse_exit(msg.body))
        await self._typed_lines()
        return [data] if data else []

    def take_synthetic(self) -> list[bytes]:
        """Our own answer (a refusal), once; after it the session is over."""
        if not self._answer:
            return []
        answer, self._answer = self._answer, []
        self.finished = True
        return answer

    def closing(self) -> list[bytes]:
        """The agent's stream ended: an exit the client never got is made up here, so the
        caller sees why rather than a silent end."""
        due = self.take_synthetic()
        if self._start is not None and not self._exit_seen and not self._refused:
            due.append(
                codec.encode_exit(
                    codec.Exit(
                        GATEWAY_STATUS,
                        error="gatehouse: the agent ended the session before the command "
                        "reported its exit status; check the agent's log",
                    )
                )
            )
        return due

    def fatal(self, message: str, sqlstate: str = "") -> bytes:
        """The session's last words to the client, in this protocol."""
        return codec.encode_exit(codec.Exit(GATEWAY_STATUS, error=f"gatehouse: {message}"))

    async def finish(self, reason: str) -> None:
        """At the session's end: a command that never reported its exit still gets a result."""
        if self._start is not None and not self._refused and not self._resulted:
            await self._result(codec.Exit(GATEWAY_STATUS, error=f"session ended: {reason}"))

    async def agent_lost(self) -> None:
        """The agent's stream broke: a command without an exit gets a result saying its
        outcome is unknown (it may still be running, or have finished unreported)."""
        if self._start is not None and not self._refused and not self._resulted:
            await self._result(
                codec.Exit(GATEWAY_STATUS, error="unknown: agent lost before the result arrived")
            )

    async def _result(self, exit_: codec.Exit) -> None:
        if self._resulted or self._ref is None:
            return
        self._resulted = True
        if self._lines is not None:
            await self._typed_lines(final=True)
        summary = await self._recording.close() if self._recording is not None else None
        ref = self._ref if isinstance(self._ref, int) else await self._ref
        result: dict[str, Any] = {
            "exit_code": exit_.status,
            "signal": exit_.signal,
            "error": exit_.error,
            "duration_ms": round((time.monotonic() - self._started) * 1000, 3),
            "bytes": {"in": self.bytes_in, "out": self.bytes_out, "err": self.bytes_err},
        }
        event = draft(
            f"{self._kind}.result",
            session=self.session,
            ref=ref,
            result={k: v for k, v in result.items() if v is not None},
            recording=summary.as_event() if summary is not None else None,
        )
        try:
            seq = await self._audit.commit(event)
        except AuditUnavailable:
            log.exception("session %s: could not record its result", self.session.session_id)
            return
        if summary is not None:
            await self._recorded(seq)

    async def _typed_lines(self, *, final: bool = False) -> None:
        """Best-effort `ssh.input` events for lines typed in a terminal, and their keys in the
        recording — for lines the terminal echoed only."""
        if self._lines is None:
            return
        for text, raw in self._lines.decided(final=final):
            if text is None:
                line: dict[str, Any] = {
                    "line": None,
                    "hidden": True,
                    "reason": "typed while the terminal did not echo",
                }
            else:
                line = {"line": text}
                if self._recording is not None:
                    await self._recording.input(raw)
            try:
                await self._audit.submit(draft("ssh.input", session=self.session, input=line))
            except AuditUnavailable:
                log.warning("session %s: an input line was not recorded", self.session.session_id)


def _title(ctx: SessionContext, start: codec.Start) -> str:
    """The recording's title: the connection and what ran, as a player lists it."""
    return f"{ctx.connection.get('name', '')}: {start.command_line() or 'login shell'}"
