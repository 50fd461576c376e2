"""Split a PostgreSQL protocol v3 byte stream into messages, without copying when possible.

Every v3 message after the startup phase is ``tag (1 byte) | int32 length | body``, where the
length counts itself but not the tag. The first message(s) a client sends are untagged
(``int32 length | int32 code | ...``): the code tells a StartupMessage from an SSLRequest,
GSSENCRequest or CancelRequest. The framer only finds message boundaries; it never interprets
bodies beyond the startup code it needs to know how the next message is framed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from wire import errors

__all__ = [
    "CANCEL_REQUEST_CODE",
    "GSSENC_REQUEST_CODE",
    "MAX_STARTUP_LENGTH",
    "PROTOCOL_3",
    "SSL_REQUEST_CODE",
    "Message",
    "MessageFramer",
    "ProtocolError",
]

SSL_REQUEST_CODE = 80877103
"""Code of an SSLRequest (1234 << 16 | 5679); the server answers with one byte, 'S' or 'N'."""
GSSENC_REQUEST_CODE = 80877104
"""Code of a GSSENCRequest (1234 << 16 | 5680); the server answers with one byte, 'G' or 'N'."""
CANCEL_REQUEST_CODE = 80877102
"""Code of a CancelRequest (1234 << 16 | 5678), sent on a fresh connection instead of a startup."""
PROTOCOL_3 = 196608
"""Protocol version 3.0 (3 << 16); the minor version is the low 16 bits."""
MAX_STARTUP_LENGTH = 10000
"""PostgreSQL rejects longer startup packets (MAX_STARTUP_PACKET_LENGTH); so do we."""

_INT32 = struct.Struct("!i")


class ProtocolError(errors.ProtocolError):
    """Malformed or oversized message; the session must be closed."""


@dataclass(slots=True)
class Message:
    """One framed message; the views stay valid as long as the caller keeps them."""

    tag: int
    """Message type byte (e.g. ``ord('Q')``); 0 for untagged startup-phase messages."""
    body: memoryview
    """Payload after the int32 length word (for untagged messages it starts with the code)."""
    raw: memoryview
    """The whole message, tag and length word included: what to forward verbatim."""
    end: int
    """Offset in the ``data`` passed to the ``feed()`` that completed it, just past the message."""


def _tag_name(tag: int) -> str:
    """Name a tag for error messages: printable ASCII as a quoted char, anything else in hex."""
    return repr(chr(tag)) if 0x20 < tag < 0x7F else f"0x{tag:02x}"


class MessageFramer:
    """Incremental framer for one direction of one connection.

    Backend direction (server → client): ``startup_phase=False``, every message is tagged.
    Frontend direction (client → server): ``startup_phase=True``, the first message is untagged,
    and stays so after an SSLRequest or GSSENCRequest (the client retries the startup after the
    server's one-byte answer); a StartupMessage or CancelRequest switches to tagged messages.

    Messages complete within one ``feed()`` are views into that ``data`` (zero copy), so the
    caller must not mutate ``data`` while it uses them. A message split across feeds is
    assembled once into a private buffer and returned as a read-only view of it.
    """

    __slots__ = ("_max", "_need", "_partial", "_untagged")

    def __init__(self, *, startup_phase: bool = False, max_message: int = 64 * 1024 * 1024) -> None:
        self._untagged = startup_phase
        self._max = max_message
        self._partial = bytearray()  # bytes of the message split across feeds
        self._need = 0  # its full size once its header is known, else 0

    @property
    def pending(self) -> int:
        """Bytes buffered of an incomplete message."""
        return len(self._partial)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume ``data`` and return the messages it completes, in order.

        Raises ProtocolError on a malformed length or an unknown startup code; the framer is then
        unusable, as is the connection.
        """
        view = memoryview(data)
        if view.format != "B":
            view = view.cast("B")
        out: list[Message] = []
        pos = self._continue(view, 0, out) if self._partial else 0
        if self._untagged:
            pos = self._frame_untagged(view, pos, out)
        if not self._untagged:
            pos = self._frame_tagged(view, pos, out)
        if pos < len(view):
            self._continue(view, pos, out)  # stash the incomplete tail
        return out

    def _frame_tagged(self, view: memoryview, pos: int, out: list[Message]) -> int:
        """Frame complete tagged messages in place; return where the incomplete tail starts."""
        n = len(view)
        limit = self._max
        unpack = _INT32.unpack_from
        append = out.append
        while n - pos >= 5:
            (length,) = unpack(view, pos + 1)
            if length < 4 or length > limit:
                raise self._bad_length(view[pos], length)
            end = pos + 1 + length
            if end > n:
                break
            append(Message(view[pos], view[pos + 5 : end], view[pos:end], end))
            pos = end
        return pos

    def _frame_untagged(self, view: memoryview, pos: int, out: list[Message]) -> int:
        """Frame complete startup-phase messages in place until framing turns tagged."""
        n = len(view)
        while self._untagged and n - pos >= 4:
            (length,) = _INT32.unpack_from(view, pos)
            self._check_untagged(length)
            end = pos + length
            if end > n:
                break
            out.append(self._untagged_message(view[pos:end], end))
            pos = end
        return pos

    def _continue(self, view: memoryview, pos: int, out: list[Message]) -> int:
        """Add ``view[pos:]`` to the split message; return the offset just past it once complete.

        Returns ``len(view)`` when everything was buffered and the message is still incomplete.
        """
        partial = self._partial
        n = len(view)
        if not self._need:
            header = 4 if self._untagged else 5
            take = min(header - len(partial), n - pos)
            partial += view[pos : pos + take]
            pos += take
            if len(partial) < header:
                return n
            if self._untagged:
                (length,) = _INT32.unpack_from(partial, 0)
                self._check_untagged(length)
                self._need = length
            else:
                (length,) = _INT32.unpack_from(partial, 1)
                if length < 4 or length > self._max:
                    raise self._bad_length(partial[0], length)
                self._need = length + 1
        take = min(self._need - len(partial), n - pos)
        partial += view[pos : pos + take]
        pos += take
        if len(partial) < self._need:
            return n
        # Hand the buffer over to the message and start afresh: no second copy.
        raw = memoryview(partial).toreadonly()
        self._partial = bytearray()
        self._need = 0
        if self._untagged:
            out.append(self._untagged_message(raw, pos))
        else:
            out.append(Message(raw[0], raw[5:], raw, pos))
        return pos

    def _check_untagged(self, length: int) -> None:
        """An untagged message holds at least its length and code, and is small."""
        if length < 8 or length > min(self._max, MAX_STARTUP_LENGTH):
            raise ProtocolError(f"invalid length {length} for untagged startup-phase message")

    def _untagged_message(self, raw: memoryview, end: int) -> Message:
        """Build an untagged message and decide from its code how the next one is framed."""
        (code,) = _INT32.unpack_from(raw, 4)
        if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
            pass  # the client will send another untagged message after the server's answer
        elif code == CANCEL_REQUEST_CODE or code >> 16 == 3:
            self._untagged = False
        else:
            raise ProtocolError(f"unsupported startup code {code} ({code >> 16}.{code & 0xFFFF})")
        return Message(0, raw[4:], raw, end)

    def _bad_length(self, tag: int, length: int) -> ProtocolError:
        """Name the tag and the length: enough to tell garbage from an oversized result."""
        return ProtocolError(
            f"invalid length {length} for message {_tag_name(tag)} (max {self._max})"
        )
