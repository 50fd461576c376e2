"""Build and parse the PostgreSQL protocol v3 messages the gateway looks at.

Builders return a whole message (tag, length and body) as ``bytes``. Parsers take a body as
framed by ``MessageFramer`` (``Message.body``: no tag, no length word) and raise ProtocolError on
anything malformed. Text is UTF-8 (the gateway forces client_encoding to UTF8). What a peer
says for display (errors, notices, tags, parameter values, column names) is decoded leniently;
what the gateway decides or audits on (startup parameters, SQL, statement and portal names) is
decoded strictly, so that no two different byte strings can show up as the same text.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from wire.pg.framing import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3,
    SSL_REQUEST_CODE,
    ProtocolError,
)

__all__ = [
    "AUTH_CLEARTEXT_PASSWORD",
    "AUTH_MD5_PASSWORD",
    "AUTH_OK",
    "AUTH_SASL",
    "AUTH_SASL_CONTINUE",
    "AUTH_SASL_FINAL",
    "MAX_CANCEL_KEY",
    "AuthRequest",
    "Bind",
    "CancelRequest",
    "Close",
    "Column",
    "CommandTag",
    "ErrorFields",
    "Execute",
    "GSSENCRequest",
    "Parse",
    "SSLRequest",
    "StartupMessage",
    "authentication_ok",
    "authentication_request",
    "backend_key_data",
    "cancel_request",
    "command_complete",
    "data_row",
    "error_response",
    "md5_password",
    "notice_response",
    "parameter_status",
    "parse_authentication",
    "parse_backend_key_data",
    "parse_bind",
    "parse_close",
    "parse_command_complete",
    "parse_data_row",
    "parse_error_fields",
    "parse_execute",
    "parse_parameter_status",
    "parse_parse",
    "parse_password_message",
    "parse_query",
    "parse_ready_for_query",
    "parse_row_description",
    "parse_sasl_initial_response",
    "parse_startup",
    "password_message",
    "query",
    "ready_for_query",
    "row_description",
    "sasl_initial_response",
    "sasl_mechanisms",
    "sasl_response",
    "ssl_request",
    "startup_message",
    "sync",
    "terminate",
]

# Authentication request codes (the int32 that opens an 'R' message body).
AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
AUTH_MD5_PASSWORD = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

MAX_CANCEL_KEY = 256
"""Protocol 3.2 lets the secret key grow up to 256 bytes; 3.0 keys are 4 bytes."""

_INT16 = struct.Struct("!h")
_INT32 = struct.Struct("!i")
_COLUMN = struct.Struct("!IhIhih")  # table oid, attnum, type oid, typlen, typmod, format
_ROW_COUNT_COMMANDS = frozenset(
    {"INSERT", "UPDATE", "DELETE", "SELECT", "MOVE", "FETCH", "COPY", "MERGE"}
)


# --- data types ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's opening message: protocol version and connection parameters."""

    version: int
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS before starting up."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption before starting up."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query running in backend ``pid``."""

    pid: int
    key: bytes


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """An Authentication* message ('R'): ``code`` says which, ``data`` is what follows it."""

    code: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ErrorFields:
    """An ErrorResponse or NoticeResponse; ``severity`` is the non-localized one when present."""

    severity: str
    sqlstate: str
    message: str
    detail: str | None = None
    hint: str | None = None
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandTag:
    """A CommandComplete tag, e.g. ``INSERT 0 3`` → command ``INSERT``, rows 3.

    ``command`` is the tag without its counts ("CREATE TABLE" stays whole); ``rows`` is set only
    for the commands that report one.
    """

    tag: str
    command: str
    rows: int | None


@dataclass(frozen=True, slots=True)
class Parse:
    """Parse ('P'): prepare ``query`` as statement ``name`` ("" is the unnamed statement)."""

    name: str
    query: str
    param_types: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    """Bind ('B'): bind parameter values to a prepared statement, making portal ``portal``."""

    portal: str
    statement: str
    param_formats: tuple[int, ...]
    values: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]

    def parameters(self) -> list[tuple[bytes | None, int]]:
        """Each value with its format code (0 text, 1 binary), as the protocol spreads them.

        No format codes means all text; a single one applies to every parameter.
        """
        formats = self.param_formats
        if len(formats) == len(self.values):
            return list(zip(self.values, formats, strict=True))
        fmt = formats[0] if formats else 0
        return [(value, fmt) for value in self.values]


@dataclass(frozen=True, slots=True)
class Execute:
    """Execute ('E'): run portal ``portal``, returning at most ``max_rows`` rows (0: all)."""

    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    """Close ('C' from the client): drop statement (kind 'S') or portal (kind 'P') ``name``."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One field of a RowDescription; the defaults describe a computed text column."""

    name: str
    table_oid: int = 0
    column_attr: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format_code: int = 0


# --- helpers ------------------------------------------------------------------------------


def _message(tag: bytes, body: bytes) -> bytes:
    """Prefix a body with its tag and length word (which counts itself)."""
    return tag + _INT32.pack(len(body) + 4) + body


def _cstr(text: str) -> bytes:
    """Encode a NUL-terminated string; an embedded NUL would silently cut it, so refuse it."""
    if "\0" in text:
        raise ValueError(f"NUL character in protocol string {text[:40]!r}")
    return text.encode() + b"\0"


class _Reader:
    """Cursor over a message body that turns every short read into a ProtocolError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, body: bytes | memoryview, what: str) -> None:
        self.buf = bytes(body)
        self.pos = 0
        self.what = what

    def fail(self, problem: str) -> ProtocolError:
        return ProtocolError(f"malformed {self.what}: {problem} at offset {self.pos}")

    def take(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n:
            raise self.fail(f"truncated, {n} bytes needed, {len(self.buf) - self.pos} left")
        self.pos += n
        return self.buf[self.pos - n : self.pos]

    def int16(self) -> int:
        value: int = _INT16.unpack(self.take(2))[0]
        return value

    def int32(self) -> int:
        value: int = _INT32.unpack(self.take(4))[0]
        return value

    def byte(self) -> int:
        return self.take(1)[0]

    def cstring_bytes(self) -> bytes:
        nul = self.buf.find(b"\0", self.pos)
        if nul < 0:
            raise self.fail("missing NUL terminator")
        start, self.pos = self.pos, nul + 1
        return self.buf[start:nul]

    def cstring(self) -> str:
        """A string meant for display: never fails on odd bytes."""
        return self.cstring_bytes().decode("utf-8", errors="replace")

    def strict_cstring(self) -> str:
        """A string the gateway acts on: invalid UTF-8 is a protocol error."""
        start = self.pos
        raw = self.cstring_bytes()
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.pos = start + exc.start
            raise self.fail("invalid UTF-8") from None

    def rest(self) -> bytes:
        data = self.buf[self.pos :]
        self.pos = len(self.buf)
        return data

    def end(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} unexpected trailing bytes")


def _cancel_key(key: bytes, what: str) -> bytes:
    """Check a received secret key's size: 4 bytes in protocol 3.0, up to 256 in 3.2."""
    if not 4 <= len(key) <= MAX_CANCEL_KEY:
        raise ProtocolError(f"malformed {what}: secret key of {len(key)} bytes")
    return key


def _check_key(key: bytes) -> None:
    """Refuse to send a secret key no server could have issued."""
    if not 4 <= len(key) <= MAX_CANCEL_KEY:
        raise ValueError(f"secret key of {len(key)} bytes (4 to {MAX_CANCEL_KEY} expected)")


# --- frontend builders ----------------------------------------------------------------------


def startup_message(params: Mapping[str, str]) -> bytes:
    """StartupMessage for protocol 3.0: untagged, parameters as name/value pairs, final NUL."""
    parts = [_INT32.pack(PROTOCOL_3)]
    for name, value in params.items():
        if not name:
            raise ValueError("empty startup parameter name would end the parameter list")
        parts += (_cstr(name), _cstr(value))
    parts.append(b"\0")
    body = b"".join(parts)
    return _INT32.pack(len(body) + 4) + body


def ssl_request() -> bytes:
    """SSLRequest: ask the server whether it will speak TLS (it answers 'S' or 'N')."""
    return struct.pack("!ii", 8, SSL_REQUEST_CODE)


def cancel_request(pid: int, key: bytes) -> bytes:
    """CancelRequest, sent on its own connection with the BackendKeyData of the target."""
    _check_key(key)
    return struct.pack("!iii", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def query(sql: str) -> bytes:
    """Query: simple-protocol statement(s)."""
    return _message(b"Q", _cstr(sql))


def extended_query(sql: str, params: Sequence[str | None]) -> bytes:
    """One statement with text parameters in the extended protocol: Parse and Bind (unnamed
    statement and portal, every type inferred by the server), Describe the portal, Execute
    it whole, Sync. The server answers ParseComplete, BindComplete, RowDescription (or
    NoData), its rows, CommandComplete and ReadyForQuery."""
    if len(params) > 65535:
        raise ValueError(f"{len(params)} parameters: the protocol carries at most 65535")
    parse = _cstr("") + _cstr(sql) + struct.pack("!h", 0)
    bind = bytearray(_cstr("") + _cstr("") + struct.pack("!hh", 0, len(params)))
    for value in params:
        if value is None:
            bind += _INT32.pack(-1)
        else:
            data = value.encode()
            bind += _INT32.pack(len(data)) + data
    bind += struct.pack("!h", 0)
    return (
        _message(b"P", parse)
        + _message(b"B", bytes(bind))
        + _message(b"D", b"P" + _cstr(""))
        + _message(b"E", _cstr("") + _INT32.pack(0))
        + sync()
    )


def terminate() -> bytes:
    """Terminate: the client closes the session politely."""
    return b"X\x00\x00\x00\x04"


def sync() -> bytes:
    """Sync: end of an extended-protocol batch; the server answers with ReadyForQuery."""
    return b"S\x00\x00\x00\x04"


def parse_message(name: str, sql: str, param_types: Sequence[int] = ()) -> bytes:
    """Parse: prepare ``sql`` under ``name`` with these parameter type OIDs (0: inferred)."""
    types = struct.pack(f"!h{len(param_types)}I", len(param_types), *param_types)
    return _message(b"P", _cstr(name) + _cstr(sql) + types)


def close_message(kind: str, name: str) -> bytes:
    """Close: drop prepared statement (``kind`` "S") or portal ("P") ``name``."""
    return _message(b"C", kind.encode("ascii") + _cstr(name))


PARSE_COMPLETE = b"1\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"


def password_message(secret: bytes) -> bytes:
    """PasswordMessage for cleartext or md5 authentication (NUL terminated)."""
    if b"\0" in secret:
        raise ValueError("NUL byte in password")
    return _message(b"p", secret + b"\0")


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse: the chosen mechanism and the client-first message."""
    return _message(b"p", _cstr(mechanism) + _INT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse: a later client message of the SASL exchange, sent raw."""
    return _message(b"p", data)


# --- backend builders -----------------------------------------------------------------------


def authentication_request(code: int, data: bytes = b"") -> bytes:
    """Authentication* message: ``code`` (AUTH_*) and its data, e.g. the md5 salt."""
    return _message(b"R", _INT32.pack(code) + data)


def authentication_ok() -> bytes:
    """AuthenticationOk: the client is in; parameters and BackendKeyData follow."""
    return b"R\x00\x00\x00\x08\x00\x00\x00\x00"


def parameter_status(name: str, value: str) -> bytes:
    """ParameterStatus: tell the client the value of a reported run-time parameter."""
    return _message(b"S", _cstr(name) + _cstr(value))


def backend_key_data(pid: int, key: bytes) -> bytes:
    """BackendKeyData: what the client needs to cancel a query later."""
    _check_key(key)
    return _message(b"K", _INT32.pack(pid) + key)


def ready_for_query(status: str) -> bytes:
    """ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' in a failed transaction."""
    if status not in ("I", "T", "E"):
        raise ValueError(f"invalid transaction status {status!r}")
    return b"Z\x00\x00\x00\x05" + status.encode()


def _fields_body(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> bytes:
    """The field list shared by ErrorResponse and NoticeResponse."""
    if len(sqlstate) != 5 or not sqlstate.isascii() or not sqlstate.isalnum():
        raise ValueError(f"invalid SQLSTATE {sqlstate!r}")
    parts = [b"S", _cstr(severity), b"V", _cstr(severity), b"C", _cstr(sqlstate)]
    parts += (b"M", _cstr(message))
    if detail is not None:
        parts += (b"D", _cstr(detail))
    if hint is not None:
        parts += (b"H", _cstr(hint))
    parts.append(b"\0")
    return b"".join(parts)


def error_response(
    *,
    severity: str = "ERROR",
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """ErrorResponse, e.g. to refuse a session or a statement in the server's own words."""
    return _message(b"E", _fields_body(severity, sqlstate, message, detail, hint))


def notice_response(
    *,
    severity: str = "NOTICE",
    sqlstate: str,
    message: str,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """NoticeResponse: same fields as an error, but the session carries on."""
    return _message(b"N", _fields_body(severity, sqlstate, message, detail, hint))


def command_complete(tag: str) -> bytes:
    """CommandComplete with its command tag, e.g. ``SELECT 1``."""
    return _message(b"C", _cstr(tag))


def row_description(columns: Sequence[Column]) -> bytes:
    """RowDescription: the shape of the DataRows that follow."""
    parts = [_INT16.pack(len(columns))]
    for c in columns:
        parts.append(_cstr(c.name))
        parts.append(
            _COLUMN.pack(
                c.table_oid,
                c.column_attr,
                c.type_oid,
                c.type_size,
                c.type_modifier,
                c.format_code,
            )
        )
    return _message(b"T", b"".join(parts))


def data_row(values: Sequence[bytes | None]) -> bytes:
    """DataRow: one row, each value in its column's format; None is SQL NULL (length -1)."""
    parts = [_INT16.pack(len(values))]
    for value in values:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts += (_INT32.pack(len(value)), value)
    return _message(b"D", b"".join(parts))


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The md5 authentication answer: ``"md5" + md5(md5(password + user) + salt)``, hex."""
    import hashlib  # here: only the agent's login answers md5; `gatehouse exec` never does

    inner = hashlib.md5((password + user).encode(), usedforsecurity=False).hexdigest()
    outer = hashlib.md5(inner.encode() + salt, usedforsecurity=False).hexdigest()
    return b"md5" + outer.encode()


# --- parsers --------------------------------------------------------------------------------


def parse_startup(
    body: bytes | memoryview,
) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    """Parse an untagged startup-phase message (body starts with the int32 code)."""
    r = _Reader(body, "startup message")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        r.what = "CancelRequest"
        pid = r.int32()
        return CancelRequest(pid, _cancel_key(r.rest(), r.what))
    if code >> 16 != 3:
        raise ProtocolError(f"unsupported startup code {code} ({code >> 16}.{code & 0xFFFF})")
    r.what = "StartupMessage"
    params: dict[str, str] = {}
    while (name := r.strict_cstring()) != "":
        params[name] = r.strict_cstring()
    r.end()
    return StartupMessage(code, params)


def parse_query(body: bytes | memoryview) -> str:
    """Query ('Q'): the SQL text, strictly UTF-8 since it is what gets audited."""
    r = _Reader(body, "Query")
    sql = r.strict_cstring()
    r.end()
    return sql


def parse_password_message(body: bytes | memoryview) -> bytes:
    """PasswordMessage ('p' after a cleartext or md5 request): the secret, without its NUL."""
    r = _Reader(body, "PasswordMessage")
    secret = r.cstring_bytes()
    r.end()
    return secret


def parse_sasl_initial_response(body: bytes | memoryview) -> tuple[str, bytes]:
    """SASLInitialResponse ('p' after AuthenticationSASL): mechanism and client-first message.

    A length of -1 (no initial response) comes back as empty data.
    """
    r = _Reader(body, "SASLInitialResponse")
    mechanism = r.cstring()
    length = r.int32()
    if length < -1:
        raise r.fail(f"negative data length {length}")
    data = r.take(max(length, 0))
    r.end()
    return mechanism, data


def parse_parse(body: bytes | memoryview) -> Parse:
    """Parse ('P'): statement name, SQL text (strict UTF-8: it is audited), parameter types."""
    r = _Reader(body, "Parse")
    name = r.strict_cstring()
    sql = r.strict_cstring()
    count = r.int16()
    if count < 0:
        raise r.fail(f"negative parameter type count {count}")
    types = struct.unpack(f"!{count}I", r.take(4 * count))
    r.end()
    return Parse(name, sql, types)


def parse_bind(body: bytes | memoryview) -> Bind:
    """Bind ('B'): portal, statement, parameter formats and values, result formats.

    Read straight from the body with `struct.unpack_from` (every statement of the extended
    protocol has one); a body that reading does not accept is read again by the cursor, which
    names what is wrong. Both accept exactly the same bodies.
    """
    buf = bytes(body)
    try:
        return _bind_fast(buf)
    except (ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return _bind_checked(buf)


def _bind_fast(buf: bytes) -> Bind:
    nul = buf.index(0)
    portal = buf[:nul].decode("utf-8")
    pos = buf.index(0, nul + 1)
    statement = buf[nul + 1 : pos].decode("utf-8")
    (count,) = _INT16.unpack_from(buf, pos + 1)
    pos += 3
    if count == 0:
        formats: tuple[int, ...] = ()
    elif count == 1:
        formats = _INT16.unpack_from(buf, pos)
        pos += 2
    else:
        formats = struct.unpack_from(f"!{count}h", buf, pos)  # a negative count: struct.error
        pos += 2 * count
    (count,) = _INT16.unpack_from(buf, pos)
    pos += 2
    if count < 0 or len(formats) not in (0, 1, count):
        raise ValueError(count)
    size = len(buf)
    values: list[bytes | None] = []
    unpack = _INT32.unpack_from
    for _ in range(count):
        (length,) = unpack(buf, pos)
        pos += 4
        if length == -1:
            values.append(None)
        elif length < -1 or pos + length > size:
            raise ValueError(length)
        else:
            values.append(buf[pos : pos + length])
            pos += length
    (count,) = _INT16.unpack_from(buf, pos)
    result_formats: tuple[int, ...] = struct.unpack_from(f"!{count}h", buf, pos + 2)
    if pos + 2 + 2 * count != size:
        raise ValueError(size)
    return Bind(portal, statement, formats, tuple(values), result_formats)


def _bind_checked(buf: bytes) -> Bind:
    r = _Reader(buf, "Bind")
    portal = r.strict_cstring()
    statement = r.strict_cstring()
    formats = _format_codes(r, "parameter format")
    count = r.int16()
    if count < 0:
        raise r.fail(f"negative parameter count {count}")
    if len(formats) not in (0, 1, count):
        raise r.fail(f"{len(formats)} parameter formats for {count} parameters")
    values: list[bytes | None] = []
    for _ in range(count):
        length = r.int32()
        if length < -1:
            raise r.fail(f"parameter length {length}")
        values.append(None if length == -1 else r.take(length))
    result_formats = _format_codes(r, "result format")
    r.end()
    return Bind(portal, statement, formats, tuple(values), result_formats)


def _format_codes(r: _Reader, what: str) -> tuple[int, ...]:
    """An int16 count of int16 format codes, as Bind carries them twice."""
    count = r.int16()
    if count < 0:
        raise r.fail(f"negative {what} count {count}")
    codes: tuple[int, ...] = struct.unpack(f"!{count}h", r.take(2 * count))
    return codes


def parse_execute(body: bytes | memoryview) -> Execute:
    """Execute ('E'): the portal to run and the row limit (read as `parse_bind` reads)."""
    buf = bytes(body)
    nul = buf.find(0)
    if nul >= 0 and len(buf) == nul + 5:
        try:
            return Execute(buf[:nul].decode("utf-8"), _INT32.unpack_from(buf, nul + 1)[0])
        except UnicodeDecodeError:
            pass
    r = _Reader(buf, "Execute")
    portal = r.strict_cstring()
    max_rows = r.int32()
    r.end()
    return Execute(portal, max_rows)


def parse_close(body: bytes | memoryview) -> Close:
    """Close ('C' from the client): what to forget, statement 'S' or portal 'P'."""
    r = _Reader(body, "Close")
    kind = chr(r.byte())
    if kind not in ("S", "P"):
        raise r.fail(f"close kind {kind!r}")
    name = r.strict_cstring()
    r.end()
    return Close(kind, name)


def parse_authentication(body: bytes | memoryview) -> AuthRequest:
    """Authentication* ('R'): which step of authentication the server asks for."""
    r = _Reader(body, "Authentication")
    code = r.int32()
    data = r.rest()
    if code in (AUTH_OK, AUTH_CLEARTEXT_PASSWORD) and data:
        raise ProtocolError(f"malformed Authentication: {len(data)} extra bytes for code {code}")
    if code == AUTH_MD5_PASSWORD and len(data) != 4:
        raise ProtocolError(f"malformed Authentication: md5 salt of {len(data)} bytes")
    if code == AUTH_SASL:
        sasl_mechanisms(data)
    return AuthRequest(code, data)


def sasl_mechanisms(data: bytes | memoryview) -> list[str]:
    """The mechanisms of an AuthenticationSASL, each NUL terminated, then an empty one."""
    r = _Reader(data, "SASL mechanism list")
    mechanisms = []
    while (name := r.cstring()) != "":
        mechanisms.append(name)
    r.end()
    return mechanisms


def parse_error_fields(body: bytes | memoryview) -> ErrorFields:
    """ErrorResponse ('E') or NoticeResponse ('N'): one-letter coded fields, then a NUL."""
    r = _Reader(body, "ErrorResponse/NoticeResponse")
    fields: dict[str, str] = {}
    while code := r.byte():
        fields[chr(code)] = r.cstring()
    r.end()
    severity = fields.get("V", fields.get("S"))
    sqlstate = fields.get("C")
    message = fields.get("M")
    if severity is None or sqlstate is None or message is None:
        raise ProtocolError("malformed ErrorResponse/NoticeResponse: missing S, C or M field")
    return ErrorFields(severity, sqlstate, message, fields.get("D"), fields.get("H"), fields)


def parse_command_complete(body: bytes | memoryview) -> CommandTag:
    """CommandComplete ('C'): the tag, split into command and row count where there is one."""
    r = _Reader(body, "CommandComplete")
    tag = r.cstring()
    r.end()
    words = tag.split(" ")
    count = words[-1]
    if words[0] in _ROW_COUNT_COMMANDS and len(words) > 1 and count.isascii() and count.isdigit():
        return CommandTag(tag, words[0], int(count))
    return CommandTag(tag, tag, None)


def parse_row_description(body: bytes | memoryview) -> list[Column]:
    """RowDescription ('T'): the columns of the rows that follow."""
    r = _Reader(body, "RowDescription")
    count = r.int16()
    if count < 0:
        raise r.fail(f"negative column count {count}")
    columns = []
    for _ in range(count):
        name = r.cstring()
        columns.append(Column(name, *_COLUMN.unpack(r.take(_COLUMN.size))))
    r.end()
    return columns


def parse_data_row(body: bytes | memoryview) -> list[bytes | None]:
    """DataRow ('D'): the column values; None is SQL NULL. Hot path: no intermediate copy."""
    view = memoryview(body)
    n = len(view)
    if n < 2:
        raise ProtocolError("malformed DataRow: truncated column count")
    (count,) = _INT16.unpack_from(view, 0)
    if count < 0:
        raise ProtocolError(f"malformed DataRow: negative column count {count}")
    unpack = _INT32.unpack_from
    values: list[bytes | None] = []
    append = values.append
    pos = 2
    for _ in range(count):
        if n - pos < 4:
            raise ProtocolError(f"malformed DataRow: truncated value length at offset {pos}")
        (length,) = unpack(view, pos)
        pos += 4
        if length == -1:
            append(None)
            continue
        if length < 0 or length > n - pos:
            raise ProtocolError(f"malformed DataRow: value length {length} at offset {pos - 4}")
        append(bytes(view[pos : pos + length]))
        pos += length
    if pos != n:
        raise ProtocolError(f"malformed DataRow: {n - pos} unexpected trailing bytes")
    return values


def parse_parameter_status(body: bytes | memoryview) -> tuple[str, str]:
    """ParameterStatus ('S'): a reported run-time parameter and its value."""
    r = _Reader(body, "ParameterStatus")
    name, value = r.cstring(), r.cstring()
    r.end()
    return name, value


def parse_backend_key_data(body: bytes | memoryview) -> tuple[int, bytes]:
    """BackendKeyData ('K'): the backend pid and the secret key a CancelRequest must quote."""
    r = _Reader(body, "BackendKeyData")
    pid = r.int32()
    return pid, _cancel_key(r.rest(), r.what)


def parse_ready_for_query(body: bytes | memoryview) -> str:
    """ReadyForQuery ('Z'): the transaction status, 'I', 'T' or 'E'."""
    r = _Reader(body, "ReadyForQuery")
    status = chr(r.byte())
    r.end()
    if status not in ("I", "T", "E"):
        raise ProtocolError(f"malformed ReadyForQuery: transaction status {status!r}")
    return status
