"""MySQL payloads: handshake, OK/ERR/EOF, columns, rows, prepared statements, auth plugins."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.mysql import auth
from wire.mysql import messages as m
from wire.mysql.constants import Capability, FieldType
from wire.mysql.packets import ProtocolError

NONCE = bytes(range(1, 21))


def test_handshake_round_trip() -> None:
    payload = m.handshake(
        server_version="11.8.3-MariaDB",
        connection_id=77,
        scramble=NONCE,
        capabilities=int(Capability.PROTOCOL_41 | Capability.DEPRECATE_EOF),
        plugin="mysql_native_password",
    )
    hs = m.parse_handshake(payload)
    assert (hs.server_version, hs.connection_id, hs.scramble, hs.plugin) == (
        "11.8.3-MariaDB",
        77,
        NONCE,
        "mysql_native_password",
    )
    assert hs.capabilities & Capability.DEPRECATE_EOF


@settings(max_examples=100, deadline=None)
@given(
    user=st.text(max_size=20).filter(lambda s: "\x00" not in s),
    auth_response=st.binary(max_size=300),
    database=st.one_of(
        st.none(), st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)
    ),
    attributes=st.dictionaries(st.text(max_size=10), st.text(max_size=300), max_size=4),
)
def test_handshake_response_round_trip(
    user: str, auth_response: bytes, database: str | None, attributes: dict[str, str]
) -> None:
    payload = m.handshake_response(
        capabilities=int(Capability.MULTI_STATEMENTS),
        user=user,
        auth_response=auth_response,
        plugin="client_ed25519",
        database=database,
        attributes=attributes,
    )
    parsed = m.parse_handshake_response(payload)
    assert (parsed.user, parsed.auth_response, parsed.database, parsed.plugin) == (
        user,
        auth_response,
        database,
        "client_ed25519",
    )
    assert parsed.attributes == attributes
    assert parsed.capabilities & Capability.MULTI_STATEMENTS


def test_ssl_request_is_the_first_32_bytes() -> None:
    parsed = m.parse_handshake_response(m.ssl_request(int(Capability.PROTOCOL_41 | Capability.SSL)))
    assert parsed.ssl_request


def test_ok_err_eof() -> None:
    ok = m.parse_ok(m.ok(affected_rows=70000, last_insert_id=3, status=3, warnings=1))
    assert (ok.affected_rows, ok.last_insert_id, ok.status, ok.warnings) == (70000, 3, 3, 1)
    err = m.parse_err(m.err(1142, "42000", "gatehouse: denied"))
    assert (err.code, err.sqlstate, err.message) == (1142, "42000", "gatehouse: denied")
    assert m.is_eof(m.eof(status=8))
    assert m.parse_eof(m.eof(status=8)).status == 8
    assert not m.is_eof(m.text_row([b"x" * 300]))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.none(), st.binary(max_size=70000)), max_size=6))
def test_text_rows_round_trip(values: list[bytes | None]) -> None:
    assert m.parse_text_row(m.text_row(values), len(values)) == values


_BINARY = st.sampled_from(
    [
        (FieldType.TINY, b"\x05"),
        (FieldType.LONGLONG, (-2).to_bytes(8, "little", signed=True)),
        (FieldType.DOUBLE, b"\x00" * 7 + b"\x40"),
        (FieldType.VAR_STRING, m.lenenc_bytes(b"hello")),
        (FieldType.BLOB, m.lenenc_bytes(b"\x00\xff" * 200)),
        (FieldType.DATETIME, bytes([7]) + (2026).to_bytes(2, "little") + bytes([12, 5, 3, 4, 5])),
        (FieldType.TIME, bytes([8, 1]) + (2).to_bytes(4, "little") + bytes([3, 4, 5])),
        (FieldType.NULL, b""),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_BINARY, st.booleans()), max_size=20))
def test_binary_rows_round_trip(cells: list[tuple[tuple[int, bytes], bool]]) -> None:
    columns = [m.Column(f"c{i}", type_) for i, ((type_, _), _) in enumerate(cells)]
    values = [None if null else raw for (_, raw), null in cells]
    assert m.parse_binary_row(m.binary_row(values), columns) == values


def test_binary_values_read_as_text() -> None:
    assert (
        m.binary_to_text(FieldType.LONGLONG, False, (-2).to_bytes(8, "little", signed=True)) == "-2"
    )
    assert m.binary_to_text(FieldType.TINY, True, b"\xff") == "255"
    date = bytes([7]) + (2026).to_bytes(2, "little") + bytes([12, 5, 3, 4, 5])
    assert m.binary_to_text(FieldType.DATETIME, False, date) == "2026-12-05 03:04:05"
    time = bytes([8, 1]) + (2).to_bytes(4, "little") + bytes([3, 4, 5])
    assert m.binary_to_text(FieldType.TIME, False, time) == "-51:04:05"
    assert m.binary_to_text(FieldType.VARCHAR, False, m.lenenc_bytes("é".encode())) == "é"


@pytest.mark.parametrize(
    ("type_", "length"), [(FieldType.TIME, 1), (FieldType.TIME, 5), (FieldType.DATE, 2)]
)
def test_a_temporal_value_of_a_length_the_protocol_never_sends_is_a_protocol_error(
    type_: FieldType, length: int
) -> None:
    """A client's COM_STMT_EXECUTE parameter: refused with a clear error, never an IndexError
    that ends the session without telling the client."""
    with pytest.raises(ProtocolError, match=f"{length} bytes"):
        m.binary_to_text(type_, False, bytes([length]) + b"\x01" * length)


def test_column_round_trip() -> None:
    col = m.Column("id", FieldType.LONG, flags=0x20, charset=63, length=11, table="t", schema="s")
    assert m.parse_column(m.column(col)) == col


def test_execute_with_types_then_without() -> None:
    types = bytes([FieldType.LONGLONG, 0, FieldType.VAR_STRING, 0])
    body = (7).to_bytes(4, "little") + b"\x00" + (1).to_bytes(4, "little")
    first = (
        b"\x17"
        + body
        + b"\x00"
        + b"\x01"
        + types
        + (42).to_bytes(8, "little")
        + m.lenenc_bytes(b"hi")
    )
    parsed = m.parse_execute(first, 2, None)
    assert parsed.statement_id == 7
    assert parsed.types == [(FieldType.LONGLONG, False), (FieldType.VAR_STRING, False)]
    again = b"\x17" + body + b"\x02" + b"\x00" + (5).to_bytes(8, "little")
    parsed2 = m.parse_execute(again, 2, parsed.types)
    assert parsed2.values == [(5).to_bytes(8, "little"), None]
    with pytest.raises(ProtocolError):
        m.parse_execute(again, 2, None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_parsers_raise_protocol_errors_only(data: bytes) -> None:
    for parse in (
        m.parse_handshake,
        m.parse_handshake_response,
        m.parse_ok,
        m.parse_err,
        m.parse_column,
        m.parse_prepare_ok,
        lambda d: m.parse_text_row(d, 3),
        lambda d: m.parse_binary_row(d, [m.Column("a", FieldType.BLOB)] * 2),
        lambda d: m.parse_execute(d, 2, None),
    ):
        with contextlib.suppress(ProtocolError):
            parse(data)


def test_native_scramble_is_the_published_algorithm() -> None:
    # MySQL's documented formula, written out once more.
    s1 = hashlib.sha1(b"secret").digest()
    want = bytes(
        a ^ b
        for a, b in zip(s1, hashlib.sha1(NONCE + hashlib.sha1(s1).digest()).digest(), strict=False)
    )
    assert auth.native_scramble(b"secret", NONCE) == want
    assert auth.native_scramble(b"", NONCE) == b""


def test_caching_sha2_fast_path_verifies_on_the_server_side() -> None:
    stored = hashlib.sha256(hashlib.sha256(b"secret").digest()).digest()
    proof = auth.caching_sha2_scramble(b"secret", NONCE)
    assert auth.caching_sha2_verify(stored, NONCE, proof)
    assert not auth.caching_sha2_verify(stored, NONCE, auth.caching_sha2_scramble(b"wrong", NONCE))


def test_caching_sha2_full_path_rsa_round_trip() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sealed = auth.rsa_encrypt_password(b"a long password, longer than the nonce", NONCE, pem)
    assert (
        auth.rsa_decrypt_password(sealed, NONCE, key) == b"a long password, longer than the nonce"
    )


def test_ed25519_signature_verifies_with_the_stored_public_key() -> None:
    public = auth.ed25519_public_key(b"secret")
    signature = auth.ed25519_sign(b"secret", NONCE * 2)
    assert auth.ed25519_verify(public, NONCE * 2, signature)
    assert not auth.ed25519_verify(public, NONCE * 2, auth.ed25519_sign(b"other", NONCE * 2))
