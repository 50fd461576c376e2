"""The agent marks what the control plane needs to know the names the target holds and the
settings it reads text with, and nothing else (decision 0010)."""

from agent.pg import relay
from gatehouse.v1.tunnel_pb2 import ResultMark as Mark
from wire.pg import framing
from wire.pg import messages as pgm


def marks(data: bytes) -> list[tuple[int, int, str, str]]:
    framed = framing.MessageFramer().feed(data)
    return [(m.kind, m.end, m.name, m.value) for m in relay.result_marks(framed)]


def test_name_answers_describe_ends_and_lexical_settings_are_marked() -> None:
    parts = [
        b"1\0\0\0\4",  # ParseComplete
        b"2\0\0\0\4",  # BindComplete
        b"3\0\0\0\4",  # CloseComplete
        b"t\0\0\0\6\0\0",  # ParameterDescription: not marked
        b"n\0\0\0\4",  # NoData
        pgm.row_description([pgm.Column("a")]),
        pgm.parameter_status("client_encoding", "GBK"),
        pgm.parameter_status("application_name", "x"),  # not lexical: not marked
        pgm.parameter_status("standard_conforming_strings", "off"),
    ]
    ends, at = [], 0
    for part in parts:
        at += len(part)
        ends.append(at)
    got = marks(b"".join(parts))
    assert got == [
        (Mark.PARSE_COMPLETE, ends[0], "", ""),
        (Mark.BIND_COMPLETE, ends[1], "", ""),
        (Mark.CLOSE_COMPLETE, ends[2], "", ""),
        (Mark.DESCRIBED, ends[4], "", ""),
        (Mark.DESCRIBED, ends[5], "", ""),
        (Mark.PARAMETER, ends[6], "client_encoding", "GBK"),
        (Mark.PARAMETER, ends[8], "standard_conforming_strings", "off"),
    ]


def test_data_rows_and_notices_are_not_marked() -> None:
    data = pgm.data_row([b"1"]) + pgm.notice_response(sqlstate="01000", message="hi")
    assert marks(data) == []


def test_copy_in_response_is_marked() -> None:
    """In copy-in mode the target ignores Sync and Flush: the control plane must know when."""
    copy_in = b"G\0\0\0\7\0\0\0"  # CopyInResponse: text format, no columns
    assert marks(copy_in) == [(Mark.COPY_IN, len(copy_in), "", "")]


def test_copy_in_response_is_marked_through_the_masker() -> None:
    from tests.unit.agent.test_masking import masker

    copy_in = b"G\0\0\0\7\0\0\0"
    out = masker().server(copy_in)
    assert [(m.kind, m.end) for m in relay.masked_marks(out)] == [(Mark.COPY_IN, len(copy_in))]
