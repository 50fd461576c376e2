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


def test_statement_ends_and_ready_are_marked_with_their_outcome() -> None:
    parts = [
        pgm.command_complete("SELECT 1"),
        pgm.command_complete("INSERT 0 3"),
        pgm.command_complete("BEGIN"),
        pgm.command_complete("SELECT 1"),  # the remembered reading gives the same
        b"I\0\0\0\4",  # EmptyQueryResponse
        b"s\0\0\0\4",  # PortalSuspended
        pgm.error_response(severity="ERROR", sqlstate="42P01", message="no such table"),
        pgm.ready_for_query("T"),
        pgm.ready_for_query("E"),
    ]
    data = b"".join(parts)
    framed = framing.MessageFramer().feed(data)
    got = [
        (m.kind, m.end, m.command, m.rows, m.sqlstate, m.message, m.tx_status)
        for m in relay.result_marks(framed, shift=10)
    ]
    ends, at = [], 10
    for part in parts:
        at += len(part)
        ends.append(at)
    assert got == [
        (Mark.COMPLETE, ends[0], "SELECT", 1, "", "", ""),
        (Mark.COMPLETE, ends[1], "INSERT", 3, "", "", ""),
        (Mark.COMPLETE, ends[2], "BEGIN", -1, "", "", ""),
        (Mark.COMPLETE, ends[3], "SELECT", 1, "", "", ""),
        (Mark.COMPLETE, ends[4], "EMPTY", -1, "", "", ""),
        (Mark.COMPLETE, ends[5], "SUSPENDED", -1, "", "", ""),
        (Mark.ERROR, ends[6], "", 0, "42P01", "no such table", ""),
        (Mark.READY, ends[7], "", 0, "", "", "T"),
        (Mark.READY, ends[8], "", 0, "", "", "E"),
    ]
    # The relay's frame carries the same marks, made in the frame itself.
    frame = relay.marked_frame(data, framing.MessageFramer().feed(data))
    assert frame.data == data
    assert list(frame.marks) == relay.result_marks(framing.MessageFramer().feed(data))


def test_a_malformed_ready_or_command_tag_is_still_refused() -> None:
    import pytest

    for bad in (b"Z\0\0\0\5X", b"Z\0\0\0\6II", b"C\0\0\0\6AB"):
        with pytest.raises(framing.ProtocolError):
            relay.result_marks(framing.MessageFramer().feed(bad))
