"""Length-prefixed frames: the session leg between agent and control plane (docs/decisions/0035).

A frame is a 4-byte big-endian length and that many bytes (a serialized protobuf message). The
event loop reads and writes them on a plain asyncio stream; no thread is involved. A frame
longer than the reader's maximum ends the stream (`FrameError`): the sender never builds one
(`wire/mux.py` bounds a batch's payload well below it), so it means a broken or foreign peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

ALPN = "gatehouse-leg/1"
"""The TLS ALPN protocol of a session leg on the control plane's gRPC port."""
HEADER = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
"""Bytes of one frame at most. A batch carries at most wire.mux.MAX_BATCH (4 MiB) of payload
plus one frame that overdraws it, and the engines' frames are far smaller."""
READ_CHUNK = 256 * 1024


KEEPALIVE_IDLE = 20
"""Seconds of silence before TCP probes a leg's peer (gRPC's keepalive was a ping every 20 s);
two probes 5 s apart unanswered, or data unacknowledged for 30 s, end the leg: a peer whose
host vanished loses its sessions within about 30 s, as over gRPC."""


def keep_alive(writer: asyncio.StreamWriter) -> None:
    """No Nagle delay, TCP keepalive and a user timeout on the leg's socket (where the
    platform has them)."""
    sock: Any = writer.get_extra_info("socket")
    if sock is None:
        return
    options = (
        (socket.IPPROTO_TCP, "TCP_NODELAY", 1),  # a batch goes out as soon as it is written
        (socket.SOL_SOCKET, "SO_KEEPALIVE", 1),
        (socket.IPPROTO_TCP, "TCP_KEEPIDLE", KEEPALIVE_IDLE),
        (socket.IPPROTO_TCP, "TCP_KEEPINTVL", 5),
        (socket.IPPROTO_TCP, "TCP_KEEPCNT", 2),
        (socket.IPPROTO_TCP, "TCP_USER_TIMEOUT", 30_000),
    )
    for level, name, value in options:
        option = getattr(socket, name, None)
        if option is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, value)


class FrameError(ConnectionError):
    """The stream does not carry frames (garbage, a frame over the maximum, cut mid-frame)."""


def encode(payload: bytes) -> bytes:
    """One frame: the length, then `payload`."""
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Frames from a stream, several per read when the peer sent several."""

    def __init__(self, reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> None:
        self._reader = reader
        self.limit = limit  # bytes of one frame at most; may be raised once the peer is known
        self._buffer = bytearray()

    async def next(self) -> bytes | None:
        """The next frame; None at a clean end of stream (between frames)."""
        while True:
            frame = self._parse()
            if frame is not None:
                return frame
            data = await self._reader.read(READ_CHUNK)
            if not data:
                if self._buffer:
                    raise FrameError(
                        f"the stream ended inside a frame ({len(self._buffer)} bytes of it)"
                    )
                return None
            self._buffer += data

    def _parse(self) -> bytes | None:
        buffer = self._buffer
        if len(buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(buffer)
        if size > self.limit:
            raise FrameError(f"a frame of {size} bytes is over the maximum of {self.limit}")
        end = HEADER.size + size
        if len(buffer) < end:
            return None
        frame = bytes(buffer[HEADER.size : end])
        del buffer[:end]
        return frame
