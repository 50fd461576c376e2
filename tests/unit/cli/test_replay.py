"""Replay without a control plane: the player's timing, the recording's digest check, and a
database session printed from its events."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from cli import replay
from cli.errors import CliError

EVENTS = [
    (0.5, "o", "a"),
    (1.0, "i", "x"),
    (1.5, "o", "b"),
    (61.5, "o", "c"),
    (61.75, "r", "80x24"),
]


def test_output_plays_at_its_recorded_times() -> None:
    assert list(replay.schedule(EVENTS, 1.0, None)) == [(0.5, "a"), (1.5, "b"), (61.5, "c")]


def test_speed_divides_every_gap() -> None:
    assert list(replay.schedule(EVENTS, 2.0, None)) == [(0.25, "a"), (0.75, "b"), (30.75, "c")]


def test_idle_gaps_are_cut_before_the_speed_applies() -> None:
    timed = list(replay.schedule(EVENTS, 2.0, 2.0))
    assert timed == [(0.25, "a"), (0.75, "b"), (1.75, "c")]


def test_instant_is_infinite_speed() -> None:
    assert [t for t, _ in replay.schedule(EVENTS, math.inf, None)] == [0.0, 0.0, 0.0]


def test_out_of_order_times_never_go_backwards() -> None:
    timed = list(replay.schedule([(2.0, "o", "a"), (1.0, "o", "b"), (3.0, "o", "c")], 1, None))
    assert timed == [(2.0, "a"), (2.0, "b"), (3.0, "c")]


def test_idle_cap_prefers_the_flag_then_the_header_then_the_default() -> None:
    plain = replay.Header(80, 24, None)
    own = replay.Header(80, 24, 0.5)
    assert replay.idle_cap(None, plain) == replay.DEFAULT_IDLE_LIMIT
    assert replay.idle_cap(None, own) == 0.5
    assert replay.idle_cap(5.0, own) == 5.0
    assert replay.idle_cap(0.0, own) is None, "0 keeps every pause"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))
        self.now += seconds


def test_play_sleeps_until_each_time_and_writes_the_text() -> None:
    clock = FakeClock()
    out = io.BytesIO()
    replay.play([(0.5, "a"), (0.5, "é"), (2.0, "c")], out, sleep=clock.sleep, now=lambda: clock.now)
    assert clock.slept == [0.5, 1.5]
    assert out.getvalue() == "aéc".encode()


def test_play_does_not_add_up_slow_writes() -> None:
    clock = FakeClock()

    class Slow(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            clock.now += 0.3
            return super().write(data)

    replay.play(
        [(0.0, "a"), (0.5, "b"), (1.0, "c")], Slow(), sleep=clock.sleep, now=lambda: clock.now
    )
    assert clock.slept == [0.2, 0.2]


def test_header_and_events_are_parsed() -> None:
    header = replay.parse_header(b'{"version": 2, "width": 120, "height": 40, "timestamp": 1}')
    assert header == replay.Header(120, 40, None)
    lines = [b'[0.1, "o", "hi\\r\\n"]\n', b"\n", b'[0.2, "r", "100x30"]\n']
    assert list(replay.parse_events(lines)) == [(0.1, "o", "hi\r\n"), (0.2, "r", "100x30")]


@pytest.mark.parametrize("line", [b"not json", b'{"version": 1}', b"[1, 2]"])
def test_a_recording_that_is_not_asciicast_v2_is_refused(line: bytes) -> None:
    with pytest.raises(CliError, match="asciicast"):
        replay.parse_header(line)


def test_a_broken_event_line_is_named() -> None:
    with pytest.raises(CliError, match="line 3"):
        list(replay.parse_events([b'[0.1, "o", "a"]', b'{"nope": 1}']))


@dataclass
class Chunk:
    data: bytes
    sha256: str = ""
    size: int = 0
    event_seq: int = 0


def recording(text: bytes, pieces: int = 3) -> list[Chunk]:
    step = max(1, len(text) // pieces)
    chunks = [Chunk(text[i : i + step]) for i in range(0, len(text), step)]
    chunks[0] = Chunk(chunks[0].data, hashlib.sha256(text).hexdigest(), len(text), 42)
    return chunks


async def stream(chunks: list[Chunk]) -> AsyncIterator[Chunk]:
    for chunk in chunks:
        yield chunk


CAST = b'{"version":2,"width":80,"height":24}\n[0.5,"o","hello"]\n[1.0,"o"," world"]\n'


async def test_a_matching_recording_is_written_whole_with_progress() -> None:
    sink = io.BytesIO()
    seen: list[tuple[int, int]] = []
    fetched = await replay.fetch(stream(recording(CAST)), sink, lambda d, t: seen.append((d, t)))
    assert sink.getvalue() == CAST
    assert fetched == replay.Fetched(hashlib.sha256(CAST).hexdigest(), len(CAST), 42)
    assert seen[-1] == (len(CAST), len(CAST))


async def test_an_altered_recording_is_refused() -> None:
    chunks = recording(CAST)
    chunks[1] = Chunk(chunks[1].data.replace(b"o", b"i", 1))
    with pytest.raises(replay.RecordingMismatch, match=r"does not match the digest.*event 42"):
        await replay.fetch(stream(chunks), io.BytesIO())


async def test_a_truncated_recording_is_refused() -> None:
    with pytest.raises(replay.RecordingMismatch, match="cut short"):
        await replay.fetch(stream(recording(CAST)[:-1]), io.BytesIO())


async def test_a_recording_without_digest_or_pieces_is_refused() -> None:
    with pytest.raises(replay.RecordingMismatch, match="without its digest"):
        await replay.fetch(stream([Chunk(CAST)]), io.BytesIO())
    with pytest.raises(CliError, match="no recording"):
        await replay.fetch(stream([]), io.BytesIO())


def test_the_event_named_must_carry_the_same_digest() -> None:
    fetched = replay.Fetched("ab" * 32, 10, 7)
    vouching = {"seq": 7, "type": "ssh.result", "recording": {"sha256": "AB" * 32}}
    replay.check_vouched(fetched, [{"seq": 6}, vouching])
    replay.check_vouched(fetched, [{"seq": 6}])  # not among this session's events: no second look
    with pytest.raises(replay.RecordingMismatch, match="event 7"):
        replay.check_vouched(fetched, [{"seq": 7, "recording": {"sha256": "cd" * 32}}])


def test_a_database_session_prints_statements_and_results_in_order() -> None:
    info = {
        "id": "s-1",
        "user": "alice",
        "connection": "pg",
        "type": "postgres",
        "mode": "exec",
        "started": "2026-11-27T10:00:00Z",
    }
    events = [
        {"seq": 1, "time": "t1", "type": "session.start"},
        {"seq": 2, "time": "t2", "type": "db.query", "request": {"statement": "select 1"}},
        {
            "seq": 3,
            "time": "t3",
            "type": "db.result",
            "result": {"rows": 1, "command": "SELECT 1", "duration_ms": 0.4},
        },
        {
            "seq": 4,
            "time": "t4",
            "type": "db.query",
            "request": {"statement": "drop table t"},
            "decision": {"result": "deny"},
        },
        {
            "seq": 5,
            "time": "t5",
            "type": "db.result",
            "result": {"error": "42P01", "message": "no t"},
        },
        {"seq": 6, "time": "t6", "type": "session.end", "reason": "client closed", "statements": 2},
    ]
    out = io.StringIO()
    replay.print_events(info, events, out)
    assert out.getvalue().splitlines() == [
        "session s-1: alice on pg (postgres, exec), started 2026-11-27T10:00:00Z",
        "t2  select 1",
        "t3      → SELECT 1, 1 rows, 0.4 ms",
        "t4  drop table t  [deny]",
        "t5      → error 42P01: no t",
        "t6  client closed, 2 statements",
    ]


def test_a_command_session_prints_its_command_and_exit() -> None:
    info = {
        "id": "s",
        "user": "u",
        "connection": "web",
        "type": "ssh",
        "mode": "exec",
        "started": "t",
    }
    events = [
        {"seq": 1, "time": "t1", "type": "ssh.exec", "request": {"command": "uname -a"}},
        {
            "seq": 2,
            "time": "t2",
            "type": "ssh.result",
            "result": {"exit_code": 3, "duration_ms": 5},
        },
    ]
    out = io.StringIO()
    replay.print_events(info, events, out)
    assert out.getvalue().splitlines()[1:] == ["t1  uname -a", "t2      → exit 3, 5 ms"]
