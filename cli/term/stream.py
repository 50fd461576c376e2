"""The client end of a terminal session (`ssh` and `shell` connections).

`gatehouse exec NAME -- CMD`, `gatehouse ssh NAME` and every channel of the local SSH
listener speak wire.term.codec through one ClientService session each; this module is that
one client. The caller supplies what to run (`Start`), where input comes from (an async
iterator of bytes: stdin, or an SSH channel) and where output goes (`Output`); `relay` pumps
both ways and returns the command's `Exit`.

Writes go through one task that joins whatever is queued into one gRPC message (few, large
messages: DESIGN §2). Input waits while HIGH_WATER bytes are queued (back-pressure); window
changes and signals are queued without waiting, from signal handlers and SSH callbacks, so
at most HIGH_WATER of input is ever ahead of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import stat
import sys
from collections import deque
from collections.abc import AsyncIterator
from types import TracebackType
from typing import BinaryIO, Protocol

import grpc

from cli.errors import CliError
from cli.session import Opened
from cli.term import TERMINAL_TYPES as TERMINAL_TYPES  # noqa: PLC0414 - cli.ssh reads it here
from gatehouse.v1 import client_pb2
from wire.term import codec

CHUNK = 64 * 1024
"""Largest INPUT body sent: the codec's senders cut data into pieces of this size."""
FRAME_LIMIT = 1024 * 1024
"""At most this much is joined into one gRPC message."""
HIGH_WATER = 512 * 1024
"""Input waits while this much is queued and not yet written."""
SAID_TAIL = 4096
"""Bytes of stderr kept to tell whether an exit's error was printed already."""
CLOSE_WAIT = 5.0
"""Seconds to wait for the control plane to end the stream after the exit status."""


class Output(Protocol):
    """Where the target's output goes; awaiting a write is the back-pressure."""

    async def stdout(self, data: bytes) -> None: ...

    async def stderr(self, data: bytes) -> None: ...


class SessionClosed(Exception):
    """The session's stream can take no more messages."""


class TermSession:
    """One open session whose data is codec messages: `async with` owns its writer task."""

    def __init__(self, opened: Opened) -> None:
        self.opened = opened
        self._pending: deque[bytes] = deque()
        self._queued = 0
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    @property
    def session_id(self) -> str:
        return self.opened.session_id

    async def __aenter__(self) -> TermSession:
        self._writer = asyncio.create_task(self._write_loop(), name="term-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self.opened.call.cancel()

    # client → target

    def start(self, start: codec.Start) -> None:
        self.post(codec.encode_start(start))

    def eof(self) -> None:
        self.post(codec.encode(codec.EOF))

    def window(self, cols: int, rows: int) -> None:
        self.post(codec.encode_window(cols, rows))

    def signal(self, name: str) -> None:
        """Forward a signal by its name without "SIG"; names the codec does not carry are
        dropped (an SSH client may send any)."""
        if name in codec.SIGNALS:
            self.post(codec.encode(codec.SIGNAL, name.encode()))

    async def send_input(self, data: bytes) -> None:
        """Queue stdin bytes in codec-sized pieces; waits while too much is queued."""
        for offset in range(0, len(data), CHUNK):
            while self._queued >= HIGH_WATER and not self._closed:
                self._drained.clear()
                await self._drained.wait()
            self.post(codec.encode(codec.INPUT, data[offset : offset + CHUNK]))

    def post(self, message: bytes) -> None:
        """Queue one encoded message without waiting."""
        if self._closed:
            raise SessionClosed
        self._pending.append(message)
        self._queued += len(message)
        self._wake.set()

    async def _write_loop(self) -> None:
        call = self.opened.call
        try:
            while not self._closed:
                await self._wake.wait()
                self._wake.clear()
                while self._pending and not self._closed:
                    parts = [self._pending.popleft()]
                    size = len(parts[0])
                    while self._pending and size + len(self._pending[0]) <= FRAME_LIMIT:
                        parts.append(self._pending.popleft())
                        size += len(parts[-1])
                    await call.write(client_pb2.ClientFrame(data=b"".join(parts)))
                    self._queued -= size
                    self._drained.set()
        except (grpc.aio.AioRpcError, grpc.aio.UsageError):
            pass  # the stream ended; the reader sees why
        finally:
            self._close()

    def _close(self) -> None:
        self._closed = True
        self._drained.set()

    # target → client

    async def messages(self) -> AsyncIterator[codec.Message]:
        """The target's messages in order, until the stream ends (its status raises)."""
        framer = codec.TermFramer.from_target()
        call = self.opened.call
        while True:
            frame = await call.read()
            if not isinstance(frame, client_pb2.ServerFrame):
                return
            if frame.HasField("data"):
                for message in framer.feed(frame.data):
                    yield message

    async def finish(self) -> None:
        """After the exit status: say we are done and let the control plane end the stream,
        so the session ends as finished rather than cancelled."""
        self._close()
        if self._writer is not None:
            # Let a write in flight finish: cancelling a task inside grpc.aio's call.write()
            # cancels the whole call, and the exit status read next would be lost.
            self._wake.set()
            try:
                async with asyncio.timeout(CLOSE_WAIT):
                    await asyncio.shield(self._writer)
            except TimeoutError:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
        call = self.opened.call
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, TimeoutError):
            async with asyncio.timeout(CLOSE_WAIT):
                await call.done_writing()
                while isinstance(await call.read(), client_pb2.ServerFrame):
                    pass


async def relay(
    session: TermSession,
    start: codec.Start,
    source: AsyncIterator[bytes] | None,
    output: Output,
) -> codec.Exit:
    """Run `start` and pump: `source` → INPUT then EOF (None: EOF at once, like `ssh -n`),
    STDOUT/STDERR → `output`. Returns at the EXIT message without waiting for more input,
    as ssh does, so a terminal nobody types into does not hold the command open."""
    session.start(start)
    pump = asyncio.create_task(pump_input(session, source), name="term-input")
    try:
        async for message in session.messages():
            if message.tag == codec.STDOUT:
                await output.stdout(bytes(message.body))
            elif message.tag == codec.STDERR:
                await output.stderr(bytes(message.body))
            elif message.tag == codec.EXIT:
                exit_ = codec.parse_exit(message.body)
                pump.cancel()
                await session.finish()
                return exit_
    except codec.ProtocolError as exc:
        raise CliError(f"the gateway sent a malformed terminal message: {exc}") from None
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
    raise CliError(
        f"session {session.session_id} ended before the command's exit status arrived; "
        f"see `gatehouse sessions show {session.session_id}`"
    )


class StdStreams:
    """Output to this process's stdout and stderr, flushed per message so that a pipe
    reader sees output as the command prints it. A write that blocks on a slow reader holds
    the session back, which is the back-pressure a pipe wants."""

    def __init__(self) -> None:
        self.said = b""
        """The end of what went to stderr: a refusal the gateway already printed there is
        not repeated by `exit_status`."""

    async def stdout(self, data: bytes) -> None:
        _write(sys.stdout.buffer, data)

    async def stderr(self, data: bytes) -> None:
        _write(sys.stderr.buffer, data)
        self.said = (self.said + data)[-SAID_TAIL:]


def _write(stream: BinaryIO, data: bytes) -> None:
    stream.write(data)
    stream.flush()


def exit_status(exit_: codec.Exit, said: bytes = b"") -> int:
    """The status this process exits with: the command's. When the gateway or the agent
    ended or refused it, its reason goes to stderr (unless `said` ends with it already) and
    the status is never 0."""
    if exit_.error:
        if not said.rstrip().endswith(exit_.error.encode()):
            sys.stderr.write(f"error: {exit_.error}\n")
            sys.stderr.flush()
        return exit_.status or 1
    return exit_.status


async def pump_input(session: TermSession, source: AsyncIterator[bytes] | None) -> None:
    """Everything `source` yields as INPUT, then EOF; stops quietly when the session closes."""
    with contextlib.suppress(SessionClosed):
        if source is not None:
            async for data in source:
                await session.send_input(data)
        session.eof()


async def read_fd(fd: int, size: int = CHUNK) -> AsyncIterator[bytes]:
    """Bytes from a file descriptor as they arrive, until end of file, without blocking the
    event loop. Pipes, sockets and terminals are watched by the loop; a regular file or a
    device the loop cannot watch (/dev/null) is read in a thread, where a read never waits
    for a person. O_NONBLOCK is left alone: it would change the terminal for the shell too."""
    loop = asyncio.get_running_loop()
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return  # no stdin at all: nothing to send
    ready = asyncio.Event()
    watched = False
    if not stat.S_ISREG(mode):
        try:
            loop.add_reader(fd, ready.set)
            watched = True
        except (OSError, ValueError, NotImplementedError):
            watched = False
    try:
        while True:
            if watched:
                await ready.wait()
                ready.clear()
                # The loop may have signalled readiness that an earlier read already used up.
                if not _readable(fd):
                    continue
                data = _read(fd, size)
                if data is None:
                    continue
            else:
                data = await loop.run_in_executor(None, _read, fd, size)
            if not data:
                return
            yield data
    finally:
        if watched:
            loop.remove_reader(fd)


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _read(fd: int, size: int) -> bytes | None:
    """One read; None when nothing is there after all (someone made the fd non-blocking)."""
    try:
        return os.read(fd, size)
    except BlockingIOError:
        return None
    except OSError:
        return b""  # EIO: the terminal hung up; treat as end of input
