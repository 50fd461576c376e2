"""Commands and terminals inside one session, as bytes the tunnel carries unchanged.

A PostgreSQL session carries the PostgreSQL protocol; an `ssh` or `shell` session carries
this one, so that the CLI, the control plane and the agent frame the same stream the same
way. Every message is ``tag (1 byte) | uint32 length of the body | body``:

client → target
  ``X`` start    JSON: what to run (`Start`); always the first message, exactly once
  ``I`` input    bytes for the command's stdin (a terminal's keystrokes)
  ``E`` eof      stdin ends (no body)
  ``W`` window   uint16 columns, uint16 rows: the client's terminal was resized
  ``S`` signal   ASCII signal name without "SIG", e.g. ``INT``
target → client
  ``O`` stdout   bytes (with a terminal: everything the terminal printed)
  ``R`` stderr   bytes
  ``T`` exit     JSON: `Exit`; always the last message

The control plane frames both directions: it decides and records the `start` before it is
forwarded, counts and records what flows, and records the `exit`.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from wire import errors

__all__ = [
    "DEFAULT_SHELL",
    "EOF",
    "EXIT",
    "INPUT",
    "MAX_BODY",
    "SIGNAL",
    "SIGNALS",
    "START",
    "STDERR",
    "STDOUT",
    "WINDOW",
    "Exit",
    "Message",
    "ProtocolError",
    "Pty",
    "RunAs",
    "Start",
    "TermFramer",
    "encode",
    "encode_exit",
    "encode_start",
    "encode_window",
    "env_problem",
    "parse_exit",
    "parse_signal",
    "parse_start",
    "parse_window",
]

START, INPUT, EOF, WINDOW, SIGNAL = (ord(c) for c in "XIEWS")
STDOUT, STDERR, EXIT = (ord(c) for c in "ORT")
CLIENT_TAGS = frozenset({START, INPUT, EOF, WINDOW, SIGNAL})
TARGET_TAGS = frozenset({STDOUT, STDERR, EXIT})
MAX_BODY = 4 * 1024 * 1024
"""Longest body accepted; senders cut their data into much smaller pieces (64 KiB)."""
DEFAULT_TERM = "xterm-256color"
DEFAULT_SHELL = ("/bin/sh", "-c")
"""What runs a `Start.command` text on a `shell` connection without a ``shell`` of its own,
with the text as its last word: the agent runs it so, and the control plane reads the text so."""
SIGNALS = frozenset({"INT", "TERM", "HUP", "QUIT", "KILL", "USR1", "USR2", "WINCH"})

_SAFE_LOCALE = re.compile(
    r"(?:C|POSIX|C\.(?:UTF-?8|utf-?8)|[A-Za-z]{2,3}(?:_[A-Za-z]{2})?\.(?:UTF-?8|utf-?8))"
    r"(?:@[A-Za-z0-9]+)?"
)
"""A locale in which a command line's bytes read as the gateway reads them (ASCII or UTF-8)."""

_HEADER = struct.Struct("!BI")
_WINDOW = struct.Struct("!HH")


class ProtocolError(errors.ProtocolError):
    """A malformed message: the session must end."""


@dataclass(frozen=True, slots=True)
class Pty:
    """The client's terminal: a command started with one gets a pseudo-terminal."""

    term: str = DEFAULT_TERM
    cols: int = 80
    rows: int = 24


@dataclass(frozen=True, slots=True)
class Start:
    """What to run. `argv` for a command; neither `argv` nor `subsystem` for a login shell
    (which needs `pty`); `subsystem` for an SSH subsystem such as ``sftp``. `command` is the
    text an SSH client sent, kept verbatim when it did not come as an argv."""

    argv: tuple[str, ...] = ()
    command: str | None = None
    subsystem: str | None = None
    pty: Pty | None = None
    env: dict[str, str] = field(default_factory=dict)

    def command_line(self) -> str:
        """The command as a remote shell receives it: what SSH clients send, and what
        guardrails and events see. `ssh host uname -a` joins its words with spaces."""
        if self.command is not None:
            return self.command
        return " ".join(self.argv)

    @property
    def interactive(self) -> bool:
        """A login shell: no command, no subsystem."""
        return not self.argv and self.command is None and self.subsystem is None


@dataclass(frozen=True, slots=True)
class RunAs:
    """The account a `shell` connection's commands run as, as the agent resolved it.

    `mode` is what the connection asks for: ``agent`` (the agent's own user) or ``account``
    (the `account` named by its ``run_as``). `uid` and `user` are the real account: for
    ``agent`` whatever the agent runs as, root included. `error` says why the agent cannot run
    commands as it (then `uid` and `user` are None and nothing runs)."""

    mode: str
    uid: int | None = None
    user: str | None = None
    account: str | None = None
    error: str | None = None

    def as_event(self) -> dict[str, Any]:
        """As events record it: ``{"mode": "agent", "uid": 0, "user": "root"}``."""
        event: dict[str, Any] = {"mode": self.mode}
        if self.account is not None:
            event["account"] = self.account
        event["uid"] = self.uid
        event["user"] = self.user
        if self.error is not None:
            event["error"] = self.error
        return event

    @classmethod
    def from_event(cls, document: object) -> RunAs:
        """From `as_event`'s shape; raises ProtocolError when it is not one."""
        if not isinstance(document, dict) or not isinstance(document.get("mode"), str):
            raise ProtocolError("run_as must be an object with a mode")
        uid = document.get("uid")
        if uid is not None and (not isinstance(uid, int) or isinstance(uid, bool) or uid < 0):
            raise ProtocolError("run_as: uid must be a non-negative integer")
        return cls(
            document["mode"],
            uid,
            _optional_str(document, "user"),
            _optional_str(document, "account"),
            _optional_str(document, "error"),
        )


@dataclass(frozen=True, slots=True)
class Exit:
    """How the command ended. `status` is its exit status (128 + n after signal n, as shells
    report it); `signal` names the signal that ended it; `error` says why the gateway or the
    agent ended or refused it (then the command may not have run at all). `run_as` is the
    account a `shell` command ran as, said by the agent that started it."""

    status: int
    signal: str | None = None
    error: str | None = None
    run_as: RunAs | None = None


@dataclass(slots=True)
class Message:
    tag: int
    body: memoryview
    raw: memoryview


def encode(tag: int, body: bytes | memoryview = b"") -> bytes:
    return _HEADER.pack(tag, len(body)) + bytes(body)


def encode_start(start: Start) -> bytes:
    document: dict[str, Any] = {}
    if start.argv:
        document["argv"] = list(start.argv)
    if start.command is not None:
        document["command"] = start.command
    if start.subsystem is not None:
        document["subsystem"] = start.subsystem
    if start.pty is not None:
        document["pty"] = {"term": start.pty.term, "cols": start.pty.cols, "rows": start.pty.rows}
    if start.env:
        document["env"] = dict(start.env)
    return encode(START, json.dumps(document, separators=(",", ":")).encode())


def encode_window(cols: int, rows: int) -> bytes:
    return encode(WINDOW, _WINDOW.pack(_clamp(cols), _clamp(rows)))


def encode_exit(exit_: Exit) -> bytes:
    document: dict[str, Any] = {"status": exit_.status}
    if exit_.signal is not None:
        document["signal"] = exit_.signal
    if exit_.error is not None:
        document["error"] = exit_.error
    if exit_.run_as is not None:
        document["run_as"] = exit_.run_as.as_event()
    return encode(EXIT, json.dumps(document, separators=(",", ":")).encode())


def parse_start(body: bytes | memoryview) -> Start:
    document = _json(body, "start")
    argv = document.get("argv", [])
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ProtocolError("start: argv must be a list of strings")
    command = _optional_str(document, "command")
    subsystem = _optional_str(document, "subsystem")
    if sum(bool(x) for x in (argv, command is not None, subsystem is not None)) > 1:
        raise ProtocolError("start: give one of argv, command and subsystem")
    if subsystem == "":
        raise ProtocolError("start: subsystem must name one (sftp)")
    if (argv or command is not None) and not " ".join(argv or [command or ""]):
        # An SSH exec request with no command text is a shell request: the target's login
        # shell would run whatever comes on stdin, unchecked and unrecorded.
        raise ProtocolError("start: the command is empty; give one to run")
    pty = None
    if (raw := document.get("pty")) is not None:
        if not isinstance(raw, dict):
            raise ProtocolError("start: pty must be an object")
        term, cols, rows = raw.get("term", DEFAULT_TERM), raw.get("cols", 80), raw.get("rows", 24)
        if not isinstance(term, str) or not all(_is_size(v) for v in (cols, rows)):
            raise ProtocolError("start: pty needs a term name and sizes from 1 to 65535")
        pty = Pty(term, cols, rows)
    env = document.get("env", {})
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ProtocolError("start: env must map names to strings")
    start = Start(tuple(argv), command, subsystem, pty, env)
    if start.interactive and pty is None:
        raise ProtocolError("start: a login shell needs a pty; give a command to run without one")
    return start


def env_problem(env: dict[str, str]) -> str | None:
    """Why a start's `env` must not reach a target, or None. Only the locale passes (LANG and
    LC_*, as sshd's AcceptEnv), and only one that reads bytes as ASCII or UTF-8, as guardrails
    read the command: in a Big5, GBK or Shift-JIS locale the second byte of a character may be
    a backslash or a quote to the gateway, so the target's shell would run other commands
    than the ones decided and recorded."""
    for name, value in env.items():
        if name != "LANG" and not name.startswith("LC_"):
            return f"environment variable {name} is not passed to a target (only LANG and LC_*)"
        if value and not _SAFE_LOCALE.fullmatch(value):
            return (
                f"{name}={value} is not a UTF-8 locale; a command is decided as UTF-8 text, so "
                "only C, POSIX and UTF-8 locales are passed to a target"
            )
    return None


def parse_window(body: bytes | memoryview) -> tuple[int, int]:
    if len(body) != _WINDOW.size:
        raise ProtocolError("window: expected 4 bytes (columns, rows)")
    cols, rows = _WINDOW.unpack(body)
    return cols, rows


def parse_signal(body: bytes | memoryview) -> str:
    name = bytes(body).decode("ascii", "replace")
    if name not in SIGNALS:
        raise ProtocolError(f"signal: {name!r} is not one of {', '.join(sorted(SIGNALS))}")
    return name


def parse_exit(body: bytes | memoryview) -> Exit:
    document = _json(body, "exit")
    status = document.get("status")
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProtocolError("exit: status must be an integer")
    run_as = document.get("run_as")
    if isinstance(run_as, str):  # an agent before uids were reported: the name it switched to
        mode = "agent" if run_as == "agent" else "account"
        account = None if mode == "agent" else run_as
        run_as = RunAs(mode, user=account, account=account)
    elif run_as is not None:
        run_as = RunAs.from_event(run_as)
    return Exit(status, _optional_str(document, "signal"), _optional_str(document, "error"), run_as)


class TermFramer:
    """Cut a byte stream into messages. `tags` are the ones this direction may carry."""

    def __init__(self, tags: frozenset[int]) -> None:
        self._tags = tags
        self._buffer = bytearray()

    @classmethod
    def from_client(cls) -> TermFramer:
        return cls(CLIENT_TAGS)

    @classmethod
    def from_target(cls) -> TermFramer:
        return cls(TARGET_TAGS)

    @property
    def incomplete(self) -> bool:
        """Bytes of an unfinished message are waiting."""
        return bool(self._buffer)

    def feed(self, data: bytes | memoryview) -> list[Message]:
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._needed():
                return []  # a long message arriving in pieces: no copy until it is whole
            view = memoryview(bytes(self._buffer))
            self._buffer.clear()
        else:
            view = memoryview(data)
        messages: list[Message] = []
        offset, size = 0, len(view)
        while size - offset >= _HEADER.size:
            tag, length = _HEADER.unpack_from(view, offset)
            if tag not in self._tags:
                raise ProtocolError(f"unexpected message type {_tag_name(tag)}")
            if length > MAX_BODY:
                raise ProtocolError(f"message of {length} bytes is longer than {MAX_BODY}")
            end = offset + _HEADER.size + length
            if end > size:
                break
            messages.append(Message(tag, view[offset + _HEADER.size : end], view[offset:end]))
            offset = end
        if offset < size:
            self._buffer += view[offset:]
        return messages

    def _needed(self) -> int:
        """Bytes the buffered message needs in all (its header's claim, once known)."""
        if len(self._buffer) < _HEADER.size:
            return _HEADER.size
        tag, length = _HEADER.unpack_from(self._buffer)
        if tag not in self._tags or length > MAX_BODY:
            return 0  # let feed() report it
        return _HEADER.size + int(length)


def _tag_name(tag: int) -> str:
    return repr(chr(tag)) if 0x20 < tag < 0x7F else f"0x{tag:02x}"


def _json(body: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        document = json.loads(bytes(body))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ProtocolError(f"{what}: expected a JSON object")
    return document


def _optional_str(document: dict[str, Any], key: str) -> str | None:
    value = document.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"{key} must be a string")
    return value


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536


def _clamp(value: int) -> int:
    return max(1, min(int(value), 65535))
