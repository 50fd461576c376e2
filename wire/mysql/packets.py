"""Split a MySQL byte stream into packets, and packets back into bytes.

Every packet is ``int<3> payload length | int<1> sequence id | payload``. A payload of 16 MiB - 1
bytes or more is sent as several physical packets, each but the last exactly 16 MiB - 1 bytes
long (a payload of exactly a multiple of it ends with an empty packet); the sequence id goes up
by one with every physical packet and wraps at 256. A command starts again at 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from wire import errors
from wire.mysql.constants import MAX_PAYLOAD

__all__ = ["DEFAULT_MAX_PACKET", "Packet", "PacketFramer", "ProtocolError", "count", "encode"]

DEFAULT_MAX_PACKET = 256 * 1024 * 1024
"""Largest logical payload a framer assembles (MariaDB's max_allowed_packet tops out at 1 GiB;
the gateway holds a whole packet in memory, so it stops well before)."""
_HEADER = 4


class ProtocolError(errors.ProtocolError):
    """Malformed, out-of-sequence or oversized packet; the session must be closed."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One logical packet: its physical pieces joined."""

    payload: bytes
    seq: int
    """Sequence id of its first physical packet."""
    last_seq: int
    """Sequence id of its last physical packet: the next packet of the exchange has this + 1."""
    end: int
    """Offset in the ``data`` of the ``feed()`` that completed it, just past its last byte."""
    size: int
    """Bytes it took on the wire, headers included."""

    @property
    def first(self) -> int:
        """The payload's first byte (the command, or the header of a response); -1 if empty."""
        return self.payload[0] if self.payload else -1


class PacketFramer:
    """Incremental framer for one direction of one connection (sans-IO)."""

    __slots__ = ("_buf", "_last_seq", "_max", "_parts", "_parts_seq", "_parts_size")

    def __init__(self, *, max_packet: int = DEFAULT_MAX_PACKET) -> None:
        self._buf = bytearray()
        self._max = max_packet
        self._parts: list[bytes] = []  # pieces of a payload continued in the next packet
        self._parts_seq = 0
        self._parts_size = 0
        self._last_seq = 0

    @property
    def pending(self) -> int:
        """Bytes held of a packet that has not completed yet."""
        return len(self._buf) + sum(len(part) for part in self._parts)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        prior = len(self._buf)
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        pos = 0
        size = len(buf)
        while size - pos >= _HEADER:
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            seq = buf[pos + 3]
            if size - pos - _HEADER < length:
                if self.pending + length - (size - pos) > self._max + _HEADER:
                    raise ProtocolError(self._too_large(self.pending + length))
                break
            start = pos + _HEADER
            pos = start + length
            if self._parts and seq != (self._last_seq + 1) & 0xFF:
                raise ProtocolError(
                    f"packet sequence id {seq} where {(self._last_seq + 1) & 0xFF} continues "
                    "a 16 MiB packet"
                )
            self._last_seq = seq
            piece = bytes(buf[start:pos])
            if length == MAX_PAYLOAD:
                if not self._parts:
                    self._parts_seq = seq
                    self._parts_size = 0
                self._parts.append(piece)
                self._parts_size += length + _HEADER
                if self._parts_size > self._max + _HEADER:
                    raise ProtocolError(self._too_large(self._parts_size))
                continue
            if self._parts:
                self._parts.append(piece)
                payload = b"".join(self._parts)
                first_seq, total = self._parts_seq, self._parts_size + length + _HEADER
                self._parts = []
            else:
                payload, first_seq, total = piece, seq, length + _HEADER
            if len(payload) > self._max:
                raise ProtocolError(self._too_large(len(payload)))
            packets.append(Packet(payload, first_seq, seq, pos - prior, total))
        del buf[:pos]
        return packets

    def _too_large(self, length: int) -> str:
        return f"a packet of {length} bytes is larger than the gateway's limit of {self._max}"


def encode(payload: bytes | bytearray | memoryview, seq: int) -> bytes:
    """``payload`` as physical packets starting at sequence id ``seq``; the next id to use is
    ``(seq + count(payload)) & 0xFF`` (see ``count``)."""
    view = memoryview(payload)
    out = bytearray()
    start = 0
    while True:
        piece = view[start : start + MAX_PAYLOAD]
        n = len(piece)
        out += bytes((n & 0xFF, n >> 8 & 0xFF, n >> 16, seq & 0xFF))
        out += piece
        seq += 1
        start += n
        if n < MAX_PAYLOAD:
            return bytes(out)


def count(length: int) -> int:
    """How many physical packets a payload of ``length`` bytes takes."""
    return length // MAX_PAYLOAD + 1
