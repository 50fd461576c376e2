"""The terminal-session client against a scripted target: what it sends, in what order and
in what pieces, where output goes, and that the exit status ends it without waiting for stdin."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cli.errors import CliError
from cli.term import stream as term
from tests.unit.cli.fakes import FakeCall, Reply, opened
from wire.term import codec


class Collected:
    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.order: list[str] = []

    async def stdout(self, data: bytes) -> None:
        self.out += data
        self.order.append("O")

    async def stderr(self, data: bytes) -> None:
        self.err += data
        self.order.append("R")


def cat_then_exit(status: int) -> Reply:
    """A target that prints what it reads on stdout, says "bye" on stderr at EOF, exits."""

    def reply(message: codec.Message) -> list[bytes]:
        if message.tag == codec.INPUT:
            return [codec.encode(codec.STDOUT, message.body)]
        if message.tag == codec.EOF:
            return [codec.encode(codec.STDERR, b"bye"), codec.encode_exit(codec.Exit(status))]
        return []

    return reply


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def forever() -> AsyncIterator[bytes]:
    """A terminal nobody types into."""
    await asyncio.Event().wait()
    yield b""


async def test_start_comes_first_then_input_then_eof() -> None:
    call = FakeCall(cat_then_exit(3))
    output = Collected()
    start = codec.Start(argv=("tar", "x", "-C", "/tmp/x"))
    async with term.TermSession(opened(call)) as session:
        exit_ = await term.relay(session, start, chunks(b"abc", b"def"), output)
    assert exit_ == codec.Exit(3)
    assert call.tags() == "XIIE"
    assert codec.parse_start(call.messages[0].body) == start
    assert bytes(output.out) == b"abcdef"
    assert bytes(output.err) == b"bye"
    assert call.done, "the client says it is done writing after the exit status"


async def test_input_is_cut_into_codec_sized_pieces() -> None:
    call = FakeCall(cat_then_exit(0))
    output = Collected()
    data = os.urandom(3 * term.CHUNK + 17)
    async with term.TermSession(opened(call)) as session:
        await term.relay(session, codec.Start(argv=("cat",)), chunks(data), output)
    sizes = [len(m.body) for m in call.messages if m.tag == codec.INPUT]
    assert sizes == [term.CHUNK, term.CHUNK, term.CHUNK, 17]
    assert call.input() == data
    assert bytes(output.out) == data


async def test_a_large_upload_is_sent_in_few_large_frames() -> None:
    call = FakeCall(cat_then_exit(0))
    data = os.urandom(4 * 1024 * 1024)
    async with term.TermSession(opened(call)) as session:
        pieces = (data[i : i + 4096] for i in range(0, len(data), 4096))
        source = chunks(*pieces)
        await term.relay(session, codec.Start(argv=("cat",)), source, Collected())
    assert call.input() == data
    assert all(len(frame) <= term.FRAME_LIMIT for frame in call.frames)
    assert len(call.frames) < 1024, "queued messages are joined into one frame"


async def test_no_stdin_sends_eof_right_after_start() -> None:
    call = FakeCall(cat_then_exit(0))
    async with term.TermSession(opened(call)) as session:
        await term.relay(session, codec.Start(argv=("true",)), None, Collected())
    assert call.tags() == "XE"


async def test_exit_ends_the_session_while_stdin_is_still_open() -> None:
    def reply(message: codec.Message) -> list[bytes]:
        if message.tag == codec.START:
            return [codec.encode(codec.STDOUT, b"hi\n"), codec.encode_exit(codec.Exit(0))]
        return []

    call = FakeCall(reply)
    output = Collected()
    async with term.TermSession(opened(call)) as session:
        exit_ = await asyncio.wait_for(
            term.relay(session, codec.Start(argv=("echo", "hi")), forever(), output), 5
        )
    assert exit_.status == 0
    assert bytes(output.out) == b"hi\n"


async def test_stdout_and_stderr_keep_their_order_and_stream() -> None:
    def reply(message: codec.Message) -> list[bytes]:
        if message.tag != codec.START:
            return []
        return [
            codec.encode(codec.STDOUT, b"1")
            + codec.encode(codec.STDERR, b"2")
            + codec.encode(codec.STDOUT, b"3")
            + codec.encode_exit(codec.Exit(0))
        ]

    call = FakeCall(reply)
    output = Collected()
    async with term.TermSession(opened(call)) as session:
        await term.relay(session, codec.Start(argv=("x",)), None, output)
    assert output.order == ["O", "R", "O"]
    assert (bytes(output.out), bytes(output.err)) == (b"13", b"2")


async def test_a_message_split_across_frames_is_put_back_together() -> None:
    message = codec.encode(codec.STDOUT, b"hello world") + codec.encode_exit(codec.Exit(7))

    def reply(m: codec.Message) -> list[bytes]:
        return [message[:3], message[3:9], message[9:]] if m.tag == codec.START else []

    call = FakeCall(reply)
    output = Collected()
    async with term.TermSession(opened(call)) as session:
        exit_ = await term.relay(session, codec.Start(argv=("x",)), None, output)
    assert exit_.status == 7
    assert bytes(output.out) == b"hello world"


async def test_a_stream_that_ends_without_exit_status_is_an_error() -> None:
    call = FakeCall(lambda m: [])
    async with term.TermSession(opened(call)) as session:
        call.end()
        with pytest.raises(CliError, match="before the command's exit status"):
            await term.relay(session, codec.Start(argv=("x",)), None, Collected())


async def test_a_malformed_target_message_is_an_error() -> None:
    call = FakeCall(lambda m: [b"Z\x00\x00\x00\x00"] if m.tag == codec.START else [])
    async with term.TermSession(opened(call)) as session:
        with pytest.raises(CliError, match="malformed"):
            await term.relay(session, codec.Start(argv=("x",)), None, Collected())


async def test_window_and_known_signals_are_sent_unknown_ones_dropped() -> None:
    call = FakeCall()
    async with term.TermSession(opened(call)) as session:
        session.window(120, 40)
        session.signal("INT")
        session.signal("STOP")  # not carried by the codec
        await asyncio.sleep(0.01)
    assert call.tags() == "WS"
    assert codec.parse_window(call.messages[0].body) == (120, 40)
    assert bytes(call.messages[1].body) == b"INT"


async def test_a_closed_session_stops_the_input_pump_quietly() -> None:
    call = FakeCall()
    session = term.TermSession(opened(call))
    async with session:
        pass
    with pytest.raises(term.SessionClosed):
        session.eof()
    await term.pump_input(session, chunks(b"late"))  # no exception


def test_exit_status_reports_the_gateways_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert term.exit_status(codec.Exit(0)) == 0
    assert term.exit_status(codec.Exit(130, signal="INT")) == 130
    assert term.exit_status(codec.Exit(0, error="denied by guardrail no-rm")) == 1
    assert term.exit_status(codec.Exit(255, error="target unreachable")) == 255
    assert capsys.readouterr().err.splitlines() == [
        "error: denied by guardrail no-rm",
        "error: target unreachable",
    ]


def test_a_reason_already_printed_on_stderr_is_not_repeated(
    capsys: pytest.CaptureFixture[str],
) -> None:
    refused = codec.Exit(126, error="denied by guardrail no-rm")
    assert term.exit_status(refused, said=b"...\ndenied by guardrail no-rm\n") == 126
    assert capsys.readouterr().err == ""


async def test_std_streams_remember_the_end_of_stderr() -> None:
    streams = term.StdStreams()
    await streams.stderr(b"x" * term.SAID_TAIL + b"last words\n")
    assert streams.said.endswith(b"last words\n")
    assert len(streams.said) == term.SAID_TAIL


async def test_read_fd_streams_a_pipe_as_data_arrives() -> None:
    read_end, write_end = os.pipe()
    received: list[bytes] = []

    async def consume() -> None:
        async for data in term.read_fd(read_end):
            received.append(data)

    task = asyncio.create_task(consume())
    try:
        os.write(write_end, b"first")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"first"], "data is passed on before the writer closes"
        os.write(write_end, b"second")
        os.close(write_end)
        await asyncio.wait_for(task, 5)
    finally:
        os.close(read_end)
    assert b"".join(received) == b"firstsecond"


async def test_read_fd_reads_a_regular_file_to_its_end(tmp_path: Path) -> None:
    path = tmp_path / "input"
    data = os.urandom(200_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = [piece async for piece in term.read_fd(fd)]
    finally:
        os.close(fd)
    assert b"".join(pieces) == data
    assert all(len(piece) <= term.CHUNK for piece in pieces)


async def test_read_fd_of_dev_null_is_empty() -> None:
    fd = os.open(os.devnull, os.O_RDONLY)
    try:
        assert [piece async for piece in term.read_fd(fd)] == []
    finally:
        os.close(fd)
