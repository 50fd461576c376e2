"""Command and terminal inspection for `ssh` and `shell` sessions, on the control plane.

The client's first message says what to run. It is decided by the connection's command
guardrails and recorded (`ssh.exec`, `ssh.session` or `shell.command`, committed before it is
forwarded in strict mode); a denied command never reaches the agent, the client gets the
rule's reason and exit status 126. Then both directions are framed (wire/term) to count bytes,
record a terminal session as asciicast v2, and turn the target's exit into `ssh.result` /
`shell.result` — committed before the exit status is passed on, so the status a caller sees
is already in the trail.

A command that reads its *program* from stdin (``echo 'rm -rf /srv' | gatehouse exec ops --
sh``; see ``controlplane/policy/programs.py``) does not start when its `start` arrives: its
stdin is held, up to `STDIN_LIMIT`, until it ends; then that program is checked with the same
guardrails as a command line and recorded in the command's own event (text, SHA-256, length),
committed before the `start`, the program and the eof go to the agent together. A program
larger than the limit is refused: an open-ended stdin program is a terminal session, whose
place is the `connect` mode. Data to any other command streams as it comes.

A `shell` command's event records the real account it runs as (`codec.RunAs`: the mode the
policy chose, uid and user name), as the agent resolved it when the session attached: a
`run_as: agent` command on an agent running as root says uid 0. A session whose agent said
nothing (an older agent), or another mode or account than the policy's (a policy not yet
applied there), is refused before anything runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import shlex
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Final, Literal

from controlplane.audit.events import Draft, SessionContext, draft, draft_result
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.policy.command_secrets import MASK, Masking
from controlplane.policy.commands import CommandGuard
from controlplane.policy.guardrails import Decision
from controlplane.policy.mysql_sql import redact
from controlplane.policy.programs import StdinReader, stdin_readers
from controlplane.policy.statement_secrets import redact_statement
from controlplane.relay.inspection import EndCause, Opening
from controlplane.relay.term.recording import LineTracker, Recording, Store, stored_in
from gatehouse.v1 import agent_pb2, tunnel_pb2
from wire.term import codec
from wire.term.codec import ProtocolError

log = logging.getLogger(__name__)

DENIED_STATUS: Final = 126  # "found but cannot be run", as shells say; the error names the rule
GATEWAY_STATUS: Final = 255  # what ssh itself reports when it, not the command, failed

STDIN_LIMIT: Final = 1024 * 1024
"""Most bytes of a program on stdin the control plane holds; a larger one is refused."""
STDIN_TEXT_LIMIT: Final = 256 * 1024
"""Most bytes of a stdin program kept as text in its event (its digest covers all of it)."""
HOLD_NOTICE_AFTER: Final = 2.0
"""Seconds a held program's stdin may stay open before the client is told why nothing runs."""
_FORWARD_PIECE: Final = 64 * 1024  # input messages the held program is sent in
PROGRAM_RULE: Final = "(stdin program)"
RUN_AS_RULE: Final = "(run_as)"
ENV_RULE: Final = "(env)"

Kind = Literal["ssh", "shell"]


@dataclass(slots=True)
class _Held:
    """A command waiting for the end of the program it reads from stdin."""

    start: codec.Start
    raw: bytes
    readers: list[StdinReader]
    decision: Decision
    data: bytearray = field(default_factory=bytearray)


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
        run_as: str | None = None,
        shell: Sequence[str] | None = None,
        agent_run_as: codec.RunAs | None = None,
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
        self._run_as = run_as  # the account a shell command runs as ("agent": the agent's)
        self._agent_run_as = agent_run_as  # ... as the agent resolved it when it attached
        # What a `shell` connection runs a command text with (the agent's default: sh -c).
        self._shell = tuple(shell) if shell else codec.DEFAULT_SHELL
        self._strict = ctx.audit_mode == "strict"
        self._from_client = codec.TermFramer.from_client()
        self._from_target = codec.TermFramer.from_target()
        self._start: codec.Start | None = None
        self._masking: Masking | None = None  # the command line as it may be recorded
        self._ref: Any = None  # seq (or its future, async mode) of the command's event
        self._started = 0.0
        self._recording: Recording | None = None
        self._lines: LineTracker | None = None
        self._answer: list[bytes] = []  # our own answer (a refusal), due to the client
        self._held: _Held | None = None  # a stdin program being gathered before the start
        self._notices: list[bytes] = []  # stderr lines of our own, due to the client
        self._waiting_notice: asyncio.TimerHandle | None = None
        self._program: dict[str, Any] | None = None  # its digest, for the result event
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
        out: list[bytes | memoryview] = []
        for msg in self._from_client.feed(data):
            if self._refused:
                continue  # nothing of a refused session reaches the agent
            if msg.tag == codec.START:
                if self._start is not None:
                    raise ProtocolError("a session runs one command; `start` came twice")
                if await self._begin(codec.parse_start(msg.body), bytes(msg.raw)):
                    out.append(msg.raw)
                continue
            if self._start is None:
                raise ProtocolError("a terminal session must begin with `start`")
            if self._held is not None:
                out.extend(await self._hold(msg))
                continue
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

    async def _begin(self, start: codec.Start, raw: bytes) -> bool:
        """Decide and record the command; False when it must not be forwarded (yet)."""
        self._start = start
        decision = self._decide(start)
        readers = self._stdin_readers(start)
        if readers and decision.allowed:
            if start.pty is None:
                # Its program is still to come on stdin: decided and recorded at its end.
                self._held = _Held(start, raw, readers, decision)
                self._waiting_notice = asyncio.get_running_loop().call_later(
                    HOLD_NOTICE_AFTER, self._notice_waiting
                )
                return False
            if self._mode == "exec":
                decision = Decision(
                    False,
                    "(mode)",
                    f"{readers[0].describe()}, here a terminal: that is a terminal session and "
                    "needs the connect mode (`gatehouse ssh` or `gatehouse connect`, "
                    "recorded); this session was opened for exec",
                )
        return await self._record_start(start, decision)

    def _stdin_readers(self, start: codec.Start) -> list[StdinReader]:
        if start.subsystem is not None or start.interactive:
            return []
        if self._kind == "shell" and start.argv:
            return stdin_readers(argv=start.argv)
        if self._kind == "shell":  # a text runs as the connection's shell's last argument
            return stdin_readers(argv=[*self._shell, start.command_line()])
        return stdin_readers(text=start.command_line())

    async def _record_start(
        self, start: codec.Start, decision: Decision, program: dict[str, Any] | None = None
    ) -> bool:
        """Record the command (and the program it reads from stdin); True if it may run."""
        try:
            event = self._command_event(start, decision, program)
            if self._strict or program is not None:
                self._ref = await self._audit.commit(event)
            else:
                self._ref = await self._audit.submit(event)
        except AuditUnavailable as exc:
            self._refuse(f"gatehouse: not run: the audit store refused its record: {exc}")
            return False
        self.statements = 1
        if not decision.allowed:
            status = GATEWAY_STATUS if decision.rule == RUN_AS_RULE else DENIED_STATUS
            self._refuse(f"gatehouse: {decision.reason}", status)
            return False
        self._started = time.monotonic()
        if start.pty is not None:
            self._recording = Recording(
                self._store,
                width=start.pty.cols,
                height=start.pty.rows,
                term=start.pty.term,
                title=_title(self.session, start, self._masked(start).line),
            )
            self._lines = LineTracker()
        return True

    def _decide(self, start: codec.Start) -> Decision:
        if self._mode == "exec" and (
            start.interactive or start.subsystem is not None or start.pty is not None
        ):
            # Access rules grant `exec` for commands: a shell, sftp or any terminal is the
            # `connect` mode's (`less`'s `!`, `tmux` or `vim` on a terminal are shells).
            if start.interactive:
                what = "an interactive shell"
            elif start.subsystem is not None:
                what = f"the {start.subsystem} subsystem"
            else:
                what = f"{start.command_line()} on a terminal"
            return Decision(
                False,
                "(mode)",
                f"{what} needs the connect mode (`gatehouse ssh` or `gatehouse connect`); "
                "this session was opened for exec",
            )
        if (problem := codec.env_problem(start.env)) is not None:
            return Decision(False, ENV_RULE, f"not run: {problem}")
        if self._kind == "shell" and (refused := self._run_as_refusal()) is not None:
            return refused
        if self._kind == "shell" and start.argv:
            return self._guard.check_argv(start.argv)
        if start.argv or start.command is not None:
            return self._guard.check_text(start.command_line())
        # A login shell or a subsystem (sftp) is no command a guardrail can read; who may open
        # one is the access rules' `connect` mode. The session is recorded all the same.
        return Decision(True)

    def _run_as_refusal(self) -> Decision | None:
        """A shell command runs only where the trail can say whose account it runs as, and
        only as the account the policy names."""
        agent = self.session.connection.get("agent", "")
        reported = self._agent_run_as
        if reported is None:
            return Decision(
                False,
                RUN_AS_RULE,
                f"agent {agent!r} did not say whose account runs this connection's commands "
                "(it is older than the control plane), so the trail could not record it; "
                "upgrade the agent",
            )
        wanted = _run_as_of_policy(self._run_as)
        if self._run_as is not None and (reported.mode, reported.account) != wanted:
            return Decision(
                False,
                RUN_AS_RULE,
                f"agent {agent!r} would run this command as {_who(reported)}, but the policy "
                f"says run_as: {self._run_as}; the agent has not applied the current policy "
                "yet: try again in a moment (`gatehouse admin agents list` shows whether it "
                "is online)",
            )
        return None

    async def _hold(self, msg: codec.Message) -> list[bytes | memoryview]:
        """A message while the stdin program is gathered; at its end, what to forward."""
        held = self._held
        assert held is not None
        if msg.tag == codec.INPUT:
            self.bytes_in += len(msg.body)
            if len(held.data) + len(msg.body) > STDIN_LIMIT:
                await self._release(
                    Decision(
                        False,
                        PROGRAM_RULE,
                        f"the program {shlex.join(held.readers[0].command)} reads from stdin is "
                        f"longer than {STDIN_LIMIT} bytes, the most the gateway holds to record "
                        "it before it runs; run it as a file on the target, or interactively "
                        "with `gatehouse ssh` / `gatehouse connect` (recorded)",
                    )
                )
                return []
            held.data += msg.body
            return []
        if msg.tag == codec.EOF:
            return await self._release(None, eof=bytes(msg.raw))
        if msg.tag == codec.SIGNAL:
            codec.parse_signal(msg.body)
            await self._release(
                Decision(False, "(interrupted)", "interrupted before its stdin ended; not run")
            )
            return []
        if msg.tag == codec.WINDOW:
            codec.parse_window(msg.body)  # no terminal: nothing to resize
        return []

    def _notice_waiting(self) -> None:
        """Someone may be typing at a terminal and wondering why nothing happens: say so."""
        if self._held is None:
            return
        text = (
            f"gatehouse: {self._held.readers[0].describe()}; it is recorded and runs once "
            f"stdin ends (Ctrl-D at a terminal; `gatehouse exec -n` sends none), at most "
            f"{STDIN_LIMIT} bytes\n"
        )
        self._notices.append(codec.encode(codec.STDERR, text.encode()))
        self._wake()

    async def _release(self, denied: Decision | None, eof: bytes = b"") -> list[bytes | memoryview]:
        """The stdin program is complete (or refused): decide, record, then forward it."""
        held = self._held
        assert held is not None
        self._held = None
        if self._waiting_notice is not None:
            self._waiting_notice.cancel()
        data = bytes(held.data)
        program = _program_event(data, held.readers, truncated=denied is not None)
        self._program = {
            key: program[key] for key in ("sha256", "masked", "bytes") if key in program
        }
        decision = denied or held.decision
        if denied is None:
            text = data.decode("utf-8", "backslashreplace")
            for reader in held.readers:
                verdict = self._guard.check_program(reader.language, reader.command, text)
                if not verdict.allowed:
                    decision = Decision(
                        False, verdict.rule, f"the program on stdin is {verdict.reason}"
                    )
                    break
        if not await self._record_start(held.start, decision, program):
            return []
        out: list[bytes | memoryview] = [held.raw]
        for offset in range(0, len(data), _FORWARD_PIECE):
            out.append(codec.encode(codec.INPUT, data[offset : offset + _FORWARD_PIECE]))
        out.append(eof)
        return out

    def _masked(self, start: codec.Start) -> Masking:
        """The command line as events may record it: its secrets masked (what runs is
        ``start``, unchanged, and guardrails decide on that)."""
        if self._masking is None:
            if self._kind == "shell" and start.argv:
                self._masking = Masking.of_argv(start.argv)
            else:
                self._masking = Masking.of_text(start.command_line())
        return self._masking

    def _command_event(
        self, start: codec.Start, decision: Decision, program: dict[str, Any] | None = None
    ) -> Draft:
        request: dict[str, Any] = {}
        masking = self._masked(start)
        masked = masking.masked
        if self._kind == "shell" and start.argv:
            request["argv"] = list(masking.argv or ())
        elif start.argv or start.command is not None:
            request["command"] = masking.text
        if start.subsystem is not None:
            request["subsystem"] = start.subsystem
        if self._kind == "shell":
            request["workdir"] = self._workdir
            request["run_as"] = self._run_as_event()
        env = _recorded_env(start.env)
        if env:
            request["env"] = env
            masked = masked or env != start.env
        if program is not None:
            readers = [
                {**reader, "command": masking.scrub_words(reader["command"])}
                for reader in program["readers"]
            ]
            request["stdin"] = {**program, "readers": readers}
        if start.pty is not None:
            request["pty"] = {
                "term": start.pty.term,
                "cols": start.pty.cols,
                "rows": start.pty.rows,
            }
        if masked:
            request["masked"] = True
        if self._kind == "shell":
            event_type = "shell.command"
        else:
            event_type = "ssh.session" if start.interactive else "ssh.exec"
        recorded = decision.as_event()
        if "reason" in recorded:
            recorded["reason"] = _without_env_values(masking.scrub(recorded["reason"]), start.env)
        return draft(event_type, session=self.session, request=request, decision=recorded)

    def _run_as_event(self) -> dict[str, Any]:
        """Whose account the command runs as: what the agent said, else what the policy asked
        for with no uid (and the command is refused)."""
        if self._agent_run_as is not None:
            return self._agent_run_as.as_event()
        mode, account = _run_as_of_policy(self._run_as)
        return codec.RunAs(mode, account=account, error="not reported by the agent").as_event()

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
        """Our own notices, and our own answer (a refusal), once: after that the session is
        over."""
        notices, self._notices = self._notices, []
        if not self._answer:
            return notices
        answer, self._answer = self._answer, []
        self.finished = True
        return notices + answer

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

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        """The session's last words to the client, in this protocol."""
        return codec.encode_exit(codec.Exit(GATEWAY_STATUS, error=f"gatehouse: {message}"))

    async def finish(self, reason: str) -> None:
        """At the session's end: a command that never reported its exit gets a result saying
        its outcome is unknown, and why the session ended; one whose stdin program never
        ended is recorded as not run (it never reached the agent)."""
        if self._held is not None:
            await self._release(
                Decision(False, PROGRAM_RULE, f"the session ended before its stdin did: {reason}")
            )
        await self._unknown(f"the session ended before the command reported its exit: {reason}")

    async def agent_lost(self) -> None:
        """The agent's stream broke: a command without an exit gets a result saying its
        outcome is unknown (it may still be running, or have finished unreported)."""
        await self._unknown("agent lost before the result arrived")

    async def _unknown(self, why: str) -> None:
        """The command ran (or may have) and its exit will never come: no exit status is
        recorded, as none is known; `error: unknown` and `message` say so."""
        if self._start is not None and not self._refused and not self._resulted:
            await self._result(None, why)

    async def _result(self, exit_: codec.Exit | None, unknown: str = "") -> None:
        """Commit the command's result (before its exit is passed on); `exit_` None: the
        outcome is unknown, for the reason `unknown`."""
        if self._resulted or self._ref is None:
            return
        self._resulted = True
        if self._lines is not None:
            await self._typed_lines(final=True)
        summary = await self._recording.close() if self._recording is not None else None
        kind = f"{self._kind}.result"
        result: dict[str, Any] = {
            "exit_code": exit_.status if exit_ else None,
            "signal": exit_.signal if exit_ else None,
            "error": exit_.error if exit_ else "unknown",
            "message": None if exit_ else unknown,
            "duration_ms": round((time.monotonic() - self._started) * 1000, 3),
            "bytes": {"in": self.bytes_in, "out": self.bytes_out, "err": self.bytes_err},
            "stdin": self._program,
            # The account the agent says it started the command as (unknown without an exit).
            "run_as": exit_.run_as.as_event() if exit_ and exit_.run_as is not None else None,
        }
        try:
            ref = self._ref if isinstance(self._ref, int) else await self._ref
        except AuditUnavailable as exc:
            # Async mode: the command's own event was never committed, so its result has
            # nothing to refer to. Counted and reported like any lost result.
            self._audit.result_lost(self.session.session_id, kind, exc)
            return
        event = draft_result(
            kind,
            session=self.session,
            ref=ref,
            result={k: v for k, v in result.items() if v is not None},
            recording=summary.as_event() if summary is not None else None,
        )
        try:
            seq = await self._audit.commit(event)
        except AuditUnavailable:
            return  # the writer counted it and told the session's watch
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


def reported_run_as(message: agent_pb2.RunAs | None) -> codec.RunAs | None:
    """A shell session's account as the agent said it when attaching (None: it said nothing)."""
    if message is None:
        return None
    return codec.RunAs(
        message.mode,
        message.uid if message.HasField("uid") else None,
        message.user or None,
        message.account or None,
        message.error or None,
    )


def _run_as_of_policy(run_as: str | None) -> tuple[str, str | None]:
    """The (mode, account) a policy's ``run_as`` asks for."""
    return ("agent", None) if run_as == "agent" else ("account", run_as)


def _who(run_as: codec.RunAs) -> str:
    """An account for a message: ``its own user (uid 0, root)``, ``account deploy``."""
    what = "its own user" if run_as.mode == "agent" else f"account {run_as.account}"
    if run_as.uid is None:
        return what
    return f"{what} (uid {run_as.uid}{f', {run_as.user}' if run_as.user else ''})"


def _program_event(data: bytes, readers: list[StdinReader], *, truncated: bool) -> dict[str, Any]:
    """The `stdin` of a command event: the program as text (up to STDIN_TEXT_LIMIT bytes;
    bytes that are not UTF-8 as backslash escapes; a database client's password literals
    masked), its SHA-256 and length, who reads it.

    A program whose text had a password masked gets `masked` instead of its SHA-256: with the
    rest of the text in the trail, the digest would let anyone reading it test guesses of the
    password offline."""
    kept = data[:STDIN_TEXT_LIMIT]
    read = kept.decode("utf-8", "backslashreplace")
    text = _without_passwords(read, readers)
    event: dict[str, Any] = {"text": text}
    if text == read:
        event["sha256"] = hashlib.sha256(data).hexdigest()
    else:
        event["masked"] = True
    event["bytes"] = len(data)
    event["readers"] = [reader.as_event() for reader in readers]
    if truncated or len(kept) < len(data):
        event["truncated"] = True  # the event holds the first bytes only; `bytes` says how many
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        event["utf8"] = False
    return event


def _without_passwords(text: str, readers: list[StdinReader]) -> str:
    """A database client's program with its password literals masked, as that database's own
    `db.query` events have them (``psql < migration.sql`` creating a role with its password),
    and a shell script with the secrets of its command lines masked, as a command's own
    event has them (``mysql -pS3cret``)."""
    names = {PurePosixPath(reader.command[0]).name for reader in readers if reader.command}
    if "psql" in names:
        text = redact_statement(text)
    if names & {"mysql", "mariadb"}:
        text = redact(text)
    if any(reader.language == "shell" for reader in readers):
        # A shell script's command lines, as a command line of its own would be recorded.
        text = Masking.of_text(text).text or text
    return text


def _title(ctx: SessionContext, start: codec.Start, line: str) -> str:
    """The recording's title: the connection and what ran (``line``: its secrets masked), as
    a player lists it."""
    return f"{ctx.connection.get('name', '')}: {line if start.command_line() else 'login shell'}"


_LOCALE_NAME: Final = re.compile(
    r"(?:[A-Za-z]{1,8}(?:_[A-Za-z]{2,3})?(?:\.[A-Za-z0-9\-]{1,20})?(?:@[A-Za-z0-9]{1,20})?)?"
)
"""A value of a locale variable: ``zh_TW.BIG5`` (refused, yet no secret: it says why)."""


def _kept_env(name: str, value: str) -> bool:
    return (name == "LANG" or name.startswith("LC_")) and _LOCALE_NAME.fullmatch(value) is not None


def _recorded_env(env: dict[str, str]) -> dict[str, str]:
    """A start's environment as its event may have it: a locale variable's value as it came,
    any other value masked. Only the locale reaches a target (`ENV_RULE` refuses the rest),
    but the refusal is recorded too, and ``PGPASSWORD`` is what a client would send."""
    return {name: value if _kept_env(name, value) else MASK for name, value in env.items()}


def _without_env_values(reason: str, env: dict[str, str]) -> str:
    """A refusal's reason without the values the event masks (``LC_ALL=…``)."""
    for name, value in env.items():
        if value and not _kept_env(name, value):
            reason = reason.replace(f"{name}={value}", f"{name}={MASK}")
    return reason


def open_inspector(opening: Opening) -> TermInspector:
    """An `ssh` or `shell` session's inspector: its connection's command guardrails, where its
    recording is stored, and (shell) whose account its commands run as."""
    target = opening.target
    store, recorded = stored_in(opening.db, opening.session.session_id)
    return TermInspector(
        opening.session,
        opening.audit,
        opening.tunnel.wake,
        kind="ssh" if opening.connection.type == "ssh" else "shell",
        mode=opening.mode,
        guard=opening.policy.command_guard(opening.connection),
        store=store,
        recorded=recorded,
        workdir=getattr(target, "workdir", None),
        run_as=getattr(target, "run_as", None),
        shell=getattr(target, "shell", None),
        agent_run_as=reported_run_as(opening.tunnel.run_as),
    )
