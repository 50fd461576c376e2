"""ResultMasker on hand-built protocol streams: what is masked, what passes untouched (and
uncopied), split reads, the offsets of result marks, the extended protocol and COPY."""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.masking import MaskingError, MaskingPolicy
from agent.pg import relay
from agent.pg.masking import Masked, ResultMasker
from gatehouse.v1 import tunnel_pb2
from wire.pg import framing
from wire.pg import messages as pgm
from wire.pg.messages import Column

Mark = tunnel_pb2.ResultMark

TEXT, INT4, INT8, JSONB, BYTEA, TEXT_ARRAY, UUID, BPCHAR = 25, 23, 20, 3802, 17, 1009, 2950, 1042

PII = {
    "rules": [{"name": "pii", "columns": ["email", "SSN"], "detectors": ["email", "credit_card"]}]
}
COLUMNS_ONLY = {"rules": [{"name": "pii", "columns": ["email"], "detectors": []}]}
DETECTORS_ONLY = {"rules": [{"name": "d", "columns": [], "detectors": ["email", "secret"]}]}

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
NO_DATA = b"n\x00\x00\x00\x04"
READY = pgm.ready_for_query("I")


# ---- builders for the messages wire.pg.messages does not build -------------------------------


def _msg(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def parse(name: str, sql: str) -> bytes:
    return _msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + struct.pack("!h", 0))


def bind(
    portal: str, statement: str, result_formats: Sequence[int] = (), params: Sequence[bytes] = ()
) -> bytes:
    body = portal.encode() + b"\0" + statement.encode() + b"\0"
    body += struct.pack("!h", 0) + struct.pack("!h", len(params))
    for value in params:
        body += struct.pack("!i", len(value)) + value
    body += struct.pack("!h", len(result_formats)) + b"".join(
        struct.pack("!h", f) for f in result_formats
    )
    return _msg(b"B", body)


def describe(kind: str, name: str) -> bytes:
    return _msg(b"D", kind.encode() + name.encode() + b"\0")


def execute(portal: str, max_rows: int = 0) -> bytes:
    return _msg(b"E", portal.encode() + b"\0" + struct.pack("!i", max_rows))


def parameter_description(*oids: int) -> bytes:
    return _msg(b"t", struct.pack("!h", len(oids)) + b"".join(struct.pack("!I", o) for o in oids))


def copy_out_response(overall: int, formats: Sequence[int]) -> bytes:
    return _msg(b"H", bytes([overall]) + struct.pack(f"!h{len(formats)}h", len(formats), *formats))


def copy_data(row: bytes) -> bytes:
    return _msg(b"d", row)


COPY_DONE = b"c\x00\x00\x00\x04"


def notification(pid: int, channel: str, payload: str) -> bytes:
    return _msg(b"A", struct.pack("!i", pid) + channel.encode() + b"\0" + payload.encode() + b"\0")


def int4(value: int) -> bytes:
    return struct.pack("!i", value)


def masker(spec: Mapping[str, object] = PII) -> ResultMasker:
    policy = MaskingPolicy.from_spec(spec)
    assert policy is not None
    return ResultMasker(policy)


def frame(data: bytes) -> list[framing.Message]:
    framer = framing.MessageFramer()
    messages = framer.feed(data)
    assert framer.pending == 0, "the output ends in the middle of a message"
    return messages


def rows(data: bytes) -> list[list[bytes | None]]:
    return [pgm.parse_data_row(m.body) for m in frame(data) if m.tag == ord("D")]


def simple_result(
    columns: Sequence[Column], values: Sequence[Sequence[bytes | None]], tag: str = ""
) -> bytes:
    body = pgm.row_description(columns)
    body += b"".join(pgm.data_row(v) for v in values)
    return body + pgm.command_complete(tag or f"SELECT {len(values)}") + READY


def check_marks(*outputs: Masked) -> list[Mark]:
    """The marks the relay would send for consecutive outputs, each `end` (made relative to the
    whole output) just past a message of the kind it names."""
    whole = b"".join(o.data for o in outputs)
    by_end = {m.end: m for m in frame(whole)}
    kinds = {ord("C"): Mark.COMPLETE, ord("I"): Mark.COMPLETE, ord("s"): Mark.COMPLETE}
    kinds |= {ord("E"): Mark.ERROR, ord("Z"): Mark.READY}
    kinds |= {ord("1"): Mark.PARSE_COMPLETE, ord("2"): Mark.BIND_COMPLETE}
    kinds |= {ord("3"): Mark.CLOSE_COMPLETE, ord("T"): Mark.DESCRIBED, ord("n"): Mark.DESCRIBED}
    marks, offset = [], 0
    for out in outputs:
        for mark in relay.masked_marks(out):
            assert 0 < mark.end <= len(out.data)
            assert offset + mark.end in by_end, f"mark at {mark.end} is not at a message end"
            assert kinds[by_end[offset + mark.end].tag] == mark.kind
            marks.append(mark)
        offset += len(out.data)
    assert len(marks) == sum(1 for m in by_end.values() if m.tag in kinds)
    return [m for m in marks if m.kind in (Mark.COMPLETE, Mark.ERROR, Mark.READY)]


# ---- simple query ------------------------------------------------------------------------------

PEOPLE = [
    Column("id", type_oid=INT4),
    Column("Email", type_oid=TEXT),
    Column("ssn", type_oid=INT8),
    Column("note", type_oid=TEXT),
]


def test_a_column_rule_masks_text_and_nulls_other_types() -> None:
    m = masker()
    m.client(pgm.query("select * from people"))
    out = m.server(simple_result(PEOPLE, [[b"1", b"ann@example.com", b"123456789", b"hello"]]))
    assert rows(out.data) == [[b"1", b"****", None, b"hello"]]
    marks = check_marks(out)
    assert [(mk.kind, mk.masked) for mk in marks] == [(Mark.COMPLETE, True), (Mark.READY, False)]
    assert marks[0].rows == 1


def test_a_detector_masks_only_the_finding_inside_a_longer_text() -> None:
    m = masker()
    m.client(pgm.query("select note from notes"))
    out = m.server(
        simple_result([Column("note")], [[b"write to bob@example.org or call"], [b"plain"]])
    )
    assert rows(out.data) == [[b"write to ***@example.org or call"], [b"plain"]]
    assert check_marks(out)[0].masked


def test_untouched_results_are_the_same_bytes_object() -> None:
    m = masker()
    m.client(pgm.query("select id, note from t"))
    data = simple_result(
        [Column("id", type_oid=INT4), Column("note")], [[b"1", b"nothing here"]] * 3
    )
    out = m.server(data)
    assert out.data is data
    assert [mk.masked for mk in check_marks(out)] == [False, False]


def test_a_result_without_text_columns_is_not_even_looked_at() -> None:
    m = masker()
    m.client(pgm.query("select id from t"))
    data = simple_result([Column("id", type_oid=INT4), Column("at", type_oid=1184)], [[b"1", b"x"]])
    assert m.server(data).data is data


def test_a_result_set_after_a_masked_one_is_judged_on_its_own() -> None:
    m = masker()
    m.client(pgm.query("select email from a; select note from b"))
    first = (
        pgm.row_description([Column("email")])
        + pgm.data_row([b"a@b.co"])
        + pgm.command_complete("SELECT 1")
    )
    second = (
        pgm.row_description([Column("note")])
        + pgm.data_row([b"fine"])
        + pgm.command_complete("SELECT 1")
    )
    out = m.server(first + second + READY)
    assert rows(out.data) == [[b"****"], [b"fine"]]
    assert [mk.masked for mk in check_marks(out)] == [True, False, False]


def test_null_values_stay_null_and_are_not_counted_as_masked() -> None:
    m = masker()
    m.client(pgm.query("select email from a"))
    out = m.server(simple_result([Column("email")], [[None]]))
    assert rows(out.data) == [[None]]
    assert not check_marks(out)[0].masked


def test_bpchar_keeps_its_declared_width() -> None:
    m = masker({"rules": [{"name": "r", "columns": ["code"]}]})
    m.client(pgm.query("select code from a"))
    column = Column("code", type_oid=BPCHAR, type_modifier=4 + 6)
    out = m.server(simple_result([column], [[b"AB12CD"]]))
    assert rows(out.data) == [[b"******"]]


def test_json_stays_valid_json() -> None:
    m = masker(
        {"rules": [{"name": "r", "columns": ["doc"], "detectors": ["email", "credit_card"]}]}
    )
    m.client(pgm.query("select doc, other, num from a"))
    columns = [
        Column("doc", type_oid=JSONB),
        Column("other", type_oid=114),
        Column("num", type_oid=JSONB),
    ]
    values = [
        b'{"a": 1}',
        b'{"to": "x@y.com", "n": [1, 2]}',
        b'{"card": 4111111111111111, "z": 1.50}',
    ]
    out = m.server(simple_result(columns, [values]))
    (row,) = rows(out.data)
    assert row[0] == b'"****"'
    assert json.loads(row[1] or b"") == {"to": "***@y.com", "n": [1, 2]}
    assert row[2] == b'{"card": "**** **** **** 1111", "z": 1.50}'


def test_json_escapes_cannot_hide_a_finding() -> None:
    m = masker(DETECTORS_ONLY)
    m.client(pgm.query("select doc from a"))
    out = m.server(
        simple_result([Column("doc", type_oid=114)], [[b'{"to": "ann\\u0040example.com"}']])
    )
    (row,) = rows(out.data)
    assert json.loads(row[0] or b"") == {"to": "***@example.com"}


def test_json_too_deep_to_walk_becomes_null() -> None:
    m = masker(DETECTORS_ONLY)
    m.client(pgm.query("select doc from a"))
    deep = b"[" * 5000 + b'"a\\u0040b.co"' + b"]" * 5000
    out = m.server(simple_result([Column("doc", type_oid=JSONB)], [[deep], [b"[1]"]]))
    assert rows(out.data) == [[None], [b"[1]"]]


def test_other_types_with_a_finding_become_null() -> None:
    m = masker()
    m.client(pgm.query("select tags, blob, id from a"))
    columns = [
        Column("tags", type_oid=TEXT_ARRAY),
        Column("blob", type_oid=BYTEA),
        Column("id", type_oid=UUID),
    ]
    values = [
        b"{ann@example.com,x}",
        b"\\x" + b"bob@example.com".hex().encode(),
        b"ann@example.com",
    ]
    out = m.server(simple_result(columns, [values, [b"{a,b}", b"\\x00", b"x"]]))
    assert rows(out.data) == [[None, None, b"ann@example.com"], [b"{a,b}", b"\\x00", b"x"]]


def test_card_numbers_in_numeric_columns_become_null() -> None:
    m = masker()
    m.client(pgm.query("select a, b, c from t"))
    columns = [Column("a", type_oid=INT8), Column("b", type_oid=1700), Column("c", type_oid=INT8)]
    out = m.server(simple_result(columns, [[b"4111111111111111", b"4111111111111111.00", b"1234"]]))
    assert rows(out.data) == [[None, None, b"1234"]]


def test_a_row_without_a_description_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    m = masker()
    with caplog.at_level(logging.WARNING):
        out = m.server(
            pgm.data_row([b"1", b"secret@example.com"]) + pgm.command_complete("SELECT 1")
        )
    assert rows(out.data) == [[None, None]]
    assert check_marks(out)[0].masked
    assert "no description" in caplog.text
    assert "secret@example.com" not in caplog.text


# ---- binary formats and the extended protocol --------------------------------------------------


def test_binary_int_column_is_masked_to_null_and_binary_text_stays_utf8() -> None:
    m = masker()
    m.client(
        parse("", "select ...") + bind("", "", [1]) + describe("P", "") + execute("") + pgm.sync()
    )
    columns = [
        Column("ssn", type_oid=INT4, format_code=1),
        Column("email", format_code=1),
        Column("note", format_code=1),
    ]
    data = PARSE_COMPLETE + BIND_COMPLETE + pgm.row_description(columns)
    data += pgm.data_row(
        [int4(123456789), "zoë@example.com".encode(), "née zoë@exämple.de".encode()]
    )
    data += pgm.command_complete("SELECT 1") + READY
    out = m.server(data)
    (row,) = rows(out.data)
    assert row[0] is None
    assert row[1] == b"****"
    assert (row[2] or b"").decode("utf-8") == "née ***@exämple.de"
    assert [mk.masked for mk in check_marks(out)] == [True, False]


def test_describe_statement_then_bind_with_binary_formats_uses_the_bind_formats() -> None:
    """Describe('S') reports format 0 for every column; the Bind decides the real formats."""
    m = masker()
    m.client(parse("s1", "select card, note from t") + describe("S", "s1") + pgm.sync())
    columns = [Column("card", type_oid=INT8), Column("note")]  # format_code 0, as Describe says
    out = m.server(PARSE_COMPLETE + parameter_description() + pgm.row_description(columns) + READY)
    assert check_marks(out)[-1].kind == Mark.READY

    m.client(bind("p1", "s1", [1]) + execute("p1") + pgm.sync())
    card = struct.pack("!q", 4111111111111111)
    data = (
        BIND_COMPLETE
        + pgm.data_row([card, b"to a@b.co"])
        + pgm.data_row([struct.pack("!q", 7), b"x"])
    )
    out = m.server(data + pgm.command_complete("SELECT 2") + READY)
    assert rows(out.data) == [[None, b"to ***@b.co"], [struct.pack("!q", 7), b"x"]]
    assert check_marks(out)[0].masked


def test_a_prepared_statement_executed_again_without_describe() -> None:
    m = masker()
    m.client(parse("s", "select email from t") + describe("S", "s") + pgm.sync())
    m.server(
        PARSE_COMPLETE + parameter_description() + pgm.row_description([Column("email")]) + READY
    )
    for _ in range(2):
        m.client(bind("", "s") + execute("") + pgm.sync())
        out = m.server(
            BIND_COMPLETE + pgm.data_row([b"a@b.co"]) + pgm.command_complete("SELECT 1") + READY
        )
        assert rows(out.data) == [[b"****"]]


@pytest.mark.parametrize(("text", "masked"), [("select email from t", b"****"), ("x", None)])
def test_a_statement_closed_and_parsed_again_keeps_its_description_if_its_text_is_the_same(
    text: str, masked: bytes | None
) -> None:
    """The control plane sends Close and Parse of the text it recorded before a Bind of a
    statement that code may have prepared again; the client described it once, before."""
    m = masker()
    m.client(parse("s", "select email from t") + describe("S", "s") + pgm.sync())
    m.server(
        PARSE_COMPLETE + parameter_description() + pgm.row_description([Column("email")]) + READY
    )
    m.client(_msg(b"C", b"Ss\0") + parse("s", text) + bind("", "s") + execute("") + pgm.sync())
    out = m.server(
        b"3\0\0\0\x04" + PARSE_COMPLETE + BIND_COMPLETE + pgm.data_row([b"a@b.co"])
        + pgm.command_complete("SELECT 1") + READY
    )  # fmt: skip
    assert rows(out.data) == [[masked]]  # another text: no description, fails closed


def test_a_pipeline_with_an_error_skips_to_the_sync() -> None:
    m = masker()
    m.client(
        parse("", "select email") + bind("", "") + describe("P", "") + execute("")
        + parse("", "select nope") + bind("", "") + describe("P", "") + execute("")
        + pgm.sync()
        + parse("", "select note") + bind("", "") + describe("P", "") + execute("") + pgm.sync()
    )  # fmt: skip
    data = PARSE_COMPLETE + BIND_COMPLETE + pgm.row_description([Column("email")])
    data += pgm.data_row([b"a@b.co"]) + pgm.command_complete("SELECT 1")
    data += pgm.error_response(sqlstate="42703", message='column "nope" does not exist') + READY
    data += PARSE_COMPLETE + BIND_COMPLETE + pgm.row_description([Column("note")])
    data += pgm.data_row([b"ok"]) + pgm.command_complete("SELECT 1") + READY
    out = m.server(data)
    assert rows(out.data) == [[b"****"], [b"ok"]]
    marks = check_marks(out)
    assert [(mk.kind, mk.masked) for mk in marks] == [
        (Mark.COMPLETE, True),
        (Mark.ERROR, False),
        (Mark.READY, False),
        (Mark.COMPLETE, False),
        (Mark.READY, False),
    ]


def test_portal_suspended_and_resumed() -> None:
    m = masker()
    m.client(
        parse("", "q")
        + bind("c", "")
        + describe("P", "c")
        + execute("c", 1)
        + execute("c", 1)
        + pgm.sync()
    )
    data = PARSE_COMPLETE + BIND_COMPLETE + pgm.row_description([Column("email")])
    data += pgm.data_row([b"a@b.co"]) + b"s\x00\x00\x00\x04"
    data += pgm.data_row([b"c@d.co"]) + pgm.command_complete("SELECT 1") + READY
    out = m.server(data)
    assert rows(out.data) == [[b"****"], [b"****"]]
    assert [mk.masked for mk in check_marks(out)] == [True, True, False]


def test_no_data_statements_pass() -> None:
    m = masker()
    m.client(parse("", "insert") + bind("", "") + describe("P", "") + execute("") + pgm.sync())
    data = PARSE_COMPLETE + BIND_COMPLETE + NO_DATA + pgm.command_complete("INSERT 0 1") + READY
    out = m.server(data)
    assert out.data is data


def test_an_unknown_portal_fails_closed() -> None:
    m = masker()
    m.client(execute("nowhere") + pgm.sync())
    out = m.server(pgm.data_row([b"x"]) + pgm.command_complete("SELECT 1") + READY)
    assert rows(out.data) == [[None]]


def test_a_statement_prepared_in_sql_is_described_and_bound_without_a_parse() -> None:
    m = masker()
    m.client(pgm.query("prepare q as select email from t"))
    m.server(pgm.command_complete("PREPARE") + READY)
    m.client(describe("S", "q") + pgm.sync())
    m.server(parameter_description() + pgm.row_description([Column("email")]) + READY)
    m.client(bind("", "q") + execute("") + pgm.sync())
    out = m.server(
        BIND_COMPLETE + pgm.data_row([b"a@b.co"]) + pgm.command_complete("SELECT 1") + READY
    )
    assert rows(out.data) == [[b"****"]]


def test_after_deallocate_an_undescribed_statement_fails_closed() -> None:
    m = masker()
    m.client(parse("s", "select note from t") + describe("S", "s") + pgm.sync())
    m.server(
        PARSE_COMPLETE + parameter_description() + pgm.row_description([Column("note")]) + READY
    )
    m.client(pgm.query("deallocate s; prepare s as select email as note from t"))
    m.server(pgm.command_complete("DEALLOCATE") + pgm.command_complete("PREPARE") + READY)
    m.client(bind("", "s") + execute("") + pgm.sync())
    out = m.server(
        BIND_COMPLETE + pgm.data_row([b"a@b.co"]) + pgm.command_complete("SELECT 1") + READY
    )
    assert rows(out.data) == [[None]]


# ---- split reads and offsets -------------------------------------------------------------------


def splits(data: bytes, points: Sequence[int]) -> Iterator[bytes]:
    start = 0
    for point in sorted(points):
        yield data[start:point]
        start = point
    yield data[start:]


def test_a_row_split_across_reads_is_masked_at_every_split_point() -> None:
    data = simple_result(PEOPLE, [[b"1", b"ann@example.com", b"1", b"mail bob@example.com"]] * 2)
    expected = masker()
    expected.client(pgm.query("q"))
    whole = expected.server(data).data
    for point in range(1, len(data)):
        m = masker()
        m.client(pgm.query("q"))
        outs = [m.server(chunk) for chunk in splits(data, [point])]
        assert b"".join(o.data for o in outs) == whole, point
        assert [mk.masked for mk in check_marks(*outs)] == [True, False]


def test_an_untouched_result_streams_even_when_a_read_ends_mid_row() -> None:
    m = masker()
    m.client(pgm.query("q"))
    data = simple_result([Column("id", type_oid=INT4)], [[b"1"], [b"22"], [b"333"]])
    for chunk in splits(data, [3, 20, 31, 32, 40]):
        assert m.server(chunk).data is chunk


def test_a_masked_row_is_held_until_it_is_complete() -> None:
    m = masker()
    m.client(pgm.query("q"))
    head = pgm.row_description([Column("email")])
    row = pgm.data_row([b"ann@example.com"])
    first = m.server(head + row[:7])
    assert first.data == head
    second = m.server(row[7:] + pgm.command_complete("SELECT 1"))
    assert rows(second.data) == [[b"****"]]
    assert check_marks(second)[0].masked


def test_a_message_the_login_forwarded_in_part_is_not_forwarded_again() -> None:
    status = pgm.parameter_status("application_name", "x" * 50)
    framer = framing.MessageFramer()
    assert framer.feed(status[:20]) == []  # the login's last read ended inside this message
    policy = MaskingPolicy.from_spec(PII)
    assert policy is not None
    m = ResultMasker(policy, framer)
    rest = status[20:] + READY
    out = m.server(rest)
    assert out.data is rest
    assert [mk.kind for mk in relay.masked_marks(out)] == [Mark.READY]


def test_marks_point_past_their_messages_in_rewritten_data() -> None:
    m = masker()
    m.client(pgm.query("a; b"))
    data = simple_result([Column("email")], [[b"x" * 100 + b"@example.com"]] * 3)
    out = m.server(data)
    assert len(out.data) < len(data)
    marks = check_marks(out)
    assert marks[-1].end == len(out.data)


def test_large_output_goes_out_in_frames_with_their_own_marks() -> None:
    m = masker()
    m.client(pgm.query("q"))
    data = simple_result([Column("note")], [[b"x" * 3000 + b" a@b.co"]] * 5)
    out = m.server(data)
    frames = relay.masked_frames(out, limit=1000)
    assert b"".join(f.data for f in frames) == out.data
    assert all(0 < len(f.data) <= 1000 for f in frames)
    offset, ends = 0, []
    for f in frames:
        assert all(0 < mk.end <= len(f.data) for mk in f.marks)
        ends += [offset + mk.end for mk in f.marks]
        offset += len(f.data)
    assert ends == [mk.end for mk in relay.masked_marks(out)]
    assert next(m.masked for f in frames for m in f.marks if m.kind == Mark.COMPLETE)


# ---- COPY, notices, notifications, errors ------------------------------------------------------


def test_copy_rows_go_through_the_detectors() -> None:
    m = masker(DETECTORS_ONLY)
    m.client(pgm.query("copy t to stdout"))
    data = copy_out_response(0, [0, 0]) + copy_data(b"1\tann@example.com\n") + copy_data(b"2\tok\n")
    data += COPY_DONE + pgm.command_complete("COPY 2") + READY
    out = m.server(data)
    copied = [bytes(msg.body) for msg in frame(out.data) if msg.tag == ord("d")]
    assert copied == [b"1\t***@example.com\n", b"2\tok\n"]
    assert check_marks(out)[0].masked


@pytest.mark.parametrize(("spec", "overall"), [(COLUMNS_ONLY, 0), (DETECTORS_ONLY, 1)])
def test_copy_out_is_refused_when_it_cannot_be_masked(
    spec: Mapping[str, object], overall: int
) -> None:
    m = masker(spec)
    m.client(pgm.query("copy t to stdout"))
    data = copy_out_response(overall, [overall]) + copy_data(b"ann@example.com\n") + COPY_DONE
    data += pgm.command_complete("COPY 1") + READY
    out = m.server(data)
    assert [chr(msg.tag) for msg in frame(out.data)] == ["H", "E", "Z"]
    assert b"ann@example.com" not in out.data
    error, _ = check_marks(out)
    assert (error.kind, error.sqlstate, error.masked) == (Mark.ERROR, "42501", True)


def test_error_details_that_quote_values_are_masked() -> None:
    m = masker()
    m.client(pgm.query("insert"))
    error = pgm.error_response(
        sqlstate="23505",
        message='duplicate key value violates unique constraint "people_email_key"',
        detail="Key (email)=(Ann@Example.com) already exists.",
    )
    out = m.server(error + READY)
    fields = pgm.parse_error_fields(frame(out.data)[0].body)
    assert fields.detail == "Key (email)=(****) already exists."
    assert check_marks(out)[0].masked


def test_failing_row_details_are_masked_for_column_rules() -> None:
    m = masker(COLUMNS_ONLY)
    m.client(pgm.query("insert"))
    error = pgm.error_response(
        sqlstate="23502", message="null value", detail="Failing row contains (1, null, secret)."
    )
    out = m.server(error + READY)
    assert pgm.parse_error_fields(frame(out.data)[0].body).detail == "Failing row contains (****)."


def test_notices_and_notifications_go_through_the_detectors() -> None:
    m = masker(DETECTORS_ONLY)
    notice = pgm.notice_response(sqlstate="00000", message="mailing ann@example.com")
    note = notification(42, "jobs", '{"password": "hunter2"}')
    out = m.server(notice + note)
    notice_out, note_out = frame(out.data)
    assert pgm.parse_error_fields(notice_out.body).message == "mailing ***@example.com"
    assert bytes(note_out.body).endswith(b'jobs\0{"password": "****"}\0')


# ---- policy ------------------------------------------------------------------------------------


def test_policy_from_spec() -> None:
    assert MaskingPolicy.from_spec(None) is None
    assert MaskingPolicy.from_spec({}) is None
    assert (
        MaskingPolicy.from_spec({"rules": [{"name": "x", "columns": [], "detectors": []}]}) is None
    )
    policy = MaskingPolicy.from_spec(
        {"rules": [{"name": "a", "columns": ["Email"]}, {"name": "b", "detectors": ["phone"]}]}
    )
    assert policy is not None
    assert policy.columns == {"email"}
    assert policy.detectors.names == ("phone",)
    with pytest.raises(MaskingError, match="iban"):
        MaskingPolicy.from_spec({"rules": [{"name": "a", "detectors": ["iban"]}]})
    with pytest.raises(MaskingError):
        MaskingPolicy.from_spec({"rules": [{"name": "a", "columns": "email"}]})


# ---- property: the output is always a valid message stream -------------------------------------

VALUES = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from([b"ann@example.com", b"4111 1111 1111 1111", b"x" * 300, b"{a@b.co}", b""]),
    st.text(max_size=30).map(str.encode),
)
TYPES = st.sampled_from([TEXT, INT4, INT8, JSONB, BYTEA, TEXT_ARRAY, UUID, BPCHAR, 1043, 9999])


@settings(max_examples=150, deadline=None)
@given(
    columns=st.lists(
        st.tuples(st.sampled_from(["email", "note", "id", "SSN"]), TYPES, st.sampled_from([0, 1])),
        min_size=1,
        max_size=6,
    ),
    data=st.data(),
)
def test_masked_output_reframes_into_the_same_messages(
    columns: list[tuple[str, int, int]], data: st.DataObject
) -> None:
    description = [Column(name, type_oid=oid, format_code=fmt) for name, oid, fmt in columns]
    values = data.draw(
        st.lists(st.lists(VALUES, min_size=len(columns), max_size=len(columns)), max_size=8)
    )
    stream = simple_result(description, values)
    points = data.draw(st.lists(st.integers(1, len(stream) - 1), max_size=4, unique=True))
    m = masker()
    m.client(pgm.query("q"))
    outs = [m.server(chunk) for chunk in splits(stream, points)]
    output = b"".join(o.data for o in outs)
    before, after = frame(stream), frame(output)
    assert [msg.tag for msg in after] == [msg.tag for msg in before]
    for row in rows(output):
        assert len(row) == len(columns)
    check_marks(*outs)


# ---- the relay, end to end against a scripted target -------------------------------------------


async def test_relay_masks_and_marks_through_a_scripted_target() -> None:
    async def target(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!i", await reader.readexactly(4))
        await reader.readexactly(length - 4)  # the startup message
        writer.write(pgm.authentication_ok() + pgm.parameter_status("server_version", "17") + READY)
        header = await reader.readexactly(5)
        await reader.readexactly(struct.unpack("!i", header[1:])[0] - 4)  # the query
        result = simple_result(PEOPLE, [[b"1", b"ann@example.com", b"42", b"hi bob@example.com"]])
        writer.write(result)
        await writer.drain()
        assert (await reader.readexactly(5))[:1] == b"X"  # Terminate
        writer.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
    frames: list[tunnel_pb2.Frame] = []

    async def send(frame_: tunnel_pb2.Frame) -> None:
        frames.append(frame_)
        if frame_.data.endswith(READY) and len(frames) > 1:
            await inbound.put(pgm.terminate())
            await inbound.put(None)

    await inbound.put(pgm.startup_message({"user": "x", "database": "y"}))
    await inbound.put(pgm.query("select * from people"))
    spec = {
        "host": "127.0.0.1",
        "port": port,
        "database": "app",
        "user": "app",
        "sslmode": "disable",
    }
    async with server:
        reason = await asyncio.wait_for(relay.run(spec, {}, inbound.get, send, masking=PII), 10)
    assert "client" in reason
    result = b"".join(f.data for f in frames[1:])
    assert rows(result) == [[b"1", b"****", None, b"hi ***@example.com"]]
    marks = [mk for f in frames[1:] for mk in f.marks if mk.kind != Mark.DESCRIBED]
    assert [(mk.kind, mk.masked) for mk in marks] == [(Mark.COMPLETE, True), (Mark.READY, False)]
    assert b"example.com" in result and b"ann@" not in result and b"bob@" not in result


async def test_relay_refuses_rules_it_cannot_apply() -> None:
    inbound: asyncio.Queue[bytes | None] = asyncio.Queue()
    await inbound.put(pgm.startup_message({"user": "x"}))
    frames: list[tunnel_pb2.Frame] = []

    async def send(frame_: tunnel_pb2.Frame) -> None:
        frames.append(frame_)

    masking = {"rules": [{"name": "r", "detectors": ["iban"]}]}
    reason = await relay.run({"host": "127.0.0.1"}, {}, inbound.get, send, masking=masking)
    assert "masking" in reason
    assert frames[0].marks[0].kind == Mark.ERROR
