"""`--mysql-listen`'s socket end joins two logins: the agent's greeting and fast-auth note stay
at the control plane, its OK reaches the client renumbered to where the client's own login is,
and a target that lacks a framing capability the client took ends the login with an error."""

from __future__ import annotations

import asyncio

from controlplane.relay.mysql.listen import OFFERED, SocketEnd
from wire.mysql import messages as msg
from wire.mysql.constants import AUTH_MORE_DATA, SHA2_FAST_AUTH_OK, Capability
from wire.mysql.packets import PacketFramer, encode


class Sink:
    """A StreamWriter stand-in that keeps what was written."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True


def greeting(capabilities: int) -> bytes:
    return encode(
        msg.handshake(
            server_version="10.11.19-MariaDB",
            connection_id=7,
            scramble=b"x" * 20,
            capabilities=capabilities,
            plugin="mysql_native_password",
        ),
        0,
    )


def end(sink: Sink, capabilities: int, seq: int) -> SocketEnd:
    reader = asyncio.StreamReader()
    return SocketEnd(reader, sink, "127.0.0.1", b"login", capabilities, seq)  # type: ignore[arg-type]


def test_the_agents_ok_reaches_the_client_at_its_own_sequence_id() -> None:
    sink = Sink()
    ok = encode(msg.ok(status=2), 2)
    after = encode(b"\x03SELECT 1", 0)  # whatever follows passes unchanged

    async def run() -> None:
        client = end(sink, OFFERED & ~Capability.LOCAL_FILES, seq=4)
        assert await client.read() == b"login"
        await client.write(greeting(0xFFFFFFFF))
        assert bytes(sink.data) == b""
        await client.write(encode(bytes((AUTH_MORE_DATA, SHA2_FAST_AUTH_OK)), 2) + ok + after)

    asyncio.run(run())
    packets = PacketFramer().feed(bytes(sink.data))
    assert [(p.seq, p.payload) for p in packets] == [
        (4, msg.ok(status=2)),
        (0, b"\x03SELECT 1"),
    ]


def test_a_target_without_a_framing_capability_the_client_took_is_refused() -> None:
    sink = Sink()

    async def run() -> object:
        client = end(sink, Capability.PROTOCOL_41 | Capability.DEPRECATE_EOF, seq=3)
        await client.read()
        await client.write(greeting(0xFFFFFFFF & ~Capability.DEPRECATE_EOF))
        return await client.read()

    assert asyncio.run(run()) is None  # the session ends
    (packet,) = PacketFramer().feed(bytes(sink.data))
    assert packet.seq == 3
    error = msg.parse_err(packet.payload)
    assert error.code == 1043
    assert "DEPRECATE_EOF" in error.message
