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

CHUNK_BYTES: Final = 256 * 1024  # a stored piece of the recording
ECHO_WAIT: Final = 1.0  # seconds a typed line waits for its echo before it counts as hidden
ECHO_WINDOW: Final = 16 * 1024  # characters of output kept to look for a line's echo
LINE_LIMIT: Final = 4096  # characters of one typed line kept for its event

_ANSI: Final = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[@-Z\\-_])")

Store = Callable[[int, bytes], Awaitable[None]]


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
    echo_from: int  # output position when its first key was typed
    ended: float = 0.0  # monotonic time of its Enter; 0 while being typed


class LineTracker:
    """Rebuilds the lines typed in a terminal and tells which ones the terminal echoed.

    A line counts as echoed when its text (after backspaces) appears in what the terminal
    printed since its first key; one that stays unseen for ECHO_WAIT seconds after its Enter was
    typed with echo off and is reported as hidden. Tab completion and line editing can make an
    ordinary line look hidden: the tracker errs towards hiding.
    """

    def __init__(self) -> None:
        self._output = ""  # recent printed text, escape sequences removed
        self._dropped = 0  # characters dropped from the front of _output
        self._current: _Line | None = None
        self._pending: deque[_Line] = deque()
        self._escape = False

    def typed(self, data: bytes) -> None:
        for char in data.decode("utf-8", "replace"):
            line = self._current
            if line is None:
                line = self._current = _Line([], bytearray(), self._position())
            line.raw += char.encode()
            if self._escape:  # cursor keys and the like: ESC [ … letter
                if char.isalpha() or char == "~":
                    self._escape = False
                continue
            if char == "\x1b":
                self._escape = True
            elif char in "\r\n":
                line.ended = time.monotonic()
                self._pending.append(line)
                self._current = None
            elif char in "\x7f\x08":
                if line.text:
                    line.text.pop()
            elif char == "\x15":  # Ctrl-U: kill the line
                line.text.clear()
            elif char == "\x03":  # Ctrl-C: the line is abandoned
                self._current = None
            elif (char == "\t" or char >= " ") and len(line.text) < LINE_LIMIT:
                line.text.append(char)

    def printed(self, data: bytes | memoryview) -> None:
        if self._current is None and not self._pending:
            self._output, self._dropped = "", self._dropped + len(self._output)
            return
        text = _ANSI.sub("", bytes(data).decode("utf-8", "replace"))
        if "\x08" in text:  # line editing redraws: "x<BS> <BS>" erases the x
            kept = list(self._output)
            for char in text:
                if char != "\x08":
                    kept.append(char)
                elif kept:
                    kept.pop()
            self._output = "".join(kept)
        else:
            self._output += text
        excess = len(self._output) - ECHO_WINDOW
        if excess > 0:
            self._output = self._output[excess:]
            self._dropped += excess

    def decided(self, *, final: bool = False) -> list[tuple[str | None, bytes]]:
        """Lines whose echo is decided: (text, raw keys) if echoed, (None, b"") if hidden.
        `final`: the session is over; whatever still waits is decided now."""
        out: list[tuple[str | None, bytes]] = []
        now = time.monotonic()
        while self._pending:
            line = self._pending[0]
            text = "".join(line.text)
            if self._echoed(line, text):
                out.append((text, bytes(line.raw)))
            elif final or now - line.ended >= ECHO_WAIT:
                out.append((None, b""))
            else:
                break
            self._pending.popleft()
        if final and self._current is not None and self._current.text:
            text = "".join(self._current.text)
            if self._echoed(self._current, text):
                out.append((text, bytes(self._current.raw)))
            self._current = None
        return out

    def _position(self) -> int:
        return self._dropped + len(self._output)

    def _echoed(self, line: _Line, text: str) -> bool:
        start = line.echo_from - self._dropped
        if start < 0:
            return False  # its echo window scrolled away: hide rather than guess
        if not text.strip():
            return True  # an empty line says nothing
        # Tab completion inserts text between what was typed: look for the typed pieces in order.
        position = start
        for piece in (p for p in text.split("\t") if p):
            found = self._output.find(piece, position)
            if found < 0:
                return False
            position = found + len(piece)
        return True
