"""The client's end of a session: what the relay reads from and writes to.

One session path serves every way in: the gRPC stream of `gatehouse exec`/`connect`
(`GrpcEnd`) and a native PostgreSQL client's own socket on `--pg-listen`
(`controlplane/relay/pg/listen.py`). The relay sees only bytes in, bytes out and a cancel.
"""

from __future__ import annotations

from typing import Any, Protocol

import grpc

from controlplane.auth.sources import peer_ip
from controlplane.relay.tunnel import CANCEL, Cancel
from gatehouse.v1 import client_pb2

Context = grpc.aio.ServicerContext[Any, Any]


class ClientEnd(Protocol):
    """One client's side of a session."""

    @property
    def peer(self) -> str:
        """The client's address, as recorded in `source.ip` (a trusted proxy's word for it)."""
        ...

    async def read(self) -> bytes | Cancel | None:
        """The client's next bytes; CANCEL when it asked to cancel what runs (in band);
        None once it finished sending."""
        ...

    async def write(self, data: bytes) -> None:
        """Send protocol bytes to the client (waits while the client is slow to read)."""
        ...


class GrpcEnd:
    """A `ClientService.Session` stream: data and cancel frames in, data frames out."""

    def __init__(self, context: Context) -> None:
        self.context = context

    @property
    def peer(self) -> str:
        return peer_ip(self.context.peer())

    async def read(self) -> bytes | Cancel | None:
        while True:
            message = await self.context.read()
            if not isinstance(message, client_pb2.ClientFrame):  # end of stream
                return None
            if message.HasField("cancel"):
                return CANCEL
            if message.HasField("data"):
                return message.data

    async def write(self, data: bytes) -> None:
        await self.context.write(client_pb2.ServerFrame(data=data))
