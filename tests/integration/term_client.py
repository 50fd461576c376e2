"""A terminal-stream client in memory: drives an agent engine (`agent.term.ssh.run`,
`agent.term.shell.run`) through the same `receive`/`send` pair the session stream gives it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from agent.pg.relay import Cancel, Receive, SendFrame
from gatehouse.v1 import tunnel_pb2
from wire.term import codec

Engine = Callable[
    [Mapping[str, object], Mapping[str, str], Receive, SendFrame], Coroutine[Any, Any, str]
]
CHUNK = 64 * 1024


class TermClient:
    """Sends client messages to the engine and collects what it answers, in order."""

    def __init__(self) -> None:
        # Bounded like the tunnel: a test that outruns the engine waits, as a client would.
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
        self._framer = codec.TermFramer.from_target()
        self._changed = asyncio.Condition()
        self.messages: list[codec.Message] = []
        self.session: asyncio.Task[str] | None = None

    @classmethod
    async def open(
        cls,
        engine: Engine,
        target: Mapping[str, object],
        secrets: Mapping[str, str],
        start: codec.Start,
    ) -> TermClient:
        """A session of `engine` running in the background, started with `start`."""
        client = cls()
        client.session = asyncio.create_task(engine(target, secrets, client.receive, client.send))
        await client.start(start)
        return client

    async def ended(self, timeout: float = 10) -> str:
        """The engine's end reason, once its session ended."""
        assert self.session is not None
        async with asyncio.timeout(timeout):
            return await self.session

    async def receive(self) -> bytes | Cancel | None:
        return await self._inbox.get()

    async def send(self, frame: tunnel_pb2.Frame) -> None:
        assert not frame.marks, "terminal frames carry no result marks"
        async with self._changed:
            self.messages.extend(self._framer.feed(frame.data))
            self._changed.notify_all()

    async def put(self, data: bytes) -> None:
        await self._inbox.put(data)

    async def start(self, start: codec.Start) -> None:
        await self.put(codec.encode_start(start))

    async def write(self, data: bytes) -> None:
        for at in range(0, len(data), CHUNK):
            await self.put(codec.encode(codec.INPUT, data[at : at + CHUNK]))

    async def eof(self) -> None:
        await self.put(codec.encode(codec.EOF))

    async def window(self, cols: int, rows: int) -> None:
        await self.put(codec.encode_window(cols, rows))

    async def signal(self, name: str) -> None:
        await self.put(codec.encode(codec.SIGNAL, name.encode()))

    async def leave(self) -> None:
        await self._inbox.put(None)

    def output(self, tag: int = codec.STDOUT) -> bytes:
        return b"".join(bytes(m.body) for m in self.messages if m.tag == tag)

    @property
    def stdout(self) -> bytes:
        return self.output(codec.STDOUT)

    @property
    def stderr(self) -> bytes:
        return self.output(codec.STDERR)

    @property
    def exit(self) -> codec.Exit | None:
        exits = [m for m in self.messages if m.tag == codec.EXIT]
        assert len(exits) <= 1, "exit comes once"
        if not exits:
            return None
        assert self.messages[-1] is exits[0], "exit is the last message"
        return codec.parse_exit(exits[0].body)

    async def wait_for(self, needle: bytes, timeout: float = 10) -> None:
        """Until stdout holds `needle`."""
        await self.wait_until(lambda: needle in self.stdout, timeout)
        assert needle in self.stdout, (self.stdout, self.stderr, self.exit)

    async def wait_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        """Until `done()` holds or the session ended."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: done() or self.exit is not None)


async def run_command(
    engine: Engine,
    target: Mapping[str, object],
    secrets: Mapping[str, str],
    start: codec.Start,
    stdin: bytes | None = None,
    timeout: float = 30,
) -> tuple[str, TermClient]:
    """One command from start to exit: the end reason and the client that saw it all.
    With `stdin` given it is sent followed by eof; without, the client sends nothing more."""
    client = TermClient()
    session = asyncio.create_task(engine(target, secrets, client.receive, client.send))

    async def feed() -> None:
        await client.start(start)
        if stdin is not None:
            await client.write(stdin)
            await client.eof()

    feeder = asyncio.create_task(feed())  # an engine that refuses early reads no more
    try:
        async with asyncio.timeout(timeout):
            reason = await session
    finally:
        feeder.cancel()
        session.cancel()
    return reason, client
