"""Length-prefixed frames of the session leg (wire/frames.py): split and merged reads, the
maximum, a stream cut inside a frame."""

from __future__ import annotations

import asyncio

import pytest

from wire.frames import HEADER, FrameError, FrameReader, encode


def fed(*chunks: bytes, eof: bool = True) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    for chunk in chunks:
        reader.feed_data(chunk)
    if eof:
        reader.feed_eof()
    return reader


async def test_frames_split_across_reads_byte_by_byte_come_out_whole() -> None:
    wire = encode(b"hello") + encode(b"") + encode(b"x" * 1000)
    reader = asyncio.StreamReader()
    frames = FrameReader(reader)
    got: list[bytes] = []

    async def read_all() -> None:
        while (frame := await frames.next()) is not None:
            got.append(frame)

    reading = asyncio.create_task(read_all())
    for index in range(len(wire)):
        reader.feed_data(wire[index : index + 1])
        await asyncio.sleep(0)
    reader.feed_eof()
    await asyncio.wait_for(reading, 1)
    assert got == [b"hello", b"", b"x" * 1000]


async def test_several_frames_in_one_read_are_all_returned() -> None:
    frames = FrameReader(fed(b"".join(encode(bytes([n]) * n) for n in range(1, 50))))
    for n in range(1, 50):
        assert await frames.next() == bytes([n]) * n
    assert await frames.next() is None


async def test_a_frame_over_the_maximum_is_refused_before_its_body_is_read() -> None:
    frames = FrameReader(fed(HEADER.pack(1025), eof=False), limit=1024)
    with pytest.raises(FrameError, match="1025 bytes is over the maximum of 1024"):
        await asyncio.wait_for(frames.next(), 1)


async def test_garbage_reads_as_an_impossible_length() -> None:
    frames = FrameReader(fed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    with pytest.raises(FrameError, match="over the maximum"):
        await frames.next()


@pytest.mark.parametrize("cut", [2, HEADER.size + 3])
async def test_a_stream_that_ends_inside_a_frame_is_an_error_not_an_end(cut: int) -> None:
    frames = FrameReader(fed(encode(b"0123456789")[:cut]))
    with pytest.raises(FrameError, match="ended inside a frame"):
        await frames.next()
