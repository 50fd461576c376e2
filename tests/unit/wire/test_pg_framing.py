"""MessageFramer: recorded exchanges, every split point, property tests, bad lengths.

The recorded bytes come from psql 15 talking to PostgreSQL 15 (md5 and SCRAM-SHA-256 logins, no
TLS) through a capturing proxy; each message was checked by hand against the protocol spec.
"""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wire.pg import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3,
    SSL_REQUEST_CODE,
    Column,
    MessageFramer,
    ProtocolError,
    authentication_ok,
    backend_key_data,
    cancel_request,
    command_complete,
    data_row,
    error_response,
    notice_response,
    parameter_status,
    password_message,
    query,
    ready_for_query,
    row_description,
    sasl_initial_response,
    sasl_response,
    ssl_request,
    startup_message,
    sync,
    terminate,
)

# --- recorded exchange: `psql -c 'select 41+1 as answer' -c 'select * from nope'` ------------

SSL_REQUEST = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # length 8, code 1234<<16 | 5679
PSQL_STARTUP = (
    b"\x00\x00\x00\x3f"  # length 63
    b"\x00\x03\x00\x00"  # protocol 3.0
    b"user\x00postgres\x00database\x00postgres\x00application_name\x00psql\x00"
    b"\x00"
)
MD5_PASSWORD = b"p\x00\x00\x00\x28md52b5f921f5b587ef44ea8e5bb3107d9e4\x00"
QUERY_ANSWER = b"Q\x00\x00\x00\x1aselect 41+1 as answer\x00"
QUERY_NOPE = b"Q\x00\x00\x00\x17select * from nope\x00"
TERMINATE = b"X\x00\x00\x00\x04"

FRONTEND = [SSL_REQUEST, PSQL_STARTUP, MD5_PASSWORD, QUERY_ANSWER, QUERY_NOPE, TERMINATE]
"""What psql sent; the server answered the SSLRequest with the single byte b"N"."""

AUTH_MD5 = b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x95\x51\x6b\x9a"  # code 5, salt 95 51 6b 9a
AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
STATUS_APPNAME = b"S\x00\x00\x00\x1aapplication_name\x00psql\x00"
STATUS_ENCODING = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"
STATUS_VERSION = b"S\x00\x00\x00\x32server_version\x0015.20 (Debian 15.20-0+deb12u1)\x00"
# (the server sent ten more ParameterStatus messages here; left out for brevity)
KEY_DATA = b"K\x00\x00\x00\x0c\x00\x00\x24\xca\xfb\xb5\x0a\x0c"  # pid 9418, key fb b5 0a 0c
READY_IDLE = b"Z\x00\x00\x00\x05I"
ROW_DESCRIPTION_ANSWER = (
    b"T\x00\x00\x00\x1f"
    b"\x00\x01"  # one column
    b"answer\x00"
    b"\x00\x00\x00\x00"  # table oid 0: computed column
    b"\x00\x00"  # attribute number 0
    b"\x00\x00\x00\x17"  # type oid 23: int4
    b"\x00\x04"  # type size 4
    b"\xff\xff\xff\xff"  # type modifier -1
    b"\x00\x00"  # format 0: text
)
DATA_ROW_42 = b"D\x00\x00\x00\x0c\x00\x01\x00\x00\x00\x0242"
SELECT_1 = b"C\x00\x00\x00\x0dSELECT 1\x00"
ERROR_NOPE = (
    b"E\x00\x00\x00\x67"
    b"SERROR\x00"
    b"VERROR\x00"
    b"C42P01\x00"
    b'Mrelation "nope" does not exist\x00'
    b"P15\x00"
    b"Fparse_relation.c\x00"
    b"L1392\x00"
    b"RparserOpenTable\x00"
    b"\x00"
)

BACKEND_LOGIN = [AUTH_MD5, AUTH_OK, STATUS_APPNAME, STATUS_ENCODING, STATUS_VERSION, KEY_DATA]
ANSWER_RESPONSE = [ROW_DESCRIPTION_ANSWER, DATA_ROW_42, SELECT_1, READY_IDLE]
NOPE_RESPONSE = [ERROR_NOPE, READY_IDLE]
BACKEND = [*BACKEND_LOGIN, READY_IDLE, *ANSWER_RESPONSE, *NOPE_RESPONSE]

# --- recorded exchange: SCRAM-SHA-256 login of `psql "application_name=gatehouse-test"` ------

SCRAM_STARTUP = (
    b"\x00\x00\x00\x49\x00\x03\x00\x00"
    b"user\x00postgres\x00database\x00postgres\x00application_name\x00gatehouse-test\x00\x00"
)
SCRAM_CLIENT_FIRST = b"n,,n=,r=gGK3s2XIPPvrV9oBEsNLGRBR"
SCRAM_INITIAL_RESPONSE = b"p\x00\x00\x00\x36SCRAM-SHA-256\x00\x00\x00\x00\x20" + SCRAM_CLIENT_FIRST
SCRAM_CLIENT_FINAL = (
    b"c=biws,r=gGK3s2XIPPvrV9oBEsNLGRBRj7qKt4cS/8Dzox+7DJSGqQT/,"
    b"p=EN1VuzcVpKRYlEWrwQQ/ftQDSENL9PfmTXtS/cEVqcg="
)
SCRAM_RESPONSE = b"p\x00\x00\x00\x6c" + SCRAM_CLIENT_FINAL
AUTH_SASL = b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"
SCRAM_SERVER_FIRST = (
    b"r=gGK3s2XIPPvrV9oBEsNLGRBRj7qKt4cS/8Dzox+7DJSGqQT/,s=rJV5Pat/NgNl59xiboEVcg==,i=4096"
)
AUTH_SASL_CONTINUE = b"R\x00\x00\x00\x5c\x00\x00\x00\x0b" + SCRAM_SERVER_FIRST
SCRAM_SERVER_FINAL = b"v=f3QU4T4ffz1HGtTCFrVWrXsWN9AvE8xFIc8gctD9ts4="
AUTH_SASL_FINAL = b"R\x00\x00\x00\x36\x00\x00\x00\x0c" + SCRAM_SERVER_FINAL

SCRAM_FRONTEND = [SCRAM_STARTUP, SCRAM_INITIAL_RESPONSE, SCRAM_RESPONSE, TERMINATE]
SCRAM_BACKEND = [AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL, AUTH_OK, READY_IDLE]

# --- recorded exchange: psycopg 3 extended protocol, a text+NULL then a prepared binary query ----

PSYCOPG_STARTUP = (
    b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00"
)
BEGIN = b"Q\x00\x00\x00\x0aBEGIN\x00"
PARSE_UNNAMED = (
    b"P\x00\x00\x00\x3e"
    b"\x00"  # unnamed statement
    b"select $1::int4 + 1 as answer, $2::text as who\x00"
    b"\x00\x02\x00\x00\x00\x15\x00\x00\x00\x00"  # 2 parameter types: int2 (21), unspecified
)
BIND_UNNAMED = (
    b"B\x00\x00\x00\x1c"
    b"\x00\x00"  # unnamed portal, unnamed statement
    b"\x00\x02\x00\x01\x00\x00"  # 2 parameter formats: binary, text
    b"\x00\x02\x00\x00\x00\x02\x00\x29\xff\xff\xff\xff"  # 2 values: int2 41, NULL
    b"\x00\x01\x00\x00"  # 1 result format: text
)
DESCRIBE_PORTAL = b"D\x00\x00\x00\x06P\x00"
EXECUTE_ALL = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"  # unnamed portal, no row limit
SYNC = b"S\x00\x00\x00\x04"
PARSE_NAMED = (
    b"P\x00\x00\x00\x2f_pg3_0\x00select $1::int4 + 1 as answer\x00\x00\x01\x00\x00\x00\x15"
)
BIND_NAMED = (
    b"B\x00\x00\x00\x1c\x00_pg3_0\x00"
    b"\x00\x01\x00\x01"  # one format for all parameters: binary
    b"\x00\x01\x00\x00\x00\x02\x00\x29"
    b"\x00\x01\x00\x00"
)
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"

EXTENDED_FRONTEND = [
    PSYCOPG_STARTUP,
    BEGIN,
    *(PARSE_UNNAMED, BIND_UNNAMED, DESCRIBE_PORTAL, EXECUTE_ALL, SYNC),
    *(PARSE_NAMED, SYNC),
    *(BIND_NAMED, DESCRIBE_PORTAL, EXECUTE_ALL, SYNC),
    COMMIT,
    TERMINATE,
]

STREAMS = {
    "frontend": (True, FRONTEND),
    "backend": (False, BACKEND),
    "scram-frontend": (True, SCRAM_FRONTEND),
    "scram-backend": (False, SCRAM_BACKEND),
    "extended-frontend": (True, EXTENDED_FRONTEND),
}

Framed = tuple[int, bytes, bytes, int]
"""tag, raw, body, absolute end offset in the whole stream."""


def expected(messages: list[bytes], startup_phase: bool) -> list[Framed]:
    """What the framer must produce for a list of whole messages."""
    out: list[Framed] = []
    pos = 0
    untagged = startup_phase
    for raw in messages:
        pos += len(raw)
        if untagged:
            out.append((0, raw, raw[4:], pos))
            (code,) = struct.unpack_from("!i", raw, 4)
            untagged = code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE)
        else:
            out.append((raw[0], raw, raw[5:], pos))
    return out


def frame(framer: MessageFramer, chunks: list[bytes]) -> list[Framed]:
    """Feed chunks in turn; check each `end` lies in its chunk and make it absolute."""
    out: list[Framed] = []
    start = 0
    for chunk in chunks:
        for msg in framer.feed(chunk):
            assert 0 < msg.end <= len(chunk)
            assert len(msg.raw) == len(msg.body) + (4 if msg.tag == 0 else 5)
            out.append((msg.tag, bytes(msg.raw), bytes(msg.body), start + msg.end))
        start += len(chunk)
    assert framer.pending == 0
    return out


def cut(stream: bytes, points: list[int]) -> list[bytes]:
    """Split a stream at the given offsets."""
    bounds = [0, *sorted(points), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


# --- recorded streams -------------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_in_one_piece(name: str) -> None:
    startup_phase, messages = STREAMS[name]
    stream = b"".join(messages)
    assert frame(MessageFramer(startup_phase=startup_phase), [stream]) == expected(
        messages, startup_phase
    )


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_split_at_every_byte(name: str) -> None:
    startup_phase, messages = STREAMS[name]
    stream = b"".join(messages)
    want = expected(messages, startup_phase)
    for i in range(len(stream) + 1):
        got = frame(MessageFramer(startup_phase=startup_phase), cut(stream, [i]))
        assert got == want, f"split at {i}"


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_stream_byte_by_byte(name: str) -> None:
    startup_phase, messages = STREAMS[name]
    stream = b"".join(messages)
    chunks = [stream[i : i + 1] for i in range(len(stream))]
    assert frame(MessageFramer(startup_phase=startup_phase), chunks) == expected(
        messages, startup_phase
    )


def test_query_response_split_at_every_pair_of_points() -> None:
    stream = b"".join(ANSWER_RESPONSE)
    want = expected(ANSWER_RESPONSE, False)
    for i in range(len(stream) + 1):
        for j in range(i, len(stream) + 1):
            assert frame(MessageFramer(), cut(stream, [i, j])) == want, f"split at {i}, {j}"


def test_whole_messages_are_views_into_the_data() -> None:
    data = b"".join(ANSWER_RESPONSE)
    messages = MessageFramer().feed(data)
    assert [m.tag for m in messages] == [ord("T"), ord("D"), ord("C"), ord("Z")]
    assert [m.end for m in messages] == [32, 45, 59, 65]
    for msg in messages:
        assert msg.raw.obj is data
        assert msg.body.obj is data


def test_split_message_is_assembled_into_a_read_only_buffer() -> None:
    framer = MessageFramer()
    assert framer.feed(DATA_ROW_42[:3]) == []
    assert framer.pending == 3
    assert framer.feed(DATA_ROW_42[3:7]) == []
    assert framer.pending == 7
    tail = DATA_ROW_42[7:] + SELECT_1
    first, second = framer.feed(tail)
    assert framer.pending == 0
    assert bytes(first.raw) == DATA_ROW_42
    assert first.raw.readonly
    assert first.raw.obj is not tail
    assert first.end == len(DATA_ROW_42) - 7
    assert second.raw.obj is tail  # back to zero copy once the split message is done
    assert second.end == len(tail)


def test_pending_counts_an_incomplete_header() -> None:
    framer = MessageFramer()
    framer.feed(READY_IDLE + SELECT_1[:2])
    assert framer.pending == 2


def test_accepts_bytearray_and_memoryview() -> None:
    stream = b"".join(ANSWER_RESPONSE)
    assert len(MessageFramer().feed(bytearray(stream))) == 4
    assert len(MessageFramer().feed(memoryview(stream)[: len(ROW_DESCRIPTION_ANSWER)])) == 1


# --- startup phase ------------------------------------------------------------------------------


def test_startup_phase_stays_untagged_after_ssl_and_gssenc_requests() -> None:
    gssenc = struct.pack("!ii", 8, GSSENC_REQUEST_CODE)
    stream = [gssenc, ssl_request(), PSQL_STARTUP, QUERY_ANSWER]
    got = frame(MessageFramer(startup_phase=True), [b"".join(stream)])
    assert [tag for tag, *_ in got] == [0, 0, 0, ord("Q")]


def test_startup_phase_accepts_protocol_3_minor_versions() -> None:
    startup_3_2 = struct.pack("!ii", 9, PROTOCOL_3 | 2) + b"\x00"
    got = frame(MessageFramer(startup_phase=True), [startup_3_2 + TERMINATE])
    assert [tag for tag, *_ in got] == [0, ord("X")]


def test_cancel_request_ends_the_startup_phase() -> None:
    request = cancel_request(9418, b"\xfb\xb5\x0a\x0c")
    assert struct.unpack_from("!i", request, 4)[0] == CANCEL_REQUEST_CODE
    got = frame(MessageFramer(startup_phase=True), [request + TERMINATE])
    assert [tag for tag, *_ in got] == [0, ord("X")]


@pytest.mark.parametrize(
    "code",
    [0, 2 << 16, 4 << 16, (1234 << 16) | 5677, (1234 << 16) | 5681, -1],
    ids=["zero", "protocol-2", "protocol-4", "below-cancel", "above-gssenc", "negative"],
)
def test_unknown_startup_code_is_a_protocol_error(code: int) -> None:
    with pytest.raises(ProtocolError, match="unsupported startup code"):
        MessageFramer(startup_phase=True).feed(struct.pack("!ii", 8, code))


def test_backend_framer_reads_a_startup_message_as_tagged() -> None:
    # A tagged reader sees tag 0x00 and a length word of 0x00003f00: far beyond a small limit.
    with pytest.raises(ProtocolError, match="0x00"):
        MessageFramer(max_message=1024).feed(PSQL_STARTUP)


# --- bad lengths --------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [-(2**31), -1, 0, 3, 1025, 2**31 - 1])
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_bad_tagged_length_is_a_protocol_error(length: int, byte_by_byte: bool) -> None:
    data = b"Q" + struct.pack("!i", length) + b"select 1\x00"
    framer = MessageFramer(max_message=1024)
    with pytest.raises(ProtocolError, match=rf"invalid length {length} for message 'Q'"):
        if byte_by_byte:
            for i in range(len(data)):
                framer.feed(data[i : i + 1])
        else:
            framer.feed(data)


@pytest.mark.parametrize("length", [-(2**31), -1, 0, 4, 7, 10001, 2**31 - 1])
@pytest.mark.parametrize("byte_by_byte", [False, True])
def test_bad_untagged_length_is_a_protocol_error(length: int, byte_by_byte: bool) -> None:
    data = struct.pack("!ii", length, PROTOCOL_3) + b"\x00" * 8
    framer = MessageFramer(startup_phase=True)
    with pytest.raises(ProtocolError, match=rf"invalid length {length} for untagged"):
        if byte_by_byte:
            for i in range(len(data)):
                framer.feed(data[i : i + 1])
        else:
            framer.feed(data)


def test_max_message_bounds_the_length_word() -> None:
    at_limit = b"D" + struct.pack("!i", 64) + b"\x00" * 60
    assert len(MessageFramer(max_message=64).feed(at_limit)) == 1
    with pytest.raises(ProtocolError, match="invalid length 64 for message 'D' \\(max 63\\)"):
        MessageFramer(max_message=63).feed(at_limit)


def test_oversized_length_fails_before_the_body_arrives() -> None:
    with pytest.raises(ProtocolError):
        MessageFramer().feed(b"D\x7f\xff\xff\xff")


def test_unprintable_tag_is_named_in_hex() -> None:
    with pytest.raises(ProtocolError, match="message 0xff"):
        MessageFramer().feed(b"\xff\x00\x00\x00\x01")


# --- property tests -----------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40)
_name = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20)
_value = st.none() | st.binary(max_size=60)

tagged_messages = st.one_of(
    _text.map(query),
    st.just(sync()),
    st.just(terminate()),
    st.just(authentication_ok()),
    st.binary(max_size=40).filter(lambda b: b"\0" not in b).map(password_message),
    st.builds(sasl_initial_response, _name, st.binary(max_size=60)),
    st.binary(max_size=80).map(sasl_response),
    st.builds(parameter_status, _name, _text),
    st.builds(backend_key_data, st.integers(0, 2**31 - 1), st.binary(min_size=4, max_size=256)),
    st.sampled_from("ITE").map(ready_for_query),
    st.builds(
        lambda code, msg, detail: error_response(sqlstate=code, message=msg, detail=detail),
        st.sampled_from(["42P01", "28P01", "57014", "XX000"]),
        _text,
        st.none() | _text,
    ),
    st.builds(lambda msg: notice_response(sqlstate="00000", message=msg), _text),
    _text.map(command_complete),
    st.lists(st.builds(Column, _name, type_oid=st.integers(0, 2**32 - 1)), max_size=5).map(
        row_description
    ),
    st.lists(_value, max_size=8).map(data_row),
)
startup_prefixes = st.lists(
    st.sampled_from([ssl_request(), struct.pack("!ii", 8, GSSENC_REQUEST_CODE)]), max_size=2
).flatmap(
    lambda prefix: st.dictionaries(_name, _text, max_size=4).map(
        lambda params: [*prefix, startup_message(params)]
    )
)


@given(
    startup=st.none() | startup_prefixes,
    messages=st.lists(tagged_messages, max_size=12),
    data=st.data(),
)
def test_built_messages_survive_random_splits(
    startup: list[bytes] | None, messages: list[bytes], data: st.DataObject
) -> None:
    all_messages = [*(startup or []), *messages]
    stream = b"".join(all_messages)
    points = data.draw(st.lists(st.integers(0, len(stream)), max_size=10))
    framer = MessageFramer(startup_phase=startup is not None)
    assert frame(framer, cut(stream, points)) == expected(all_messages, startup is not None)


@given(
    junk=st.binary(max_size=300),
    startup_phase=st.booleans(),
    max_message=st.integers(0, 200),
    data=st.data(),
)
def test_junk_raises_nothing_but_protocol_error(
    junk: bytes, startup_phase: bool, max_message: int, data: st.DataObject
) -> None:
    points = data.draw(st.lists(st.integers(0, len(junk)), max_size=6))
    framer = MessageFramer(startup_phase=startup_phase, max_message=max_message)
    try:
        for chunk in cut(junk, points):
            for msg in framer.feed(chunk):
                assert 0 < msg.end <= len(chunk)
    except ProtocolError:
        pass
