"""Masking of MySQL rows: what replaces a value is valid for its column, text and binary alike."""

from __future__ import annotations

import json

from agent.masking import MaskingPolicy
from agent.mysql.masking import RowMasker
from wire.mysql import messages as msg
from wire.mysql.constants import BINARY_CHARSET, FieldType
from wire.mysql.follow import Row

POLICY = MaskingPolicy.from_spec(
    {"rules": [{"name": "pii", "columns": ["ssn", "salary", "doc"], "detectors": ["email"]}]}
)
COLUMNS = [
    msg.Column("email", FieldType.VAR_STRING),
    msg.Column("ssn", FieldType.STRING),
    msg.Column("salary", FieldType.LONGLONG),
    msg.Column("doc", FieldType.JSON),
    msg.Column("raw", FieldType.BLOB, charset=BINARY_CHARSET),
]


def test_text_rows_get_values_valid_for_each_column() -> None:
    assert POLICY is not None
    masker = RowMasker(POLICY)
    row = [b"ann@example.com", b"123-45-6789", b"5000", b'{"a": 1}', b"ann@example.com"]
    masked = masker.row(Row(COLUMNS, binary=False), msg.text_row(row))
    assert masked is not None
    email, ssn, salary, doc, raw = msg.parse_text_row(masked, 5)
    assert email == b"***@example.com"
    assert ssn == b"***"
    assert salary is None  # a number cannot hold "***": NULL is valid for any column
    assert json.loads(doc or b"") == "***"
    assert raw == b"ann@example.com"  # a binary string is not text to search


def test_binary_rows_are_rewritten_in_the_binary_protocol() -> None:
    assert POLICY is not None
    masker = RowMasker(POLICY)
    values = [
        msg.lenenc_bytes(b"bob@example.com"),
        msg.lenenc_bytes(b"987"),
        (5000).to_bytes(8, "little"),
        None,
        msg.lenenc_bytes(b"\x00\xff"),
    ]
    masked = masker.row(Row(COLUMNS, binary=True), msg.binary_row(values))
    assert masked is not None
    got = msg.parse_binary_row(masked, COLUMNS)
    assert got == [
        msg.lenenc_bytes(b"***@example.com"),
        msg.lenenc_bytes(b"***"),
        None,
        None,
        msg.lenenc_bytes(b"\x00\xff"),
    ]


def test_a_row_no_rule_touches_is_left_as_it_came() -> None:
    assert POLICY is not None
    columns = [msg.Column("name", FieldType.VAR_STRING)]
    assert RowMasker(POLICY).row(Row(columns, binary=False), msg.text_row([b"ann"])) is None
