"""Binary-format values of common PostgreSQL types, rendered as PostgreSQL's text form.

Drivers such as psycopg and asyncpg send parameters in binary; an audit record of `\\x0029`
for the number 41 would be useless to the person reading it. Types not listed here are left to
the caller (who keeps them as opaque bytes).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Callable

from wire.pg.codes import (
    BOOL,
    BPCHAR,
    BYTEA,
    FLOAT4,
    FLOAT8,
    INT2,
    INT4,
    INT8,
    JSON,
    JSONB,
    NAME,
    OID,
    TEXT,
    UNKNOWN,
    UUID,
    VARCHAR,
)


def _utf8(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _jsonb(value: bytes) -> str:
    return _utf8(value[1:]) if value[:1] == b"\x01" else value.hex()


_DECODERS: dict[int, Callable[[bytes], str]] = {
    BOOL: lambda v: "t" if v == b"\x01" else "f",
    BYTEA: lambda v: "\\x" + v.hex(),
    INT2: lambda v: str(struct.unpack("!h", v)[0]),
    INT4: lambda v: str(struct.unpack("!i", v)[0]),
    INT8: lambda v: str(struct.unpack("!q", v)[0]),
    OID: lambda v: str(struct.unpack("!I", v)[0]),
    FLOAT4: lambda v: repr(struct.unpack("!f", v)[0]),
    FLOAT8: lambda v: repr(struct.unpack("!d", v)[0]),
    UUID: lambda v: str(uuid.UUID(bytes=v)),
    JSONB: _jsonb,
    **{oid: _utf8 for oid in (NAME, TEXT, UNKNOWN, BPCHAR, VARCHAR, JSON)},
}


def binary_to_text(type_oid: int, value: bytes) -> str | None:
    """The text form of a binary value, or None when its type is not one we can render.

    A type oid of 0 (the client let the server infer it) is never guessed: a wrong guess in an
    audit record is worse than opaque bytes.
    """
    decoder = _DECODERS.get(type_oid)
    if decoder is None:
        return None
    try:
        return decoder(value)
    except (struct.error, ValueError):
        return None
