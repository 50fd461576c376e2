"""Masking of MySQL result rows on the agent, text and binary protocol alike.

The connection's rules are every protocol's (``agent.masking.MaskingPolicy``: columns masked
whole, detectors from ``redact``). A value is replaced by one valid for its column: text
columns (a character set other than binary) get replacement text, JSON columns a JSON string,
and every other type (numbers, dates, binary strings) NULL, which any column may carry on the
wire. Detectors read text and JSON columns only; a binary string is not text to search.
"""

from __future__ import annotations

import json

from agent.masking import MaskingPolicy
from wire.mysql import messages as msg
from wire.mysql.constants import BINARY_CHARSET, FieldType
from wire.mysql.follow import Row

__all__ = ["MASK", "RowMasker"]

MASK = "***"
_TEXT_TYPES = frozenset(
    {
        FieldType.VARCHAR,
        FieldType.VAR_STRING,
        FieldType.STRING,
        FieldType.TINY_BLOB,
        FieldType.MEDIUM_BLOB,
        FieldType.LONG_BLOB,
        FieldType.BLOB,
        FieldType.ENUM,
        FieldType.SET,
        FieldType.JSON,
    }
)


def _is_text(column: msg.Column) -> bool:
    return column.type in _TEXT_TYPES and column.charset != BINARY_CHARSET


class RowMasker:
    """Rewrites the rows one connection's rules touch; None when a row stays as it is."""

    def __init__(self, policy: MaskingPolicy) -> None:
        self._policy = policy

    def row(self, row: Row, payload: bytes) -> bytes | None:
        columns = row.columns
        if row.binary:
            values = msg.parse_binary_row(payload, columns)
        else:
            values = msg.parse_text_row(payload, len(columns))
        changed = False
        out: list[bytes | None] = []
        for column, value in zip(columns, values, strict=True):
            new = value if value is None else self._value(column, value, row.binary)
            changed |= new is not value
            out.append(new)
        if not changed:
            return None
        return msg.binary_row(out) if row.binary else msg.text_row(out)

    def _value(self, column: msg.Column, value: bytes, binary: bool) -> bytes | None:
        """The value to send: ``value`` itself (the same object) when it stays."""
        whole = column.name.lower() in self._policy.columns or (
            column.org_name.lower() in self._policy.columns
        )
        if not _is_text(column):
            return None if whole else value
        raw = (msg.Reader(value).lenenc_bytes() or b"") if binary else value
        text = raw.decode("utf-8", "surrogateescape")
        found = MASK if whole else self._policy.detectors.mask(text)
        if found is None:
            return value
        masked: str = found
        if column.type == FieldType.JSON:
            masked = json.dumps(masked)
        data = masked.encode("utf-8", "surrogateescape")
        return msg.lenenc_bytes(data) if binary else data
