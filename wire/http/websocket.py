"""Counting a WebSocket's messages as they pass, on wsproto (after the HTTP upgrade).

The gateway passes a WebSocket's bytes on unchanged; it reads them only to say how many
messages went each way. One `MessageCount` per direction: the client's frames are read as a
server reads them (masked), the target's as a client does. A connection that negotiated an
extension (permessage-deflate) is not read at all (`readable` False): its frames cannot be
told apart without it, and the count is recorded as unknown rather than wrong.
"""

from __future__ import annotations

from collections.abc import Iterable

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message
from wsproto.utilities import ProtocolError, generate_accept_token

__all__ = ["MessageCount", "accept_key", "handshake_refusal", "head_fields"]


def accept_key(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server that took the handshake of `key` answers (RFC 6455
    §4.2.2)."""
    return generate_accept_token(key.strip().encode("latin-1")).decode("ascii")


def head_fields(head: bytes) -> list[tuple[str, str]]:
    """The header fields of a response head as h11 wrote it (names lower-cased)."""
    fields = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            fields.append((name.strip().lower().decode("latin-1"), value.strip().decode("latin-1")))
    return fields


def handshake_refusal(
    request: Iterable[tuple[str, str]], response: Iterable[tuple[str, str]]
) -> str | None:
    """Why a `101 Switching Protocols` does not switch to a WebSocket, or None when it does: it
    must say `Upgrade: websocket` and `Connection: upgrade` and carry the `Sec-WebSocket-Accept`
    of the request's key (RFC 6455 §4.1). Anything else is a 101 some application answered
    while it goes on reading HTTP: the bytes after it would be requests nobody decided."""
    asked = [v for k, v in request if k == "sec-websocket-key"]
    fields = list(response)

    def tokens(name: str) -> set[str]:
        joined = ",".join(v for k, v in fields if k == name)
        return {token.strip().lower() for token in joined.split(",")}

    if len(asked) != 1:
        return "the upgrade request carried no single Sec-WebSocket-Key"
    if "websocket" not in tokens("upgrade"):
        return "the 101 does not say Upgrade: websocket"
    if "upgrade" not in tokens("connection"):
        return "the 101 does not say Connection: upgrade"
    accepted = [v.strip() for k, v in fields if k == "sec-websocket-accept"]
    if accepted != [accept_key(asked[0])]:
        return "the 101 does not carry the Sec-WebSocket-Accept of the request's key"
    return None


class MessageCount:
    """The messages of one direction of a WebSocket."""

    def __init__(self, *, from_client: bool, readable: bool = True) -> None:
        kind = ConnectionType.SERVER if from_client else ConnectionType.CLIENT
        self._conn: Connection | None = Connection(kind) if readable else None
        self.messages = 0
        self.closed = False  # a close frame passed

    @property
    def readable(self) -> bool:
        return self._conn is not None

    def feed(self, data: bytes) -> None:
        """Bytes of this direction, in order; a stream wsproto cannot read stops the count."""
        if self._conn is None or self.closed or not data:
            return
        try:
            self._conn.receive_data(data)
            for event in self._conn.events():
                if isinstance(event, Message) and event.message_finished:
                    self.messages += 1
                elif isinstance(event, CloseConnection):
                    # A close frame that came leaves the connection closing; one wsproto
                    # made up because it could not read the frames leaves it closed.
                    if self._conn.state is not ConnectionState.REMOTE_CLOSING:
                        self._conn = None
                        return
                    self.closed = True
        except ProtocolError:
            self._conn = None

    def as_event(self) -> int | None:
        """The count, or None when it could not be read to the end."""
        return self.messages if self._conn is not None else None
