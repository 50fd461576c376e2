"""A stand-in for a ClientService session stream: what the CLI wrote, and a scripted target."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cli.session import Opened
from gatehouse.v1 import client_pb2
from wire.term import codec

Reply = Callable[[codec.Message], list[bytes]]


class FakeCall:
    """Records every ClientFrame; `reply` turns each client message into target messages."""

    def __init__(self, reply: Reply | None = None) -> None:
        self.frames: list[bytes] = []
        self.messages: list[codec.Message] = []
        self.done = False
        self.cancelled = False
        self._framer = codec.TermFramer.from_client()
        self._reply = reply or (lambda _: [])
        self._out: asyncio.Queue[client_pb2.ServerFrame | None] = asyncio.Queue()

    async def write(self, frame: client_pb2.ClientFrame) -> None:
        self.frames.append(frame.data)
        for message in self._framer.feed(frame.data):
            self.messages.append(message)
            for data in self._reply(message):
                self.send(data)

    def send(self, data: bytes) -> None:
        self._out.put_nowait(client_pb2.ServerFrame(data=data))

    def end(self) -> None:
        self._out.put_nowait(None)

    async def read(self) -> object:
        frame = await self._out.get()
        return frame if frame is not None else object()  # anything else is end of stream

    async def done_writing(self) -> None:
        self.done = True
        self.end()

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    def tags(self) -> str:
        return "".join(chr(m.tag) for m in self.messages)

    def input(self) -> bytes:
        return b"".join(bytes(m.body) for m in self.messages if m.tag == codec.INPUT)


def opened(call: FakeCall, connection_type: str = "ssh") -> Opened:
    return Opened(call, "s-1", connection_type)  # type: ignore[arg-type]
