"""The in-process session's two ends: the protocol client's frames reach the relay as bytes
and back, the end of either side is seen by the other, and a client that cancels never
holds the relay up."""

from __future__ import annotations

import asyncio

from controlplane.relay.inprocess import DEPTH, PipeCall, PipeEnd
from controlplane.relay.tunnel import CANCEL
from gatehouse.v1 import client_pb2


async def test_frames_cross_as_bytes_both_ways_and_the_ends_are_seen() -> None:
    end = PipeEnd("127.0.0.1")
    call = PipeCall(end)
    await call.write(client_pb2.ClientFrame(data=b"Q"))
    await call.write(client_pb2.ClientFrame(cancel=client_pb2.Cancel()))
    await call.done_writing()
    assert [await end.read(), await end.read(), await end.read()] == [b"Q", CANCEL, None]
    await end.write(b"Z")
    await end.ended()
    assert await call.read() == client_pb2.ServerFrame(data=b"Z")
    assert await call.read() is None


async def test_a_cancelled_client_frees_a_relay_waiting_to_write_and_ends_its_input() -> None:
    end = PipeEnd("127.0.0.1")
    call = PipeCall(end)
    for _ in range(DEPTH):
        await end.write(b"row")
    blocked = asyncio.create_task(end.write(b"one more"))
    await asyncio.sleep(0)
    assert not blocked.done()
    assert call.cancel() is True
    await asyncio.wait_for(blocked, 1)
    await end.write(b"dropped")  # nobody reads any more: nothing waits
    await asyncio.wait_for(end.ended(), 1)
    assert await end.read() is None
    assert await call.read() is None
    assert call.cancel() is False
