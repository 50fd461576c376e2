"""Builders and parsers of MySQL packet payloads: the handshake, the generic responses (OK,
ERR, EOF), column definitions, text and binary rows, and the prepared-statement commands.

Everything works on payloads (what ``PacketFramer`` returns and ``encode`` takes); nothing here
knows about sockets, sessions or policy. Parsers raise ``ProtocolError`` on a payload that ends
early or says something impossible, never IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from wire.mysql.constants import (
    DEFAULT_CHARSET,
    EOF_HEADER,
    ERR_HEADER,
    OK_HEADER,
    SCRAMBLE_LENGTH,
    Capability,
    Command,
    FieldType,
)
from wire.mysql.packets import ProtocolError

NULL_VALUE = 0xFB  # a text row's NULL, in place of a length-encoded string

# ------------------------------------------------------------------ length-encoded values


class Reader:
    """Reads a payload front to back; every read checks it stays inside."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = bytes(data) if isinstance(data, memoryview) else data
        self.pos = pos

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError(f"payload ends {n - self.left} bytes early")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def lenenc(self) -> int | None:
        """A length-encoded integer; None for 0xFB (a NULL in a text row)."""
        first = self.uint(1)
        if first < 0xFB:
            return first
        if first == 0xFB:
            return None
        if first == 0xFC:
            return self.uint(2)
        if first == 0xFD:
            return self.uint(3)
        if first == 0xFE:
            return self.uint(8)
        raise ProtocolError("0xFF is not a length-encoded integer")

    def lenenc_bytes(self) -> bytes | None:
        n = self.lenenc()
        return None if n is None else self.take(n)

    def nul(self) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("a NUL-terminated string has no NUL")
        out = bytes(self.data[self.pos : end])
        self.pos = end + 1
        return out

    def rest(self) -> bytes:
        out = bytes(self.data[self.pos :])
        self.pos = len(self.data)
        return out


def lenenc_int(value: int) -> bytes:
    if value < 0xFB:
        return bytes((value,))
    if value < 1 << 16:
        return b"\xfc" + value.to_bytes(2, "little")
    if value < 1 << 24:
        return b"\xfd" + value.to_bytes(3, "little")
    return b"\xfe" + value.to_bytes(8, "little")


def lenenc_bytes(value: bytes) -> bytes:
    return lenenc_int(len(value)) + value


# ------------------------------------------------------------------------------ handshake


@dataclass(frozen=True, slots=True)
class Handshake:
    """The server's first packet (Protocol::HandshakeV10)."""

    server_version: str
    connection_id: int
    scramble: bytes  # both parts of auth-plugin-data, without the trailing NUL
    capabilities: int
    charset: int
    status: int
    plugin: str


def parse_handshake(payload: bytes) -> Handshake:
    r = Reader(payload)
    protocol = r.uint(1)
    if protocol == ERR_HEADER:
        err = parse_err(payload, Capability.PROTOCOL_41)
        raise ProtocolError(f"the server refused the connection: {err.message} ({err.code})")
    if protocol != 10:
        raise ProtocolError(f"handshake protocol {protocol}; only version 10 is spoken")
    version = r.nul().decode("utf-8", "replace")
    connection_id = r.uint(4)
    part1 = r.take(8)
    r.uint(1)
    caps = r.uint(2)
    charset = status = 0
    part2 = b""
    plugin = ""
    if r.left:
        charset = r.uint(1)
        status = r.uint(2)
        caps |= r.uint(2) << 16
        data_len = r.uint(1)
        r.take(10)
        if caps & Capability.SECURE_CONNECTION:
            part2 = r.take(max(13, data_len - 8))
        if caps & Capability.PLUGIN_AUTH:
            plugin = (r.nul() if b"\x00" in payload[r.pos :] else r.rest()).decode(
                "ascii", "replace"
            )
    scramble = (part1 + part2).rstrip(b"\x00")
    return Handshake(version, connection_id, scramble, caps, charset, status, plugin)


def handshake(
    *,
    server_version: str,
    connection_id: int,
    scramble: bytes,
    capabilities: int,
    plugin: str,
    charset: int = DEFAULT_CHARSET,
    status: int = 2,
) -> bytes:
    if len(scramble) != SCRAMBLE_LENGTH:
        raise ValueError("the scramble is 20 bytes")
    caps = capabilities | Capability.PLUGIN_AUTH | Capability.SECURE_CONNECTION
    return b"".join(
        (
            b"\x0a",
            server_version.encode() + b"\x00",
            struct.pack("<I", connection_id),
            scramble[:8],
            b"\x00",
            struct.pack("<H", caps & 0xFFFF),
            bytes((charset,)),
            struct.pack("<H", status),
            struct.pack("<H", caps >> 16 & 0xFFFF),
            bytes((SCRAMBLE_LENGTH + 1,)),
            b"\x00" * 10,
            scramble[8:] + b"\x00",
            plugin.encode() + b"\x00",
        )
    )


@dataclass(frozen=True, slots=True)
class HandshakeResponse:
    """The client's answer (Protocol::HandshakeResponse41), or only its first 32 bytes when it
    asks for TLS first (``ssl_request``)."""

    capabilities: int
    max_packet: int
    charset: int
    user: str = ""
    auth_response: bytes = b""
    database: str | None = None
    plugin: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    ssl_request: bool = False


def parse_handshake_response(payload: bytes) -> HandshakeResponse:
    r = Reader(payload)
    caps = r.uint(4)
    if not caps & Capability.PROTOCOL_41:
        raise ProtocolError("the client speaks the pre-4.1 protocol, which is not supported")
    max_packet = r.uint(4)
    charset = r.uint(1)
    r.take(23)
    if r.left == 0:
        if not caps & Capability.SSL:
            raise ProtocolError("a handshake response without a user name")
        return HandshakeResponse(caps, max_packet, charset, ssl_request=True)
    user = r.nul().decode("utf-8", "replace")
    if caps & Capability.PLUGIN_AUTH_LENENC_DATA:
        auth = r.lenenc_bytes() or b""
    elif caps & Capability.SECURE_CONNECTION:
        auth = r.take(r.uint(1))
    else:
        auth = r.nul()
    database = None
    if caps & Capability.CONNECT_WITH_DB and r.left:
        database = r.nul().decode("utf-8", "replace")
    plugin = ""
    if caps & Capability.PLUGIN_AUTH and r.left:
        plugin = r.nul().decode("ascii", "replace")
    attributes: dict[str, str] = {}
    if caps & Capability.CONNECT_ATTRS and r.left:
        attrs = Reader(r.take(r.lenenc() or 0))
        while attrs.left:
            key = (attrs.lenenc_bytes() or b"").decode("utf-8", "replace")
            attributes[key] = (attrs.lenenc_bytes() or b"").decode("utf-8", "replace")
    return HandshakeResponse(caps, max_packet, charset, user, auth, database, plugin, attributes)


def response_capabilities(
    capabilities: int, *, database: str | None, attributes: dict[str, str] | None
) -> int:
    """The flags a handshake response carries (and, before it, its SSL request: the server
    wants the same in both) for what it holds."""
    caps = capabilities | Capability.PROTOCOL_41 | Capability.PLUGIN_AUTH
    caps |= Capability.PLUGIN_AUTH_LENENC_DATA | Capability.SECURE_CONNECTION
    if database:
        caps |= Capability.CONNECT_WITH_DB
    else:
        caps &= ~Capability.CONNECT_WITH_DB
    if attributes:
        caps |= Capability.CONNECT_ATTRS
    else:
        caps &= ~Capability.CONNECT_ATTRS
    return caps


def handshake_response(
    *,
    capabilities: int,
    user: str,
    auth_response: bytes,
    plugin: str,
    database: str | None = None,
    charset: int = DEFAULT_CHARSET,
    max_packet: int = 1 << 24,
    attributes: dict[str, str] | None = None,
) -> bytes:
    caps = response_capabilities(capabilities, database=database, attributes=attributes)
    out = [ssl_request(caps, charset=charset, max_packet=max_packet)]
    out.append(user.encode() + b"\x00")
    out.append(lenenc_bytes(auth_response))
    if database:
        out.append(database.encode() + b"\x00")
    out.append(plugin.encode() + b"\x00")
    if attributes:
        body = b"".join(
            lenenc_bytes(k.encode()) + lenenc_bytes(v.encode()) for k, v in attributes.items()
        )
        out.append(lenenc_bytes(body))
    return b"".join(out)


def ssl_request(
    capabilities: int, *, charset: int = DEFAULT_CHARSET, max_packet: int = 1 << 24
) -> bytes:
    """The first 32 bytes of a handshake response: on their own, the client's request for TLS."""
    return struct.pack("<IIB", capabilities & 0xFFFFFFFF, max_packet, charset) + b"\x00" * 23


def auth_switch(plugin: str, data: bytes) -> bytes:
    """AuthSwitchRequest: the server wants another plugin (data: its nonce, NUL-terminated)."""
    return b"\xfe" + plugin.encode() + b"\x00" + data + b"\x00"


def parse_auth_switch(payload: bytes) -> tuple[str, bytes]:
    r = Reader(payload, 1)
    if not r.left:  # the old 0xFE "use the pre-4.1 password": never answered
        raise ProtocolError("the server asked for the pre-4.1 password hash")
    plugin = r.nul().decode("ascii", "replace")
    return plugin, r.rest().rstrip(b"\x00")


# ------------------------------------------------------------------- generic responses


@dataclass(frozen=True, slots=True)
class Ok:
    affected_rows: int
    last_insert_id: int
    status: int
    warnings: int
    info: str = ""


@dataclass(frozen=True, slots=True)
class Err:
    code: int
    sqlstate: str
    message: str


@dataclass(frozen=True, slots=True)
class Eof:
    warnings: int
    status: int


def parse_ok(payload: bytes) -> Ok:
    r = Reader(payload, 1)
    affected = r.lenenc() or 0
    insert_id = r.lenenc() or 0
    status = r.uint(2) if r.left >= 2 else 0
    warnings = r.uint(2) if r.left >= 2 else 0
    info = r.rest()[:512].decode("utf-8", "replace") if r.left and payload[0] == OK_HEADER else ""
    return Ok(affected, insert_id, status, warnings, info)


def ok(
    *,
    affected_rows: int = 0,
    last_insert_id: int = 0,
    status: int = 2,
    warnings: int = 0,
    header: int = OK_HEADER,
) -> bytes:
    return (
        bytes((header,))
        + lenenc_int(affected_rows)
        + lenenc_int(last_insert_id)
        + struct.pack("<HH", status, warnings)
    )


def parse_err(payload: bytes, capabilities: int = Capability.PROTOCOL_41) -> Err:
    r = Reader(payload, 1)
    code = r.uint(2)
    sqlstate = "HY000"
    if r.left and payload[r.pos] == ord("#") and capabilities & Capability.PROTOCOL_41:
        r.take(1)
        sqlstate = r.take(5).decode("ascii", "replace")
    return Err(code, sqlstate, r.rest().decode("utf-8", "replace"))


def err(code: int, sqlstate: str, message: str) -> bytes:
    state = sqlstate.encode("ascii")
    if len(state) != 5:
        raise ValueError("a SQLSTATE is five characters")
    return b"\xff" + struct.pack("<H", code) + b"#" + state + message.encode("utf-8")


def is_eof(payload: bytes) -> bool:
    """An EOF packet (0xFE and short): a row or length never starts so."""
    return len(payload) < 9 and bool(payload) and payload[0] == EOF_HEADER


def parse_eof(payload: bytes) -> Eof:
    r = Reader(payload, 1)
    warnings = r.uint(2) if r.left >= 2 else 0
    status = r.uint(2) if r.left >= 2 else 0
    return Eof(warnings, status)


def eof(*, status: int = 2, warnings: int = 0) -> bytes:
    return b"\xfe" + struct.pack("<HH", warnings, status)


def end_of_rows(capabilities: int, *, status: int = 2) -> bytes:
    """What ends a result set's rows: an EOF, or with DEPRECATE_EOF an OK that starts 0xFE."""
    if capabilities & Capability.DEPRECATE_EOF:
        return ok(status=status, header=EOF_HEADER)
    return eof(status=status)


# ------------------------------------------------------------------------- result sets


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: int
    flags: int = 0
    charset: int = DEFAULT_CHARSET
    length: int = 0
    decimals: int = 0
    table: str = ""
    schema: str = ""
    org_table: str = ""
    org_name: str = ""

    @property
    def unsigned(self) -> bool:
        return bool(self.flags & 0x20)

    @property
    def binary(self) -> bool:
        return self.charset == 63


def parse_column(payload: bytes) -> Column:
    r = Reader(payload)
    r.lenenc_bytes()  # catalog, always "def"
    schema = (r.lenenc_bytes() or b"").decode("utf-8", "replace")
    table = (r.lenenc_bytes() or b"").decode("utf-8", "replace")
    org_table = (r.lenenc_bytes() or b"").decode("utf-8", "replace")
    name = (r.lenenc_bytes() or b"").decode("utf-8", "replace")
    org_name = (r.lenenc_bytes() or b"").decode("utf-8", "replace")
    r.lenenc()  # length of the fixed fields, 0x0c
    charset = r.uint(2)
    length = r.uint(4)
    type_ = r.uint(1)
    flags = r.uint(2)
    decimals = r.uint(1)
    return Column(name, type_, flags, charset, length, decimals, table, schema, org_table, org_name)


def column(col: Column) -> bytes:
    return b"".join(
        (
            lenenc_bytes(b"def"),
            lenenc_bytes(col.schema.encode()),
            lenenc_bytes(col.table.encode()),
            lenenc_bytes(col.org_table.encode()),
            lenenc_bytes(col.name.encode()),
            lenenc_bytes(col.org_name.encode()),
            b"\x0c",
            struct.pack("<HIBHB", col.charset, col.length, col.type, col.flags, col.decimals),
            b"\x00\x00",
        )
    )


def parse_text_row(payload: bytes, columns: int) -> list[bytes | None]:
    r = Reader(payload)
    values = [r.lenenc_bytes() for _ in range(columns)]
    if r.left:
        raise ProtocolError("a text row is longer than its columns")
    return values


def text_row(values: list[bytes | None]) -> bytes:
    return b"".join(b"\xfb" if v is None else lenenc_bytes(v) for v in values)


# Fixed sizes of binary values; the date and time types carry a length byte, the rest are
# length-encoded strings.
_FIXED = {
    FieldType.TINY: 1,
    FieldType.SHORT: 2,
    FieldType.YEAR: 2,
    FieldType.LONG: 4,
    FieldType.INT24: 4,
    FieldType.FLOAT: 4,
    FieldType.LONGLONG: 8,
    FieldType.DOUBLE: 8,
    FieldType.NULL: 0,
}
_TEMPORAL = frozenset(
    {FieldType.DATE, FieldType.DATETIME, FieldType.TIMESTAMP, FieldType.TIME, FieldType.NEWDATE}
)


def binary_span(data: bytes | memoryview, pos: int, type_: int) -> int:
    """Where the binary value of ``type_`` at ``pos`` ends."""
    fixed: int | None = _FIXED.get(type_)  # type: ignore[call-overload]
    end: int
    if fixed is not None:
        end = pos + fixed
    elif type_ in _TEMPORAL:
        if pos >= len(data):
            raise ProtocolError("a binary value ends early")
        end = pos + 1 + data[pos]
    else:
        r = Reader(data, pos)
        n = r.lenenc()
        if n is None:
            raise ProtocolError("0xFB in a binary row")
        end = r.pos + n
    if end > len(data):
        raise ProtocolError("a binary value ends early")
    return end


def binary_to_text(type_: int, unsigned: bool, raw: bytes) -> str:
    """A binary value as the text protocol would show it (for audit events and masking)."""
    if type_ in _FIXED:
        if type_ == FieldType.NULL:
            return "NULL"
        if type_ == FieldType.FLOAT:
            return repr(struct.unpack("<f", raw)[0])
        if type_ == FieldType.DOUBLE:
            return repr(struct.unpack("<d", raw)[0])
        width = _FIXED[type_]  # type: ignore[index]
        return str(int.from_bytes(raw[:width], "little", signed=not unsigned))
    if type_ in _TEMPORAL:
        return _temporal(type_, raw[1:])
    r = Reader(raw)
    return (r.lenenc_bytes() or b"").decode("utf-8", "replace")


#: The lengths MySQL's binary protocol gives a TIME and a DATE/DATETIME/TIMESTAMP value.
_TIME_LENGTHS = (0, 8, 12)
_DATE_LENGTHS = (0, 4, 7, 11)


def _temporal(type_: int, b: bytes) -> str:
    lengths = _TIME_LENGTHS if type_ == FieldType.TIME else _DATE_LENGTHS
    if len(b) not in lengths:
        raise ProtocolError(
            f"a binary {FieldType(type_).name} value of {len(b)} bytes; the protocol sends "
            + ", ".join(map(str, lengths))
        )
    if type_ == FieldType.TIME:
        if not b:
            return "00:00:00"
        negative, days, h, m, s = b[0], int.from_bytes(b[1:5], "little"), b[5], b[6], b[7]
        micro = int.from_bytes(b[8:12], "little") if len(b) >= 12 else 0
        text = f"{'-' if negative else ''}{days * 24 + h:02d}:{m:02d}:{s:02d}"
        return text + (f".{micro:06d}" if micro else "")
    if not b:
        return (
            "0000-00-00" if type_ in (FieldType.DATE, FieldType.NEWDATE) else "0000-00-00 00:00:00"
        )
    text = f"{int.from_bytes(b[0:2], 'little'):04d}-{b[2]:02d}-{b[3]:02d}"
    if type_ in (FieldType.DATE, FieldType.NEWDATE):
        return text
    h, m, s = (b[4], b[5], b[6]) if len(b) >= 7 else (0, 0, 0)
    micro = int.from_bytes(b[7:11], "little") if len(b) >= 11 else 0
    return f"{text} {h:02d}:{m:02d}:{s:02d}" + (f".{micro:06d}" if micro else "")


def parse_binary_row(payload: bytes, columns: list[Column]) -> list[bytes | None]:
    """A binary row's values, each as its raw bytes (length prefix included), None for NULL."""
    n = len(columns)
    bitmap_len = (n + 7 + 2) // 8
    if not payload or payload[0] != 0 or len(payload) < 1 + bitmap_len:
        raise ProtocolError("a binary row has no header or NULL bitmap")
    bitmap = payload[1 : 1 + bitmap_len]
    pos = 1 + bitmap_len
    values: list[bytes | None] = []
    for i, col in enumerate(columns):
        bit = i + 2
        if bitmap[bit // 8] >> (bit % 8) & 1:
            values.append(None)
            continue
        end = binary_span(payload, pos, col.type)
        values.append(payload[pos:end])
        pos = end
    if pos != len(payload):
        raise ProtocolError("a binary row is longer than its columns")
    return values


def binary_row(values: list[bytes | None]) -> bytes:
    """The inverse of ``parse_binary_row``: raw values (as that returns them) back in a row."""
    bitmap = bytearray((len(values) + 7 + 2) // 8)
    for i, value in enumerate(values):
        if value is None:
            bit = i + 2
            bitmap[bit // 8] |= 1 << (bit % 8)
    return b"\x00" + bytes(bitmap) + b"".join(v for v in values if v is not None)


# ------------------------------------------------------------------ prepared statements


@dataclass(frozen=True, slots=True)
class PrepareOk:
    statement_id: int
    columns: int
    params: int
    warnings: int


def parse_prepare_ok(payload: bytes) -> PrepareOk:
    r = Reader(payload, 1)
    statement_id = r.uint(4)
    columns = r.uint(2)
    params = r.uint(2)
    warnings = 0
    if r.left >= 3:
        r.uint(1)
        warnings = r.uint(2)
    return PrepareOk(statement_id, columns, params, warnings)


def prepare_ok(statement_id: int, columns: int, params: int, warnings: int = 0) -> bytes:
    return b"\x00" + struct.pack("<IHHBH", statement_id, columns, params, 0, warnings)


@dataclass(frozen=True, slots=True)
class Execute:
    statement_id: int
    flags: int
    types: list[tuple[int, bool]] | None  # (type, unsigned) when the client sent them
    values: list[bytes | None]  # raw binary values, None for NULL; [] when types are unknown


def parse_execute(
    payload: bytes,
    params: int,
    previous: list[tuple[int, bool]] | None,
    long_data: frozenset[int] = frozenset(),
) -> Execute:
    """COM_STMT_EXECUTE. ``params``: the count the server reported at prepare; ``previous``:
    the types last bound to this statement (a client sends them once, then may not);
    ``long_data``: the parameters sent before with COM_STMT_SEND_LONG_DATA, whose values the
    execute does not carry (they read as empty here)."""
    r = Reader(payload, 1)
    statement_id = r.uint(4)
    flags = r.uint(1)
    r.uint(4)  # iteration count, always 1
    if params == 0:
        return Execute(statement_id, flags, None, [])
    bitmap = r.take((params + 7) // 8)
    new_bound = r.uint(1)
    types = previous
    if new_bound:
        types = []
        for _ in range(params):
            type_ = r.uint(1)
            types.append((type_, bool(r.uint(1) & 0x80)))
    if types is None:
        raise ProtocolError("an execute sent no parameter types and none were bound before")
    values: list[bytes | None] = []
    for i, (type_, _unsigned) in enumerate(types):
        if bitmap[i // 8] >> (i % 8) & 1:
            values.append(None)
            continue
        if i in long_data:
            values.append(b"")
            continue
        end = binary_span(payload, r.pos, type_)
        values.append(bytes(payload[r.pos : end]))
        r.pos = end
    return Execute(statement_id, flags, types if new_bound else None, values)


def command(cmd: Command, body: bytes = b"") -> bytes:
    return bytes((cmd,)) + body


def statement_id(payload: bytes) -> int:
    """The statement id that COM_STMT_EXECUTE/CLOSE/RESET/SEND_LONG_DATA/FETCH start with."""
    if len(payload) < 5:
        raise ProtocolError("a statement command without its statement id")
    return int.from_bytes(payload[1:5], "little")
