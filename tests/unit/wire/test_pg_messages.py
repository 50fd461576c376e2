"""Builders and parsers: recorded bytes, round trips, malformed bodies."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.wire.test_pg_framing import (
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    BIND_NAMED,
    BIND_UNNAMED,
    DATA_ROW_42,
    ERROR_NOPE,
    EXECUTE_ALL,
    KEY_DATA,
    MD5_PASSWORD,
    PARSE_NAMED,
    PARSE_UNNAMED,
    PSQL_STARTUP,
    QUERY_ANSWER,
    READY_IDLE,
    ROW_DESCRIPTION_ANSWER,
    SCRAM_CLIENT_FINAL,
    SCRAM_CLIENT_FIRST,
    SCRAM_INITIAL_RESPONSE,
    SCRAM_RESPONSE,
    SCRAM_SERVER_FINAL,
    SCRAM_SERVER_FIRST,
    SCRAM_STARTUP,
    SELECT_1,
    SSL_REQUEST,
    STATUS_APPNAME,
    STATUS_VERSION,
    TERMINATE,
)
from wire.pg import (
    AUTH_CLEARTEXT_PASSWORD,
    AUTH_MD5_PASSWORD,
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_3,
    AuthRequest,
    Bind,
    CancelRequest,
    Close,
    Column,
    CommandTag,
    Execute,
    GSSENCRequest,
    Parse,
    ProtocolError,
    SSLRequest,
    StartupMessage,
    authentication_ok,
    authentication_request,
    backend_key_data,
    cancel_request,
    command_complete,
    data_row,
    error_response,
    md5_password,
    notice_response,
    parameter_status,
    parse_authentication,
    parse_backend_key_data,
    parse_bind,
    parse_close,
    parse_command_complete,
    parse_data_row,
    parse_error_fields,
    parse_execute,
    parse_parameter_status,
    parse_parse,
    parse_password_message,
    parse_query,
    parse_ready_for_query,
    parse_row_description,
    parse_sasl_initial_response,
    parse_startup,
    password_message,
    query,
    ready_for_query,
    row_description,
    sasl_initial_response,
    sasl_mechanisms,
    sasl_response,
    ssl_request,
    startup_message,
    sync,
    terminate,
)
from wire.pg import messages as messages_module

ANSWER_COLUMN = Column("answer", type_oid=23, type_size=4)


def body(message: bytes) -> bytes:
    """Strip the tag and length word of a tagged message."""
    assert struct.unpack_from("!i", message, 1)[0] == len(message) - 1
    return message[5:]


def untagged_body(message: bytes) -> bytes:
    """Strip the length word of an untagged startup-phase message."""
    assert struct.unpack_from("!i", message, 0)[0] == len(message)
    return message[4:]


# --- builders reproduce the recorded bytes ------------------------------------------------------


@pytest.mark.parametrize(
    ("built", "recorded"),
    [
        (
            startup_message(
                {"user": "postgres", "database": "postgres", "application_name": "psql"}
            ),
            PSQL_STARTUP,
        ),
        (ssl_request(), SSL_REQUEST),
        (password_message(md5_password("postgres", "secret", b"\x95\x51\x6b\x9a")), MD5_PASSWORD),
        (query("select 41+1 as answer"), QUERY_ANSWER),
        (terminate(), TERMINATE),
        (sasl_initial_response("SCRAM-SHA-256", SCRAM_CLIENT_FIRST), SCRAM_INITIAL_RESPONSE),
        (sasl_response(SCRAM_CLIENT_FINAL), SCRAM_RESPONSE),
        (authentication_request(AUTH_MD5_PASSWORD, b"\x95\x51\x6b\x9a"), AUTH_MD5),
        (authentication_request(10, b"SCRAM-SHA-256\x00\x00"), AUTH_SASL),
        (authentication_ok(), AUTH_OK),
        (parameter_status("application_name", "psql"), STATUS_APPNAME),
        (backend_key_data(9418, b"\xfb\xb5\x0a\x0c"), KEY_DATA),
        (ready_for_query("I"), READY_IDLE),
        (row_description([ANSWER_COLUMN]), ROW_DESCRIPTION_ANSWER),
        (data_row([b"42"]), DATA_ROW_42),
        (command_complete("SELECT 1"), SELECT_1),
    ],
)
def test_builder_matches_recording(built: bytes, recorded: bytes) -> None:
    assert built == recorded


def test_small_fixed_messages() -> None:
    assert sync() == b"S\x00\x00\x00\x04"
    assert cancel_request(9418, b"\xfb\xb5\x0a\x0c") == (
        b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x24\xca\xfb\xb5\x0a\x0c"
    )
    assert data_row([None, b""]) == b"D\x00\x00\x00\x0e\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00"


def test_error_response_bytes() -> None:
    built = error_response(
        sqlstate="28000", message="access denied", detail="no grant", hint="ask an admin"
    )
    assert built == (
        b"E\x00\x00\x00\x41"
        b"SERROR\x00VERROR\x00C28000\x00Maccess denied\x00Dno grant\x00Hask an admin\x00\x00"
    )
    notice = notice_response(sqlstate="01000", message="audited")
    assert notice == b"N\x00\x00\x00\x25SNOTICE\x00VNOTICE\x00C01000\x00Maudited\x00\x00"


def test_md5_password_follows_the_protocol_formula() -> None:
    inner = hashlib.md5(b"secretpostgres").hexdigest().encode()
    outer = hashlib.md5(inner + b"\x95\x51\x6b\x9a").hexdigest().encode()
    assert md5_password("postgres", "secret", b"\x95\x51\x6b\x9a") == b"md5" + outer
    assert md5_password("postgres", "secret", b"\x95\x51\x6b\x9a") == (
        b"md52b5f921f5b587ef44ea8e5bb3107d9e4"  # what psql sent
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda: query("select 1\0; drop table x"),
        lambda: startup_message({"user": "a\0b"}),
        lambda: startup_message({"": "x"}),
        lambda: password_message(b"se\0cret"),
        lambda: ready_for_query("X"),
        lambda: error_response(sqlstate="4201", message="x"),
        lambda: error_response(sqlstate="42P01", message="x\0y"),
        lambda: cancel_request(1, b"abc"),
        lambda: backend_key_data(1, b"k" * 257),
    ],
)
def test_builders_refuse_what_would_corrupt_the_stream(build: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        build()


# --- parsers on recorded bytes ------------------------------------------------------------------


def test_parse_recorded_startup_messages() -> None:
    assert parse_startup(untagged_body(PSQL_STARTUP)) == StartupMessage(
        PROTOCOL_3, {"user": "postgres", "database": "postgres", "application_name": "psql"}
    )
    scram = parse_startup(untagged_body(SCRAM_STARTUP))
    assert isinstance(scram, StartupMessage)
    assert scram.params["application_name"] == "gatehouse-test"
    assert parse_startup(untagged_body(SSL_REQUEST)) == SSLRequest()
    assert parse_startup(struct.pack("!i", GSSENC_REQUEST_CODE)) == GSSENCRequest()


def test_parse_startup_accepts_a_3_2_startup_and_long_cancel_key() -> None:
    assert parse_startup(struct.pack("!i", PROTOCOL_3 | 2) + b"\0") == StartupMessage(
        PROTOCOL_3 | 2, {}
    )
    key = bytes(range(32))
    assert parse_startup(untagged_body(cancel_request(77, key))) == CancelRequest(77, key)


def test_parse_recorded_query() -> None:
    assert parse_query(body(QUERY_ANSWER)) == "select 41+1 as answer"


def test_parse_recorded_authentication() -> None:
    assert parse_authentication(body(AUTH_MD5)) == AuthRequest(AUTH_MD5_PASSWORD, b"\x95Qk\x9a")
    assert parse_authentication(body(AUTH_OK)) == AuthRequest(0, b"")
    sasl = parse_authentication(body(AUTH_SASL))
    assert sasl.code == 10
    assert sasl_mechanisms(sasl.data) == ["SCRAM-SHA-256"]
    assert parse_authentication(body(AUTH_SASL_CONTINUE)) == AuthRequest(11, SCRAM_SERVER_FIRST)
    assert parse_authentication(body(AUTH_SASL_FINAL)) == AuthRequest(12, SCRAM_SERVER_FINAL)
    assert sasl_mechanisms(b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0") == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
    ]


def test_parse_recorded_password_messages() -> None:
    assert parse_password_message(body(MD5_PASSWORD)) == b"md52b5f921f5b587ef44ea8e5bb3107d9e4"
    assert parse_sasl_initial_response(body(SCRAM_INITIAL_RESPONSE)) == (
        "SCRAM-SHA-256",
        SCRAM_CLIENT_FIRST,
    )
    no_initial_response = b"SCRAM-SHA-256\0\xff\xff\xff\xff"
    assert parse_sasl_initial_response(no_initial_response) == ("SCRAM-SHA-256", b"")


def test_parse_recorded_session_messages() -> None:
    assert parse_parameter_status(body(STATUS_VERSION)) == (
        "server_version",
        "15.20 (Debian 15.20-0+deb12u1)",
    )
    assert parse_backend_key_data(body(KEY_DATA)) == (9418, b"\xfb\xb5\x0a\x0c")
    assert parse_ready_for_query(body(READY_IDLE)) == "I"
    assert parse_row_description(body(ROW_DESCRIPTION_ANSWER)) == [
        Column("answer", 0, 0, 23, 4, -1, 0)
    ]
    assert parse_data_row(body(DATA_ROW_42)) == [b"42"]
    assert parse_command_complete(body(SELECT_1)) == CommandTag("SELECT 1", "SELECT", 1)


def test_parse_recorded_error() -> None:
    error = parse_error_fields(memoryview(ERROR_NOPE)[5:])
    assert error.severity == "ERROR"
    assert error.sqlstate == "42P01"
    assert error.message == 'relation "nope" does not exist'
    assert error.detail is None
    assert error.hint is None
    assert error.fields == {
        "S": "ERROR",
        "V": "ERROR",
        "C": "42P01",
        "M": 'relation "nope" does not exist',
        "P": "15",
        "F": "parse_relation.c",
        "L": "1392",
        "R": "parserOpenTable",
    }


def test_parse_recorded_extended_protocol() -> None:
    assert parse_parse(body(PARSE_UNNAMED)) == Parse(
        "", "select $1::int4 + 1 as answer, $2::text as who", (21, 0)
    )
    assert parse_parse(body(PARSE_NAMED)) == Parse("_pg3_0", "select $1::int4 + 1 as answer", (21,))
    unnamed = parse_bind(body(BIND_UNNAMED))
    assert unnamed == Bind("", "", (1, 0), (b"\x00\x29", None), (0,))
    assert unnamed.parameters() == [(b"\x00\x29", 1), (None, 0)]
    named = parse_bind(body(BIND_NAMED))
    assert named == Bind("", "_pg3_0", (1,), (b"\x00\x29",), (0,))
    assert named.parameters() == [(b"\x00\x29", 1)]
    assert parse_execute(body(EXECUTE_ALL)) == Execute("", 0)


def test_bind_without_format_codes_is_all_text() -> None:
    bind = parse_bind(b"p1\0s1\0\0\0\0\x02\0\0\0\x01a\0\0\0\0\0\0")
    assert bind == Bind("p1", "s1", (), (b"a", b""), ())
    assert bind.parameters() == [(b"a", 0), (b"", 0)]


def test_parse_close() -> None:
    assert parse_close(b"S_pg3_0\0") == Close("S", "_pg3_0")
    assert parse_close(b"P\0") == Close("P", "")


def test_error_severity_prefers_the_non_localized_field() -> None:
    localized = b"SFEHLER\0VERROR\0C42P01\0MRelation nope existiert nicht\0\0"
    assert parse_error_fields(localized).severity == "ERROR"
    old_server = b"SFATAL\0C28P01\0Mpassword authentication failed\0\0"
    assert parse_error_fields(old_server).severity == "FATAL"


def test_display_text_survives_invalid_utf8() -> None:
    odd = b"SERROR\0C22021\0Mbad \xff byte\0\0"
    assert parse_error_fields(odd).message == "bad \ufffd byte"
    odd_tag = "SELECT \ufffd"
    assert parse_command_complete(b"SELECT \xff\0") == CommandTag(odd_tag, odd_tag, None)


@pytest.mark.parametrize(
    ("tag", "command", "rows"),
    [
        ("INSERT 0 3", "INSERT", 3),
        ("UPDATE 5", "UPDATE", 5),
        ("DELETE 0", "DELETE", 0),
        ("SELECT 1000000", "SELECT", 1000000),
        ("MOVE 2", "MOVE", 2),
        ("FETCH 10", "FETCH", 10),
        ("COPY 7", "COPY", 7),
        ("MERGE 4", "MERGE", 4),
        ("SELECT", "SELECT", None),
        ("CREATE TABLE", "CREATE TABLE", None),
        ("BEGIN", "BEGIN", None),
        ("DROP INDEX", "DROP INDEX", None),
        ("SELECT ٣", "SELECT ٣", None),  # a non-ASCII digit is no row count
        ("", "", None),
    ],
)
def test_parse_command_complete(tag: str, command: str, rows: int | None) -> None:
    assert parse_command_complete(body(command_complete(tag))) == CommandTag(tag, command, rows)


# --- malformed bodies ---------------------------------------------------------------------------

Parser = Callable[[bytes | memoryview], Any]

VALID: list[tuple[Parser, bytes]] = [
    (parse_startup, untagged_body(PSQL_STARTUP)),
    (parse_startup, untagged_body(SSL_REQUEST)),
    (parse_startup, untagged_body(cancel_request(9418, b"\xfb\xb5\x0a\x0c"))),
    (parse_query, body(QUERY_ANSWER)),
    (parse_authentication, body(AUTH_OK)),
    (parse_authentication, body(AUTH_MD5)),
    (parse_authentication, body(AUTH_SASL)),
    (parse_password_message, body(MD5_PASSWORD)),
    (parse_sasl_initial_response, body(SCRAM_INITIAL_RESPONSE)),
    (parse_error_fields, body(ERROR_NOPE)),
    (parse_command_complete, body(SELECT_1)),
    (parse_row_description, body(ROW_DESCRIPTION_ANSWER)),
    (parse_data_row, body(DATA_ROW_42)),
    (parse_data_row, body(data_row([None, b"x", b""]))),
    (parse_parameter_status, body(STATUS_APPNAME)),
    (parse_backend_key_data, body(KEY_DATA)),
    (parse_ready_for_query, body(READY_IDLE)),
    (parse_parse, body(PARSE_UNNAMED)),
    (parse_bind, body(BIND_UNNAMED)),
    (parse_bind, body(BIND_NAMED)),
    (parse_execute, body(EXECUTE_ALL)),
    (parse_close, b"S_pg3_0\0"),
]
IDS = [f"{parser.__name__}-{i}" for i, (parser, _) in enumerate(VALID)]


@pytest.mark.parametrize(("parser", "valid"), VALID, ids=IDS)
def test_every_truncation_is_a_protocol_error(parser: Parser, valid: bytes) -> None:
    parser(valid)
    for n in range(len(valid)):
        with pytest.raises(ProtocolError):
            parser(valid[:n])


@pytest.mark.parametrize(("parser", "valid"), VALID, ids=IDS)
def test_trailing_bytes_are_a_protocol_error(parser: Parser, valid: bytes) -> None:
    if parser is parse_backend_key_data or valid.startswith(struct.pack("!i", CANCEL_REQUEST_CODE)):
        valid += b"k" * 253  # the key is the rest of the message: overflow it
    with pytest.raises(ProtocolError):
        parser(valid + b"\0\0")


@pytest.mark.parametrize(
    ("parser", "data", "match"),
    [
        (parse_startup, struct.pack("!i", 2 << 16), "unsupported startup code"),
        (parse_startup, struct.pack("!i", PROTOCOL_3) + b"user\0\xffroot\0\0", "invalid UTF-8"),
        (parse_query, b"select '\xc3'\0", "invalid UTF-8"),
        (parse_query, b"select 1", "missing NUL"),
        (parse_authentication, struct.pack("!i", AUTH_MD5_PASSWORD) + b"abc", "salt of 3"),
        (parse_authentication, struct.pack("!i", AUTH_CLEARTEXT_PASSWORD) + b"x", "extra"),
        (parse_authentication, struct.pack("!i", 10) + b"SCRAM-SHA-256\0", "missing NUL"),
        (parse_error_fields, b"SERROR\0Moops\0\0", "missing S, C or M"),
        (parse_row_description, b"\xff\xff", "negative column count"),
        (parse_data_row, b"\x00\x01\xff\xff\xff\xfe", "value length -2"),
        (parse_data_row, b"\x00\x01\x00\x00\x00\x05abc", "value length 5"),
        (parse_data_row, b"\x80\x00", "negative column count"),
        (parse_ready_for_query, b"X", "transaction status 'X'"),
        (parse_backend_key_data, b"\x00\x00\x00\x01abc", "secret key of 3 bytes"),
        (parse_sasl_initial_response, b"SCRAM-SHA-256\0\xff\xff\xff\xfe", "negative data length"),
        (parse_parse, b"s\0select 1\0\xff\xff", "negative parameter type count"),
        (parse_bind, b"\0\0\0\x02\0\0\0\0\0\x01\0\0\0\0\0\0", "2 parameter formats for 1"),
        (parse_bind, b"\0\0\0\0\0\x01\xff\xff\xff\xfe\0\0", "parameter length -2"),
        (parse_bind, b"\0\0\0\0\0\0\xff\xff", "negative result format count"),
        (parse_close, b"X\0", "close kind 'X'"),
        (parse_execute, b"\xff\0\0\0\0\0", "invalid UTF-8"),
    ],
)
def test_malformed_body_names_the_problem(parser: Parser, data: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        parser(data)


ALL_PARSERS: list[Parser] = [
    parse_startup,
    parse_query,
    parse_authentication,
    sasl_mechanisms,
    parse_password_message,
    parse_sasl_initial_response,
    parse_error_fields,
    parse_command_complete,
    parse_row_description,
    parse_data_row,
    parse_parameter_status,
    parse_backend_key_data,
    parse_ready_for_query,
    parse_parse,
    parse_bind,
    parse_execute,
    parse_close,
]


@given(junk=st.binary(max_size=200), parser=st.sampled_from(ALL_PARSERS))
def test_junk_bodies_raise_nothing_but_protocol_error(junk: bytes, parser: Parser) -> None:
    try:
        parser(junk)
        parser(memoryview(junk))
    except ProtocolError:
        pass


# --- round trips --------------------------------------------------------------------------------

_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=40)
_name = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=20)


@given(params=st.dictionaries(_name, _text, max_size=6))
def test_startup_round_trip(params: dict[str, str]) -> None:
    assert parse_startup(untagged_body(startup_message(params))) == StartupMessage(
        PROTOCOL_3, params
    )


@given(pid=st.integers(-(2**31), 2**31 - 1), key=st.binary(min_size=4, max_size=256))
def test_cancel_and_key_data_round_trip(pid: int, key: bytes) -> None:
    assert parse_startup(untagged_body(cancel_request(pid, key))) == CancelRequest(pid, key)
    assert parse_backend_key_data(body(backend_key_data(pid, key))) == (pid, key)


@given(sql=_text)
def test_query_round_trip(sql: str) -> None:
    assert parse_query(body(query(sql))) == sql


@given(name=_name, value=_text)
def test_parameter_status_round_trip(name: str, value: str) -> None:
    assert parse_parameter_status(body(parameter_status(name, value))) == (name, value)


@given(
    severity=st.sampled_from(["ERROR", "FATAL", "PANIC", "WARNING"]),
    sqlstate=st.from_regex(r"\A[0-9A-Z]{5}\Z"),
    message=_text,
    detail=st.none() | _text,
    hint=st.none() | _text,
)
def test_error_and_notice_round_trip(
    severity: str, sqlstate: str, message: str, detail: str | None, hint: str | None
) -> None:
    for build in (error_response, notice_response):
        built = build(
            severity=severity, sqlstate=sqlstate, message=message, detail=detail, hint=hint
        )
        parsed = parse_error_fields(body(built))
        assert (parsed.severity, parsed.sqlstate, parsed.message) == (severity, sqlstate, message)
        assert (parsed.detail, parsed.hint) == (detail, hint)
        assert parsed.fields["S"] == severity


@given(
    columns=st.lists(
        st.builds(
            Column,
            _text,
            st.integers(0, 2**32 - 1),
            st.integers(-(2**15), 2**15 - 1),
            st.integers(0, 2**32 - 1),
            st.integers(-(2**15), 2**15 - 1),
            st.integers(-(2**31), 2**31 - 1),
            st.sampled_from([0, 1]),
        ),
        max_size=10,
    )
)
def test_row_description_round_trip(columns: list[Column]) -> None:
    assert parse_row_description(body(row_description(columns))) == columns


@given(values=st.lists(st.none() | st.binary(max_size=50), max_size=20))
def test_data_row_round_trip(values: list[bytes | None]) -> None:
    assert parse_data_row(body(data_row(values))) == values
    assert parse_data_row(memoryview(data_row(values))[5:]) == values


@given(mechanism=_name, data=st.binary(max_size=100))
def test_sasl_initial_response_round_trip(mechanism: str, data: bytes) -> None:
    assert parse_sasl_initial_response(body(sasl_initial_response(mechanism, data))) == (
        mechanism,
        data,
    )


@given(code=st.sampled_from([11, 12]), data=st.binary(max_size=100))
def test_authentication_round_trip(code: int, data: bytes) -> None:
    assert parse_authentication(body(authentication_request(code, data))) == AuthRequest(code, data)


def test_extended_query_is_parse_bind_describe_execute_sync_with_text_parameters() -> None:
    from wire.pg import framing
    from wire.pg import messages as pgm

    data = pgm.extended_query("select $1::int + $2", ["41", None])
    parsed = list(framing.MessageFramer().feed(data))
    assert [chr(m.tag) for m in parsed] == ["P", "B", "D", "E", "S"]
    statement = pgm.parse_parse(parsed[0].body)
    assert (statement.name, statement.query, statement.param_types) == (
        "",
        "select $1::int + $2",
        (),
    )
    bind = pgm.parse_bind(parsed[1].body)
    assert (bind.portal, bind.statement, bind.values) == ("", "", (b"41", None))
    assert bind.param_formats == () and bind.result_formats == ()
    execute = pgm.parse_execute(parsed[3].body)
    assert (execute.portal, execute.max_rows) == ("", 0)


# Bind and Execute are read without a cursor first (`_bind_fast`); the cursor reads only what
# that refuses, to name the problem. Both must accept the same bodies and read them alike.
_bind_values = st.lists(st.one_of(st.none(), st.binary(max_size=8)), max_size=4)
_names = st.text(max_size=4)


def _bind_body(
    portal: str, statement: str, formats: list[int], values: list[bytes | None], results: list[int]
) -> bytes:
    out = portal.encode("utf-8", "surrogatepass") + b"\0"
    out += statement.encode("utf-8", "surrogatepass") + b"\0"
    out += struct.pack(f"!h{len(formats)}h", len(formats), *formats)
    out += struct.pack("!h", len(values))
    for value in values:
        out += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return out + struct.pack(f"!h{len(results)}h", len(results), *results)


def _outcome(parse: Callable[[bytes], object], data: bytes) -> object:
    try:
        return parse(data)
    except ProtocolError:
        return ProtocolError


@settings(max_examples=400, deadline=None)
@given(
    _names,
    _names,
    st.lists(st.integers(0, 1), max_size=3),
    _bind_values,
    st.lists(st.integers(-2, 2), max_size=3),
    st.integers(0, 40),
    st.binary(max_size=3),
)
def test_bind_fast_reading_agrees_with_the_cursor(
    portal: str,
    statement: str,
    formats: list[int],
    values: list[bytes | None],
    results: list[int],
    cut: int,
    junk: bytes,
) -> None:
    whole = _bind_body(portal, statement, formats, values, results)
    for data in (whole, whole[:cut], whole + junk, whole[cut:]):
        checked = _outcome(messages_module._bind_checked, data)
        try:
            fast: object = messages_module._bind_fast(data)
        except (ValueError, struct.error):
            fast = ProtocolError
        assert fast == checked
        assert _outcome(parse_bind, data) == checked


@given(st.binary(max_size=24))
def test_bind_of_any_bytes_reads_alike(data: bytes) -> None:
    checked = _outcome(messages_module._bind_checked, data)
    assert _outcome(parse_bind, data) == checked


@given(_names, st.integers(-(2**31), 2**31 - 1), st.binary(max_size=3), st.integers(0, 12))
def test_execute_fast_reading_agrees_with_the_cursor(
    portal: str, rows: int, junk: bytes, cut: int
) -> None:
    whole = portal.encode("utf-8", "surrogatepass") + b"\0" + struct.pack("!i", rows)

    def checked(data: bytes) -> Execute:
        r = messages_module._Reader(data, "Execute")
        found = Execute(r.strict_cstring(), r.int32())
        r.end()
        return found

    for data in (whole, whole[:cut], whole + junk):
        assert _outcome(parse_execute, data) == _outcome(checked, data)
