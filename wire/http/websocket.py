"""Counting a WebSocket's messages as they pass, on wsproto (after the HTTP upgrade).

The gateway passes a WebSocket's bytes on unchanged; it reads them only to say how many
messages went each way. One `MessageCount` per direction: the client's frames are read as a
server reads them (masked), the target's as a client does. A connection that negotiated an
extension (permessage-deflate) is not read at all (`readable` False): its frames cannot be
told apart without it, and the count is recorded as unknown rather than wrong.
"""

from __future__ import annotations

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import CloseConnection, Message
from wsproto.utilities import ProtocolError

__all__ = ["MessageCount"]


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
