"""The two halves of the multiplexed agent leg that both ends share (docs/decisions/0027).

Many sessions ride one gRPC stream. Each writer sends whatever is queued, across sessions, as
one message (an `Outbox`): no timers, the batch is what piled up while the last write ran.
Each session has its own `Credit` in each direction, so a session whose reader stalls stops
only its own sender, never the stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

E = TypeVar("E")

WINDOW = 256 * 1024
"""Bytes of one session's data one side may have in flight before the other grants more."""
GRANT_AT = WINDOW // 4
"""Taken bytes are granted back once this many piled up (or the sender would stall)."""
MAX_BATCH = 4 * 1024 * 1024
"""Payload bytes per message at most (gRPC messages are bounded: OPTIONS in agent/runner.py
allow 16 MiB); what is left goes in the next message."""
MAX_EVENTS = 4096
"""Events per message at most: with MAX_BATCH this keeps a batch of many tiny events under
the leg's 8 MiB frame limit (wire/frames.py), and bounds the work of reading one."""


class Credit:
    """What one session may still send: spent as it sends, granted back as the receiver's
    consumer takes the bytes. One message may overdraw it (a frame larger than the window
    still goes, alone), so bytes in flight stay below WINDOW + one frame."""

    def __init__(self, window: int = WINDOW) -> None:
        self.available = window
        self.closed = False
        self._granted = asyncio.Event()

    @property
    def exhausted(self) -> bool:
        return self.available <= 0 and not self.closed

    async def spend(self, size: int) -> None:
        """Wait until some credit is left (or the session closed), then spend `size`."""
        while self.exhausted:
            self._granted.clear()
            await self._granted.wait()
        self.available -= size

    def try_spend(self, size: int) -> bool:
        """Spend `size` now if some credit is left and the session is open; False if a sender
        would have to wait (or the session closed): then it takes the slow path."""
        if self.available <= 0 or self.closed:
            return False
        self.available -= size
        return True

    def grant(self, size: int) -> None:
        self.available += size
        self._granted.set()

    def close(self) -> None:
        """The session is over: a sender waiting for credit goes on (and its data is dropped)."""
        self.closed = True
        self._granted.set()


class Grants:
    """The receiving side's count of bytes its consumer took and not yet granted back."""

    def __init__(self, send: Callable[[int], None], threshold: int = GRANT_AT) -> None:
        self._send = send
        self._threshold = threshold
        self._taken = 0

    def took(self, size: int) -> None:
        self._taken += size
        if self._taken >= self._threshold:
            self._send(self._taken)
            self._taken = 0


class Outbox(Generic[E]):
    """Events queued for one stream. Its writer takes everything queued as one message.

    Unbounded by itself: what sessions queue is bounded by their credit, the rest (grants,
    ends, cancels) is a few events per session, and the control plane bounds the closes of
    attaches it refused (controlplane.agents.mux.MAX_UNSENT_REFUSALS). A message takes at
    most MAX_BATCH payload bytes and MAX_EVENTS events of it."""

    def __init__(self) -> None:
        self._events: list[tuple[E, int]] = []
        self._ready = asyncio.Event()

    def put(self, event: E, size: int = 0) -> None:
        self._events.append((event, size))
        self._ready.set()

    async def take(self, limit: int = MAX_BATCH, count: int = MAX_EVENTS) -> list[E]:
        """Every event queued, up to `limit` payload bytes and `count` events (at least one
        event)."""
        await self._ready.wait()
        events, total = self._events, 0
        for index, (_, size) in enumerate(events):
            total += size
            if (total > limit or index >= count) and index > 0:
                self._events = events[index:]
                return [event for event, _ in events[:index]]
        self._events = []
        self._ready.clear()
        return [event for event, _ in events]


class _Serializable(Protocol):
    def SerializeToString(self) -> bytes: ...  # protobuf's name


def batch_bytes(events: Sequence[_Serializable]) -> bytes:
    """An `AgentBatch` or `GatewayBatch` of ``events``, serialized: the same bytes as
    ``Batch(events=events).SerializeToString()`` (a repeated field 1 is each element's
    serialization after its tag and length), without copying every event into the batch
    first (~3 µs per event, as much as serializing it)."""
    parts: list[bytes] = []
    for event in events:
        data = event.SerializeToString()
        parts += (_EVENTS_TAG, _varint(len(data)), data)
    return b"".join(parts)


_EVENTS_TAG = bytes([1 << 3 | 2])  # field 1, length-delimited


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
