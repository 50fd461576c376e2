"""Terminal recordings: valid asciicast v2 with a digest, and typed lines kept only if echoed."""

import hashlib
import json
import time

import pytest

from controlplane.relay.term import recording as rec
from controlplane.relay.term.recording import LineTracker, Recording


async def test_recording_is_asciicast_v2_with_a_digest_over_its_stored_pieces(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(rec, "CHUNK_BYTES", 64)
    stored: dict[int, bytes] = {}

    async def store(index: int, data: bytes) -> None:
        stored[index] = data

    cast = Recording(store, width=100, height=30, term="xterm", title="web-1: login shell")
    await cast.output(b"$ ")
    await cast.input(b"ls\r")
    await cast.output("caf\u00e9".encode()[:4])  # a character split between two chunks
    await cast.output("caf\u00e9".encode()[4:] + b"\r\n")
    await cast.resize(120, 40)
    summary = await cast.close()
    data = b"".join(stored[i] for i in sorted(stored))
    assert len(stored) > 1
    assert summary.sha256 == hashlib.sha256(data).hexdigest()
    assert summary.size == len(data)
    lines = data.decode().splitlines()
    header = json.loads(lines[0])
    assert header["version"] == 2 and header["width"] == 100 and header["height"] == 30
    events = [json.loads(line) for line in lines[1:]]
    assert [e[1] for e in events] == ["o", "i", "o", "o", "r"]
    assert "".join(e[2] for e in events if e[1] == "o") == "$ caf\u00e9\r\n"
    assert events[-1][2] == "120x40"
    times = [e[0] for e in events]
    assert times == sorted(times)
    assert summary.events == len(events)


def test_an_echoed_line_is_kept() -> None:
    lines = LineTracker()
    lines.typed(b"echo hi\r")  # sent at once, as a script or a paste does
    assert lines.decided() == []  # its echo has not come back yet
    lines.printed(b"echo hi\r\nhi\r\n$ ")
    assert lines.decided() == [("echo hi", b"echo hi\r")]


def test_a_line_typed_without_echo_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = LineTracker()
    lines.printed(b"[sudo] password for deploy: ")
    lines.typed(b"hunter2\r")
    lines.printed(b"\r\n")
    assert lines.decided() == []
    later = time.monotonic() + rec.ECHO_WAIT + 0.1
    monkeypatch.setattr(rec.time, "monotonic", lambda: later)
    assert lines.decided() == [(None, b"")]


def test_editing_keys_are_applied_and_tab_completion_still_counts_as_echo() -> None:
    lines = LineTracker()
    lines.typed(b"lsx\x7f -l /et\t\r")
    lines.printed(b"lsx\x08 \x08 -l /etc/\r\n")
    assert lines.decided() == [("ls -l /et\t", b"lsx\x7f -l /et\t\r")]


def test_cursor_keys_and_ctrl_c_do_not_make_lines() -> None:
    lines = LineTracker()
    lines.typed(b"\x1b[Asleep 30\x03")
    lines.printed(b"sleep 30^C\r\n")
    assert lines.decided(final=True) == []


def test_at_the_end_a_waiting_line_is_decided() -> None:
    lines = LineTracker()
    lines.typed(b"secret\r")
    assert lines.decided(final=True) == [(None, b"")]


# ---- echo is what the terminal prints right after the keys ----------------------------------


def test_output_that_contains_the_text_later_is_no_echo() -> None:
    lines = LineTracker()
    lines.printed(b"Password: ")
    lines.typed(b"hunter2\r")  # echo off: nothing comes back but the newline
    lines.printed(b"\r\n")
    lines.printed(b"Sorry, hunter2 is wrong\r\n")  # the text, but not right after the keys
    assert lines.decided() == [(None, b"")]


def test_output_before_the_echo_hides_the_line() -> None:
    lines = LineTracker()
    lines.typed(b"rm -rf /srv/x\r")
    lines.printed(b"job done\r\nrm -rf /srv/x\r\n")  # other output came first
    assert lines.decided() == [(None, b"")]


def test_an_echo_after_the_wait_hides_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = LineTracker()
    lines.typed(b"secret\r")
    later = time.monotonic() + rec.ECHO_WAIT + 0.1
    monkeypatch.setattr(rec.time, "monotonic", lambda: later)
    lines.printed(b"secret\r\n")
    assert lines.decided() == [(None, b"")]


def test_keys_echoed_one_by_one_across_chunks_and_escapes() -> None:
    lines = LineTracker()
    for key, echo in [(b"l", b"\x1b[32"), (b"", b"ml"), (b"s", b"s\x1b[0m"), (b"\r", b"\r\n")]:
        if key:
            lines.typed(key)
        lines.printed(echo)
    lines.printed(b"a.txt\r\n$ ")
    assert lines.decided() == [("ls", b"ls\r")]


def test_tab_completion_inside_a_line_counts_as_echo() -> None:
    lines = LineTracker()
    lines.typed(b"cat /et\tpasswd\r")
    lines.printed(b"cat /etc/passwd\r\nroot:x:0:0\r\n")
    assert lines.decided() == [("cat /et\tpasswd", b"cat /et\tpasswd\r")]


def test_a_tab_does_not_let_other_lines_count_as_echo() -> None:
    lines = LineTracker()
    lines.typed(b"\tsecret\r")
    lines.printed(b"\r\nlisting\r\nsecret\r\n")  # a newline is no completion
    assert lines.decided() == [(None, b"")]


def test_an_echoed_line_after_a_hidden_one_is_still_kept() -> None:
    lines = LineTracker()
    lines.typed(b"hunter2\r")
    lines.printed(b"\r\nwelcome\r\n$ ")
    lines.typed(b"id\r")
    lines.printed(b"id\r\nuid=0(root)\r\n")
    assert lines.decided() == [(None, b""), ("id", b"id\r")]
