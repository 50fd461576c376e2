"""The MySQL packet framer and encoder: split reads, 16 MiB continuation packets, sequence ids."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wire.mysql.constants import MAX_PAYLOAD
from wire.mysql.packets import PacketFramer, ProtocolError, count, encode


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=8),
    first_seq=st.integers(0, 255),
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
)
def test_any_split_of_a_stream_frames_the_same_packets(
    payloads: list[bytes], first_seq: int, cuts: list[int]
) -> None:
    stream = b"".join(encode(p, (first_seq + i) & 0xFF) for i, p in enumerate(payloads))
    framer = PacketFramer()
    got = []
    for piece in _split(stream, cuts):
        for packet in framer.feed(piece):
            assert 0 < packet.end <= len(piece)
            got.append(packet)
    assert [p.payload for p in got] == payloads
    assert [p.seq for p in got] == [(first_seq + i) & 0xFF for i in range(len(payloads))]
    assert framer.pending == 0


@settings(max_examples=12, deadline=None)
@given(
    extra=st.sampled_from([-1, 0, 1, 7, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 3]),
    seq=st.integers(0, 255),
    cut=st.integers(0, 3 * MAX_PAYLOAD),
)
def test_payloads_at_16_mib_boundaries_continue_and_wrap_sequence_ids(
    extra: int, seq: int, cut: int
) -> None:
    payload = bytes(range(256)) * ((MAX_PAYLOAD + extra) // 256) + b"x" * (
        (MAX_PAYLOAD + extra) % 256
    )
    wire = encode(payload, seq)
    pieces = count(len(payload))
    assert len(wire) == len(payload) + 4 * pieces
    # Every physical packet but the last is exactly 16 MiB - 1 bytes; ids go up and wrap.
    last = wire[-4 - len(payload) % MAX_PAYLOAD :]
    assert last[3] == (seq + pieces - 1) & 0xFF
    framer = PacketFramer()
    point = cut % (len(wire) + 1)
    packets = framer.feed(wire[:point]) + framer.feed(wire[point:])
    assert len(packets) == 1
    assert packets[0].payload == payload
    assert packets[0].seq == seq
    assert packets[0].last_seq == (seq + pieces - 1) & 0xFF
    assert packets[0].size == len(wire)


def test_an_exact_multiple_of_16_mib_ends_with_an_empty_packet() -> None:
    wire = encode(b"a" * MAX_PAYLOAD, 3)
    assert wire[-4:] == b"\x00\x00\x00\x04"


def test_a_continuation_with_the_wrong_sequence_id_is_refused() -> None:
    wire = bytearray(encode(b"a" * (MAX_PAYLOAD + 5), 0))
    wire[4 + MAX_PAYLOAD + 3] = 9  # the second physical packet should be 1
    with pytest.raises(ProtocolError, match="sequence id 9"):
        PacketFramer().feed(bytes(wire))


def test_a_packet_past_the_limit_is_refused_before_it_is_buffered() -> None:
    framer = PacketFramer(max_packet=1000)
    with pytest.raises(ProtocolError, match="limit of 1000"):
        framer.feed(encode(b"x" * 5000, 0)[:100])
