"""Counting a WebSocket's messages: each direction read as its receiver reads it, however the
bytes are cut; a stream it cannot read stops the count instead of guessing."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from wire.http.websocket import MessageCount


def _client_bytes(messages: list[str | bytes]) -> bytes:
    """What a real client (wsproto's own client role) sends: masked frames, then a close."""
    client = Connection(ConnectionType.CLIENT)
    out = b""
    for message in messages:
        event = (
            TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        )
        out += client.send(event)
    return out + client.send(CloseConnection(code=1000))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=300)), max_size=8),
    st.integers(min_value=1, max_value=50),
)
def test_messages_are_counted_however_the_bytes_are_cut(
    messages: list[str | bytes], piece: int
) -> None:
    data = _client_bytes(messages)
    count = MessageCount(from_client=True)
    for start in range(0, len(data), piece):
        count.feed(data[start : start + piece])
    assert count.as_event() == len(messages)
    assert count.closed


def test_unreadable_bytes_stop_the_count() -> None:
    count = MessageCount(from_client=True)
    count.feed(b"\xff\xff\xff\xff")
    assert count.as_event() is None


def test_an_extension_is_not_read() -> None:
    count = MessageCount(from_client=False, readable=False)
    count.feed(b"\x81\x05hello")
    assert count.as_event() is None
