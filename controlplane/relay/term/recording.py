"""A terminal session's recording: asciicast v2, written as it happens, vouched for by the chain.

The recording is newline-delimited JSON (https://docs.asciinema.org/manual/asciicast/v2/): a
header, then ``[seconds, "o" | "i" | "r", text]`` per output, input and resize. It is stored in
pieces while the session runs (memory stays bounded; a crash keeps what was said) and its
SHA-256 goes into the session's result event, so a recording altered in the store no longer
matches the hash chain and replay refuses it.

Input is kept per line and only when the terminal echoed it: a line typed while echo was off
(a password at a `sudo` prompt) is left out, and so is its `ssh.input` event. That is decided
by the `LineTracker`; see ``docs/ssh.md`` for what a recording can and cannot hide.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from controlplane.store.database import Database
from controlplane.store.models import RecordingChunkRow, SessionRow

CHUNK_BYTES: Final = 256 * 1024  # a stored piece of the recording
ECHO_WAIT: Final = 1.0  # seconds a typed key waits for its echo before its line is hidden
EXPECTED_LIMIT: Final = 64 * 1024  # typed characters waiting for their echo, at most
COMPLETION_LIMIT: Final = 256  # characters a tab's completion may insert
_NOT_OUTPUT: Final = frozenset("\r\n\x08\x07\x00")  # printed around an echo, not text
LINE_LIMIT: Final = 4096  # characters of one typed line kept for its event

_ANSI: Final = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")

Store = Callable[[int, bytes], Awaitable[None]]
Recorded = Callable[[int], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Summary:
    """What the result event says of the recording."""

    sha256: str
    size: int
    events: int

    def as_event(self) -> dict[str, Any]:
        return {
            "format": "asciicast-v2",
            "sha256": self.sha256,
            "bytes": self.size,
            "events": self.events,
        }


class Recording:
    """Appends asciicast events and hands full pieces to `store(index, data)`."""

    def __init__(self, store: Store, *, width: int, height: int, term: str, title: str) -> None:
        self._store = store
        self._started = time.monotonic()
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._index = 0
        self._size = 0
        self._events = 0
        self._decoders = {
            "o": codecs.getincrementaldecoder("utf-8")("replace"),
            "i": codecs.getincrementaldecoder("utf-8")("replace"),
        }
        header = {
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": int(time.time()),
            "env": {"TERM": term},
            "title": title,
        }
        self._append(json.dumps(header, separators=(",", ":")) + "\n")

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def output(self, data: bytes | memoryview) -> None:
        await self._event("o", self._decoders["o"].decode(bytes(data)))

    async def input(self, data: bytes) -> None:
        await self._event("i", self._decoders["i"].decode(data))

    async def resize(self, cols: int, rows: int) -> None:
        await self._event("r", f"{cols}x{rows}")

    async def close(self) -> Summary:
        """Store what is left; the summary goes into the result event."""
        if self._buffer:
            await self._flush()
        return Summary(self._digest.hexdigest(), self._size, self._events)

    async def _event(self, kind: str, text: str) -> None:
        if not text:
            return
        self._events += 1
        line = json.dumps([round(self.elapsed(), 6), kind, text], ensure_ascii=False)
        self._append(line + "\n")
        if len(self._buffer) >= CHUNK_BYTES:
            await self._flush()

    def _append(self, line: str) -> None:
        data = line.encode()
        self._digest.update(data)
        self._buffer += data
        self._size += len(data)

    async def _flush(self) -> None:
        data, self._buffer = bytes(self._buffer), bytearray()
        await self._store(self._index, data)
        self._index += 1


@dataclass(slots=True)
class _Line:
    text: list[str]
    raw: bytearray
    waiting: int = 0  # its typed characters whose echo has not come yet
    hidden: bool = False  # one of them was not echoed right after it was typed


@dataclass(slots=True)
class _Key:
    """A typed character waiting for its echo. A tab stands for what completion inserts."""

    char: str
    line: _Line
    typed: float


class LineTracker:
    """Rebuilds the lines typed in a terminal and tells which ones the terminal echoed.

    A typed character counts as echoed only when it is what the terminal prints next: the
    output that follows the keys must begin with them (escape sequences, carriage returns,
    newlines, bells and backspace erasures aside), within ECHO_WAIT seconds. Anything else
    printed first — a program's output, a prompt — means the keys were not echoed, and their
    line is hidden; so is a line whose echo never comes. Output that merely contains the text
    later, or somewhere else, proves nothing. A typed tab lets completion insert up to
    COMPLETION_LIMIT characters of the same line. Line editing beyond that (history recall,
    completion listings, typing ahead while a program prints) makes an ordinary line look
    hidden: the tracker errs towards hiding. What it cannot tell apart: a program that prints,
    right after the keys, exactly the text that was typed with echo off.
    """

    def __init__(self) -> None:
        self._current: _Line | None = None
        self._pending: deque[_Line] = deque()  # ended lines, oldest first
        self._expected: deque[_Key] = deque()  # typed characters whose echo is due
        self._completed = 0  # characters completion inserted for the tab at the front
        self._escape = False
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._carry = ""  # an escape sequence cut at the end of the last output

    def typed(self, data: bytes) -> None:
        now = time.monotonic()
        for char in data.decode("utf-8", "replace"):
            line = self._current
            if line is None:
                line = self._current = _Line([], bytearray())
            line.raw += char.encode()
            if self._escape:  # cursor keys and the like: ESC [ … letter
                if char.isalpha() or char == "~":
                    self._escape = False
                continue
            if char == "\x1b":
                self._escape = True
            elif char in "\r\n":
                if self._expected and self._expected[-1].char == "\t":
                    self._expected.pop().line.waiting -= 1  # completion at the end: its own
                self._pending.append(line)
                self._current = None
            elif char in "\x7f\x08":
                if line.text:
                    line.text.pop()
            elif char == "\x15":  # Ctrl-U: kill the line
                line.text.clear()
            elif char == "\x03":  # Ctrl-C: the line is abandoned
                self._current = None
            elif char == "\t" or char >= " ":
                if len(line.text) < LINE_LIMIT:
                    line.text.append(char)
                self._expect(_Key(char, line, now))

    def _expect(self, key: _Key) -> None:
        if len(self._expected) >= EXPECTED_LIMIT:
            self._fail()  # far more typed than echoed: nothing of it can be vouched for
        key.line.waiting += 1
        self._expected.append(key)

    def _fail(self) -> None:
        """The characters due were not echoed right after they were typed: hide their lines."""
        for key in self._expected:
            key.line.hidden = True
            key.line.waiting -= 1
        self._expected.clear()
        self._completed = 0

    def _expire(self, now: float) -> None:
        if self._expected and now - self._expected[0].typed >= ECHO_WAIT:
            self._fail()

    def printed(self, data: bytes | memoryview) -> None:
        text = self._carry + self._decoder.decode(bytes(data))
        self._carry = ""
        cut = text.rfind("\x1b")
        if cut >= 0 and len(text) - cut < 64 and not _ANSI.match(text, cut):
            text, self._carry = text[:cut], text[cut:]  # finished by the next output
        if not self._expected:
            return
        self._expire(time.monotonic())
        for char in _ANSI.sub("", text).replace("\x08 \x08", "\x08"):
            if not self._expected:
                return
            self._echo(char)

    def _echo(self, char: str) -> None:
        """One printed character while keys wait for their echo."""
        key = self._expected[0]
        if key.char == "\t":  # completion may insert text here, on this line only
            following = self._expected[1] if len(self._expected) > 1 else None
            if following is not None and char == following.char:
                self._take()  # the tab; the character is the next key's echo
                self._take()
                return
            if char in "\r\n" or self._completed >= COMPLETION_LIMIT:
                self._fail()
            elif char >= " ":
                self._completed += 1
            return
        if char == key.char:
            self._take()
        elif char not in _NOT_OUTPUT:
            self._fail()  # something else was printed before the echo

    def _take(self) -> None:
        key = self._expected.popleft()
        key.line.waiting -= 1
        self._completed = 0

    def decided(self, *, final: bool = False) -> list[tuple[str | None, bytes]]:
        """Lines whose echo is decided: (text, raw keys) if echoed, (None, b"") if hidden.
        `final`: the session is over; whatever still waits is decided now."""
        out: list[tuple[str | None, bytes]] = []
        self._expire(time.monotonic())
        if final:
            self._fail()
        while self._pending:
            line = self._pending[0]
            if line.hidden:
                out.append((None, b""))
            elif line.waiting == 0:
                out.append(("".join(line.text), bytes(line.raw)))
            else:
                break
            self._pending.popleft()
        if final and self._current is not None and self._current.text:
            if not self._current.hidden:
                out.append(("".join(self._current.text), bytes(self._current.raw)))
            self._current = None
        return out


def stored_in(db: Database, session_id: str) -> tuple[Store, Recorded]:
    """Where a session's recording goes: its pieces as rows, and the seq of the result event
    that vouches for it on the session's row."""

    async def store(index: int, data: bytes) -> None:
        await db.write(
            lambda s: s.add(RecordingChunkRow(session_id=session_id, idx=index, data=data))
        )

    async def recorded(seq: int) -> None:
        def mark(session: Any) -> None:
            row = session.get(SessionRow, session_id)
            if row is not None:
                row.recording_seq = seq
                session.add(row)

        await db.write(mark)

    return store, recorded
