"""`gatehouse sessions replay ID`: a session played back as it happened.

A session with a terminal has an asciicast v2 recording (a JSON header line, then
``[seconds, "o" | "i" | "r", text]`` lines). It is fetched in pieces, its SHA-256 checked
against the digest the audit chain carries (the first piece says which, and its result event
must name the same digest), and only then written out (``--output``) or played: output events
to stdout at their recorded pace, divided by ``--speed``, with idle gaps cut to
``--idle-limit`` seconds (2 by default, as asciinema's players do, so a replay does not show
minutes of nothing; 0 keeps them). A database session has no recording: its statements and
results are printed from the trail, in order.

The recording is spooled to a temporary file while it is checked, never held in memory: a
long session can be hundreds of megabytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, NamedTuple

from cli.errors import USAGE, CliError
from cli.output import echo
from cli.rpc import call

DEFAULT_IDLE_LIMIT = 2.0
"""Longest pause played, in recorded seconds, unless --idle-limit or the header says."""


class Header(NamedTuple):
    width: int
    height: int
    idle_time_limit: float | None


class Fetched(NamedTuple):
    """A recording that matched its digest."""

    sha256: str
    size: int
    event_seq: int


class RecordingMismatch(CliError):
    """The recording is not the one the audit trail vouches for."""


def parse_header(line: bytes | str) -> Header:
    try:
        document = json.loads(line)
    except ValueError as exc:
        raise CliError(f"the recording does not start with an asciicast header: {exc}") from None
    if not isinstance(document, dict) or document.get("version") != 2:
        raise CliError("the recording is not asciicast v2 (its header has no version 2)")
    limit = document.get("idle_time_limit")
    return Header(
        int(document.get("width") or 80),
        int(document.get("height") or 24),
        float(limit) if isinstance(limit, int | float) and limit > 0 else None,
    )


def parse_events(lines: Iterable[bytes | str]) -> Iterator[tuple[float, str, str]]:
    """The events after the header: (seconds since the start, code, data)."""
    for number, line in enumerate(lines, start=2):
        if not line.strip():
            continue
        try:
            when, code, data = json.loads(line)
            yield float(when), str(code), str(data)
        except (ValueError, TypeError) as exc:
            raise CliError(f"recording line {number} is not an asciicast event: {exc}") from None


def schedule(
    events: Iterable[tuple[float, str, str]], speed: float, idle_limit: float | None
) -> Iterator[tuple[float, str]]:
    """(seconds from the start of playback, text) for each output event: every gap between
    events (input and resizes count too) is cut to `idle_limit`, then divided by `speed`."""
    clock = previous = 0.0
    for when, code, data in events:
        gap = max(0.0, when - previous)
        previous = max(previous, when)
        if idle_limit is not None:
            gap = min(gap, idle_limit)
        clock += gap / speed
        if code == "o":
            yield clock, data


def play(
    timed: Iterable[tuple[float, str]],
    out: BinaryIO,
    *,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
) -> None:
    """Write each text at its time; times are from the start, so slow writes do not add up."""
    started = now()
    for when, text in timed:
        delay = started + when - now()
        if delay > 0:
            sleep(delay)
        out.write(text.encode("utf-8", "replace"))
        out.flush()


async def fetch(
    chunks: AsyncIterable[Any],
    sink: BinaryIO,
    progress: Callable[[int, int], None] | None = None,
) -> Fetched:
    """Write the recording's pieces to `sink` while hashing them; refuse it unless its digest
    and length are the ones the first piece announced."""
    digest = hashlib.sha256()
    expected: Fetched | None = None
    received = 0
    async for chunk in chunks:
        if expected is None:
            if not chunk.sha256:
                raise RecordingMismatch("the control plane sent the recording without its digest")
            expected = Fetched(chunk.sha256.lower(), chunk.size, chunk.event_seq)
        digest.update(chunk.data)
        sink.write(chunk.data)
        received += len(chunk.data)
        if progress is not None:
            progress(received, expected.size)
    if expected is None:
        raise CliError("the control plane sent no recording")
    actual = digest.hexdigest()
    if actual != expected.sha256 or received != expected.size:
        raise RecordingMismatch(
            f"the recording does not match the digest in the audit trail (event "
            f"{expected.event_seq}): expected {expected.size} bytes with sha256 "
            f"{expected.sha256}, got {received} bytes with sha256 {actual}; it was altered or "
            "cut short: do not trust it, and run `gatehouse audit verify`"
        )
    return expected


def check_vouched(fetched: Fetched, events: Iterable[dict[str, Any]]) -> None:
    """The event the control plane names must carry the same digest (when this session's
    events include it): a second look, in the chain `gatehouse audit verify` walks."""
    for event in events:
        if event.get("seq") == fetched.event_seq:
            if fetched.sha256 not in set(_strings(event)):
                raise RecordingMismatch(
                    f"event {fetched.event_seq} of the audit trail does not carry the "
                    f"recording's digest {fetched.sha256}: do not trust the recording, and run "
                    "`gatehouse audit verify`"
                )
            return


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value.lower()
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def print_events(info: dict[str, Any], events: list[dict[str, Any]], out: IO[str]) -> None:
    """A session without a recording: what was asked and what came back, in order."""
    from cli.sessions import event_detail

    out.write(
        f"session {info['id']}: {info['user']} on {info['connection']} ({info['type']}, "
        f"{info['mode']}), started {info['started']}\n"
    )
    for event in events:
        detail = event_detail(event)
        if not detail:
            continue
        indent = "    " if "result" in event else ""
        out.write(f"{event.get('time', '')}  {indent}{detail}\n")


def sessions_replay(
    session_id: str,
    speed: float,
    instant: bool,
    idle_limit: float | None,
    output: str | None,
    controlplane: str | None,
) -> None:
    """A recording is played (or written to `output`) only once its digest matches the one
    the audit trail vouches for."""
    from cli import rpc
    from cli.sessions import session_document
    from gatehouse.v1 import sessions_pb2, sessions_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def get_session(channel: Any) -> Any:
        stub = sessions_pb2_grpc.SessionServiceStub(channel)
        return await stub.GetSession(sessions_pb2.GetSessionRequest(id=session_id), metadata=md)

    response = call(address, get_session)
    info = session_document(response.session)
    events = [json.loads(e.body) for e in response.events]
    if not response.session.recorded:
        if output is not None:
            raise CliError(
                f"session {session_id} has no terminal recording (only sessions with a terminal "
                f"have one); its events: gatehouse sessions show {session_id} -o json",
                USAGE,
            )
        print_events(info, events, sys.stdout)
        return

    async def download(channel: Any, sink: BinaryIO) -> Fetched:
        stub = sessions_pb2_grpc.SessionServiceStub(channel)
        request = sessions_pb2.GetRecordingRequest(session_id=session_id)
        chunks = stub.GetRecording(request, metadata=md)
        with _progress(output not in (None, "-")) as progress:
            fetched = await fetch(chunks, sink, progress)
        check_vouched(fetched, events)
        return fetched

    if output not in (None, "-"):
        _download_to(Path(output), lambda sink: call(address, lambda ch: download(ch, sink)))
        echo(f"wrote {output}: session {session_id}, checked against the trail", err=True)
        return
    with tempfile.TemporaryFile() as spool:
        call(address, lambda channel: download(channel, spool))
        spool.seek(0)
        if output == "-":
            shutil.copyfileobj(spool, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return
        header = parse_header(spool.readline())
        _warn_if_smaller(header)
        pace = math.inf if instant else speed
        timed = schedule(parse_events(spool), pace, idle_cap(idle_limit, header))
        with _restored_on_interrupt():
            play(timed, sys.stdout.buffer)


def idle_cap(flag: float | None, header: Header) -> float | None:
    """The longest pause to play: --idle-limit (0: none), else the recording's own
    `idle_time_limit`, else DEFAULT_IDLE_LIMIT."""
    if flag is not None:
        return flag or None
    return header.idle_time_limit or DEFAULT_IDLE_LIMIT


def _download_to(path: Path, download: Callable[[BinaryIO], Any]) -> None:
    """Into a temporary file beside `path`, renamed only once the digest matched: a refused
    recording leaves nothing behind and never replaces a good file."""
    directory = path.parent if str(path.parent) else Path()
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=directory)
    try:
        with os.fdopen(fd, "wb") as sink:
            download(sink)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _progress(wanted: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr for a file download, when stderr is a terminal."""
    if not wanted or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        *Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), transient=True
    ) as bar:
        task = bar.add_task("recording", total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total or None)


def _warn_if_smaller(header: Header) -> None:
    if not sys.stdout.isatty():
        return
    with contextlib.suppress(OSError):
        size = os.get_terminal_size(sys.stdout.fileno())
        if size.columns < header.width or size.lines < header.height:
            echo(
                f"recorded in a {header.width}x{header.height} terminal; this one is "
                f"{size.columns}x{size.lines}: widen it for a faithful replay",
                err=True,
            )


@contextlib.contextmanager
def _restored_on_interrupt() -> Iterator[None]:
    """Ctrl-C mid-replay: reset colours and show the cursor the recording may have hidden."""
    try:
        yield
    except KeyboardInterrupt:
        if sys.stdout.isatty():
            sys.stdout.write("\x1b[0m\x1b[?25h\r\n")
            sys.stdout.flush()
        raise
