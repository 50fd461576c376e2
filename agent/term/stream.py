"""One command's terminal stream on the agent: client messages in, output and exit out.

`ssh` (a channel to a remote sshd) and `shell` (a child process on the agent's host) differ
only in how a command starts. Once it runs, `run_session` drives both the same way:

* the client's first message must be ``start``; the engine's `launch` turns it into a
  `TermProcess` or refuses it with a reason (`Refused`), which the client gets as ``exit``;
* input, eof, window and signal messages go to the process in order, input with
  backpressure (the next message is read only once the process took the previous one);
* stdout and stderr go out as they are read, up to `READ_SIZE` a message, one sender at a
  time; ``exit`` follows only once both reached their end, so it is always the last message;
* a client that leaves (`receive()` returns None) takes its command with it: nothing runs
  on behalf of a session that is no longer there.

Nothing here queues: a slow client stalls the command's output, a slow command stalls the
client's input, and memory stays bounded by the read size and the transports' own buffers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from agent.engines import Cancel, Receive, SendFrame
from gatehouse.v1 import tunnel_pb2
from wire.term import codec

__all__ = [
    "GATEWAY_STATUS",
    "READ_SIZE",
    "ClientStream",
    "Launch",
    "Refused",
    "TargetLost",
    "TermProcess",
    "refuse",
    "run_session",
    "send_exit",
    "signalled",
]

log = logging.getLogger(__name__)

READ_SIZE = 64 * 1024
"""The most one read of stdout or stderr takes, and so the largest output message."""
GATEWAY_STATUS = 255
"""The exit status of a command that the agent refused or could not run, as ssh reports it."""
TIMEOUT_STATUS = 124
"""The exit status of a command stopped at the connection's timeout, as timeout(1) reports it."""
LIMIT_STATUS = 1
"""The exit status of a command stopped at the connection's output limit."""


class Refused(Exception):
    """The command cannot start; the message says why and what to do, for the client."""

    def __init__(self, message: str, status: int = GATEWAY_STATUS) -> None:
        super().__init__(message)
        self.status = status


class TargetLost(Exception):
    """The running command's channel broke; the message says how, for the client."""


class TermProcess(Protocol):
    """A running command as the pump sees it, whether an SSH channel or a local child."""

    async def read_stdout(self) -> bytes:
        """Up to READ_SIZE bytes as soon as any are there; b"" at the end. Raises TargetLost."""
        ...

    async def read_stderr(self) -> bytes:
        """As `read_stdout`; with a terminal everything arrives on stdout and this ends."""
        ...

    async def write(self, data: bytes) -> None:
        """Give the command input, returning once it was taken (backpressure). Input to a
        command that stopped reading is dropped, as a closed pipe would."""
        ...

    def write_eof(self) -> None:
        """Stdin ends."""
        ...

    def resize(self, cols: int, rows: int) -> None:
        """The client's terminal changed size (ignored without a terminal)."""
        ...

    def signal(self, name: str) -> None:
        """Deliver a signal (a name from codec.SIGNALS) to the command."""
        ...

    async def wait(self) -> codec.Exit:
        """How the command ended, once it did."""
        ...

    async def close(self) -> None:
        """Stop whatever still runs and release the channel; safe to call more than once."""
        ...


Launch = Callable[[codec.Start], Awaitable[TermProcess]]


class ClientStream:
    """The client's messages one at a time, however the tunnel cut them into frames."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._framer = codec.TermFramer.from_client()
        self._pending: deque[codec.Message] = deque()

    async def next(self) -> codec.Message | None:
        """The next message, or None once the client left. Raises codec.ProtocolError."""
        while not self._pending:
            data = await self._receive()
            if data is None:
                return None
            if isinstance(data, Cancel):
                continue  # terminals interrupt with Ctrl-C input or a signal message
            self._pending.extend(self._framer.feed(data))
        return self._pending.popleft()

    async def start(self) -> codec.Start | None:
        """The opening `start`, or None if the client left first."""
        message = await self.next()
        if message is None:
            return None
        if message.tag != codec.START:
            raise codec.ProtocolError("the first message must be start")
        return codec.parse_start(message.body)


async def send_exit(send: SendFrame, exit_: codec.Exit) -> None:
    """The session's last message: how the command ended, or why it never ran."""
    await send(tunnel_pb2.Frame(data=codec.encode_exit(exit_)))


def signalled(name: str) -> codec.Exit:
    """The exit of a command ended by signal `name` (no "SIG"): status 128 + n, as shells say."""
    try:
        number = int(signal.Signals[f"SIG{name}"])
    except KeyError:
        return codec.Exit(GATEWAY_STATUS, signal=name)
    return codec.Exit(128 + number, signal=name)


async def run_session(
    receive: Receive,
    send: SendFrame,
    launch: Launch,
    *,
    timeout: float | None = None,
    max_output: int | None = None,
) -> str:
    """Serve one terminal session: start, launch, pump until the command exits; returns why
    the session ended. `timeout` (seconds) and `max_output` (bytes of stdout and stderr
    together) stop the command when reached, with an exit that says which."""
    client = ClientStream(receive)
    try:
        start = await client.start()
    except codec.ProtocolError as exc:
        return await refuse(send, f"gatehouse agent: malformed start: {exc}")
    if start is None:
        return "the client left before the start"
    try:
        process = await launch(start)
    except Refused as exc:
        return await refuse(send, str(exc), exc.status)
    try:
        return await _pump(process, client, send, timeout, max_output)
    finally:
        await process.close()


async def refuse(send: SendFrame, error: str, status: int = GATEWAY_STATUS) -> str:
    """Answer the client with an exit that says why nothing ran; returns the end reason."""
    await send_exit(send, codec.Exit(status, error=error))
    return f"refused: {error}"


class _OutputLimit(Exception):
    """The command's output reached max_output."""


class _Output:
    """Output messages to the client: one sender at a time, counted against the limit."""

    def __init__(self, send: SendFrame, limit: int | None) -> None:
        self._send = send
        self._left = limit
        self._lock = asyncio.Lock()

    async def copy(self, tag: int, read: Callable[[], Awaitable[bytes]]) -> None:
        """Forward one stream until its end, or until the limit (sending what fits)."""
        while data := await read():
            over = self._left is not None and len(data) > self._left
            if self._left is not None:
                data = data[: self._left]
                self._left -= len(data)
            if data:
                async with self._lock:
                    await self._send(tunnel_pb2.Frame(data=codec.encode(tag, data)))
            if over:
                raise _OutputLimit


async def _to_exit(process: TermProcess, output: _Output) -> codec.Exit:
    """All of stdout and stderr, then the exit: the exit is always the last message."""
    readers = [
        asyncio.create_task(output.copy(codec.STDOUT, process.read_stdout)),
        asyncio.create_task(output.copy(codec.STDERR, process.read_stderr)),
    ]
    try:
        await asyncio.gather(*readers)
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return await process.wait()


async def _forward_input(process: TermProcess, client: ClientStream) -> None:
    """The client's messages to the process, in order, until the client leaves."""
    eof = False
    while (message := await client.next()) is not None:
        tag = message.tag
        if tag == codec.INPUT:
            if not eof:
                await process.write(bytes(message.body))
        elif tag == codec.EOF:
            if not eof:
                eof = True
                process.write_eof()
        elif tag == codec.WINDOW:
            process.resize(*codec.parse_window(message.body))
        elif tag == codec.SIGNAL:
            process.signal(codec.parse_signal(message.body))
        else:
            raise codec.ProtocolError("start may come only once")


async def _pump(
    process: TermProcess,
    client: ClientStream,
    send: SendFrame,
    timeout: float | None,
    max_output: int | None,
) -> str:
    finished = asyncio.create_task(_to_exit(process, _Output(send, max_output)))
    inbound = asyncio.create_task(_forward_input(process, client))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({finished, inbound}, return_when=asyncio.FIRST_COMPLETED)
    except TimeoutError:
        exit_ = codec.Exit(
            TIMEOUT_STATUS, error=f"timed out after {timeout:g} s (the connection's timeout)"
        )
    else:
        if finished.done():
            exit_ = _outcome(finished, max_output)
        elif (error := inbound.exception()) is None:
            return "the client left"
        elif isinstance(error, codec.ProtocolError):
            exit_ = codec.Exit(GATEWAY_STATUS, error=f"gatehouse agent: malformed message: {error}")
        else:
            raise error
    finally:
        for task in (finished, inbound):
            task.cancel()
        await asyncio.gather(finished, inbound, return_exceptions=True)
    await process.close()  # before the exit, so a stopped command no longer runs when it arrives
    account = getattr(process, "run_as", None)  # a shell child's account, for the record
    if isinstance(account, codec.RunAs):
        exit_ = dataclasses.replace(exit_, run_as=account)
    await send_exit(send, exit_)
    if exit_.error is not None:
        return exit_.error
    if exit_.signal is not None:
        return f"the command was ended by signal {exit_.signal}"
    return f"the command exited with status {exit_.status}"


def _outcome(finished: asyncio.Task[codec.Exit], max_output: int | None) -> codec.Exit:
    error = finished.exception()
    if error is None:
        return finished.result()
    if isinstance(error, _OutputLimit):
        return codec.Exit(
            LIMIT_STATUS,
            error=f"output limit of {max_output} bytes reached (the connection's max_output); "
            "the command was stopped",
        )
    if isinstance(error, TargetLost):
        return codec.Exit(GATEWAY_STATUS, error=str(error))
    log.error("terminal session failed", exc_info=error)
    return codec.Exit(GATEWAY_STATUS, error=f"gatehouse agent: the session failed ({error})")
