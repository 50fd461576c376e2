"""One PostgreSQL session on the agent: startup, login, then bytes both ways with result marks.

The target's bytes are forwarded as read (no re-encoding, no copy when nothing is masked); the
framer only finds message boundaries so that the agent can mark where each statement completed
or failed and where the target became ready, which the control plane turns into result events.
When the connection has masking rules, a ``ResultMasker`` follows both directions and the
frames carry its output instead (``agent/pg/masking.py``); without rules nothing else runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

from agent.engines import Cancel, Receive, SendFrame
from agent.masking import MaskingError, MaskingPolicy
from agent.pg.login import READ_SIZE, PgTarget, TargetError, open_target
from agent.pg.masking import Masked, ResultMasker
from agent.secrets import SecretError, resolve
from gatehouse.v1 import tunnel_pb2
from gatehouse.v1.tunnel_pb2 import ResultMark as Mark
from wire.pg import codes, framing
from wire.pg import messages as pgm

log = logging.getLogger(__name__)

ENCODING_STATUS = b"client_encoding\x00"

COMPLETE, EMPTY, SUSPENDED = codes.COMMAND_COMPLETE, codes.EMPTY_QUERY, codes.PORTAL_SUSPENDED
ERROR, READY, STATUS = codes.ERROR_RESPONSE, codes.READY_FOR_QUERY, codes.PARAMETER_STATUS
PARSED, BOUND, CLOSED = codes.PARSE_COMPLETE, codes.BIND_COMPLETE, codes.CLOSE_COMPLETE
ROWS_DESCRIBED, NO_DATA, COPY_IN = codes.ROW_DESCRIPTION, codes.NO_DATA, codes.COPY_IN_RESPONSE
# Answers that change or confirm the names the control plane tracks (decision 0010).
_NAME_MARKS = {PARSED: Mark.PARSE_COMPLETE, BOUND: Mark.BIND_COMPLETE, CLOSED: Mark.CLOSE_COMPLETE}
# Settings that change how the server reads a statement's text; only these are marked.
LEXICAL_SETTINGS = frozenset({"client_encoding", "standard_conforming_strings"})
MAX_FRAME = 4 * READ_SIZE  # what the masker may hold back (a large row) goes out in pieces


def result_marks(messages: Sequence[framing.Message], shift: int = 0) -> list[Mark]:
    """Marks for the messages that end a statement or a request cycle, confirm a name, answer a
    Describe, report a lexical setting, or start a COPY FROM STDIN."""
    holder = tunnel_pb2.Frame()
    add_marks(holder.marks, messages, shift)
    return list(holder.marks)


def marked_frame(data: bytes, messages: Sequence[framing.Message]) -> tunnel_pb2.Frame:
    """The target's bytes as read, with the marks of ``messages`` (what the framer found in
    them). The marks are made in the frame (``add``): building them apart and handing the list
    to the frame copies each one again."""
    frame = tunnel_pb2.Frame(data=data)
    add_marks(frame.marks, messages, 0)
    return frame


def add_marks(marks: Any, messages: Sequence[framing.Message], shift: int = 0) -> None:
    """Add `result_marks`' marks to ``marks``, a frame's repeated ``marks`` field."""
    for message in messages:
        tag = message.tag
        if tag == READY:
            body = message.body
            status = _TX_STATUS.get(body[0]) if len(body) == 1 else None
            if status is None:
                status = pgm.parse_ready_for_query(body)  # raises, naming what is wrong
            marks.add(kind=Mark.READY, end=message.end + shift, tx_status=status)
        elif tag == COMPLETE:
            command, rows = _command_tag(bytes(message.body))
            marks.add(kind=Mark.COMPLETE, end=message.end + shift, command=command, rows=rows)
        elif tag in _NAME_MARKS:
            marks.add(kind=_NAME_MARKS[tag], end=message.end + shift)
        elif tag in (ROWS_DESCRIBED, NO_DATA):
            marks.add(kind=Mark.DESCRIBED, end=message.end + shift)
        elif tag == COPY_IN:
            # The target now ignores Sync and Flush until the copy ends: the control plane
            # must not wait for their answers.
            marks.add(kind=Mark.COPY_IN, end=message.end + shift)
        elif tag == STATUS:
            name, value = pgm.parse_parameter_status(message.body)
            if name in LEXICAL_SETTINGS:
                marks.add(kind=Mark.PARAMETER, end=message.end + shift, name=name, value=value)
        elif tag in (EMPTY, SUSPENDED):
            command = "EMPTY" if tag == EMPTY else "SUSPENDED"
            marks.add(kind=Mark.COMPLETE, end=message.end + shift, command=command, rows=-1)
        elif tag == ERROR:
            fields = pgm.parse_error_fields(message.body)
            marks.add(
                kind=Mark.ERROR,
                end=message.end + shift,
                sqlstate=fields.sqlstate,
                message=fields.message,
            )


_TX_STATUS = {ord(status): status for status in "ITE"}


def _command_tag(body: bytes) -> tuple[str, int]:
    """A CommandComplete's command and row count (-1: none), remembered for short tags: a
    session sends the same few ("SELECT 1", "UPDATE 1", "BEGIN") over and over."""
    if len(body) > _MAX_REMEMBERED_TAG:
        return _read_command_tag(body)
    return _remembered_command_tag(body)


def _read_command_tag(body: bytes) -> tuple[str, int]:
    tag = pgm.parse_command_complete(body)
    return tag.command, -1 if tag.rows is None else tag.rows


_MAX_REMEMBERED_TAG = 64
_remembered_command_tag = functools.lru_cache(maxsize=256)(_read_command_tag)


def masked_marks(masked: Masked) -> list[Mark]:
    """Marks for a masker's output, with ``masked`` set on statements whose values it masked."""
    marks = []
    for message, flag in zip(masked.ends, masked.masked, strict=True):
        for mark in result_marks((message,)):  # none for a setting that is not marked
            mark.masked = flag
            marks.append(mark)
    return marks


def masked_frames(masked: Masked, limit: int = MAX_FRAME) -> list[tunnel_pb2.Frame]:
    """A masker's output as frames of at most ``limit`` bytes, each with the marks ending in it.

    Reads are READ_SIZE at most, but the masker holds a row back until it is complete, and a
    row may be far larger than a gRPC message may be.
    """
    data, marks = masked.data, masked_marks(masked)
    if len(data) <= limit:
        return [tunnel_pb2.Frame(data=data, marks=marks)]
    frames = []
    for start in range(0, len(data), limit):
        stop = min(start + limit, len(data))
        own = [m for m in marks if start < m.end <= stop]
        for mark in own:
            mark.end -= start
        frames.append(tunnel_pb2.Frame(data=data[start:stop], marks=own))
    return frames


def error_frame(sqlstate: str, message: str) -> tunnel_pb2.Frame:
    data = pgm.error_response(severity="FATAL", sqlstate=sqlstate, message=message)
    return tunnel_pb2.Frame(
        data=data, marks=[Mark(kind=Mark.ERROR, end=len(data), sqlstate=sqlstate, message=message)]
    )


async def run(
    target_spec: Mapping[str, object],
    secret: Mapping[str, str],
    receive: Receive,
    send: SendFrame,
    *,
    masking: Mapping[str, object] | None = None,
) -> str:
    """Serve one session until either side ends; returns why it ended.

    ``masking`` is the connection's ``ConnectionSpec.masking`` as a dict (``{"rules": [...]}``).
    """
    client = framing.MessageFramer(startup_phase=True)
    params: dict[str, str] | None = None
    pending = bytearray()
    while params is None:
        data = await receive()
        if data is None:
            return "the client left before the startup"
        if isinstance(data, Cancel):
            continue  # nothing runs yet
        for message in client.feed(data):
            if params is not None:
                pending += message.raw  # the client pipelined past its startup
                continue
            startup = pgm.parse_startup(message.body)
            if isinstance(startup, pgm.StartupMessage):
                params = dict(startup.params)
    try:
        policy = MaskingPolicy.from_spec(masking)
    except MaskingError as exc:
        await send(error_frame(codes.SYSTEM_ERROR, f"gatehouse agent: {exc}"))
        return f"masking rules unusable: {exc}"
    try:
        password = resolve(secret["password"]) if "password" in secret else None
        login = await open_target(PgTarget.from_spec(target_spec), password, params)
    except (TargetError, SecretError) as exc:
        sqlstate = exc.sqlstate if isinstance(exc, TargetError) else codes.INVALID_AUTHORIZATION
        await send(error_frame(sqlstate, str(exc)))
        return f"target login failed: {exc}"
    del password
    first = bytearray(pgm.authentication_ok() + login.rest)
    shift = len(first) - len(login.rest) - login.rest_offset
    backend_key = _swap_backend_key(first, login.rest_messages, shift)
    try:
        _require_utf8(bytes(first))
    except EncodingChanged as exc:
        login.writer.close()
        await send(error_frame(codes.CHARACTER_NOT_IN_REPERTOIRE, f"gatehouse agent: {exc}"))
        return str(exc)
    await send(tunnel_pb2.Frame(data=bytes(first), marks=result_marks(login.rest_messages, shift)))
    target = PgTarget.from_spec(target_spec)
    masker = None if policy is None else ResultMasker(policy, login.framer)
    if pending:
        if masker is not None:
            masker.client(pending)
        login.writer.write(bytes(pending))
    canceller = _Canceller(target, backend_key)
    return await _pump(login.reader, login.writer, login.framer, receive, send, masker, canceller)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    framer: framing.MessageFramer,
    receive: Receive,
    send: SendFrame,
    masker: ResultMasker | None = None,
    canceller: _Canceller | None = None,
) -> str:
    async def to_client() -> str:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return "the target closed the connection"
            if ENCODING_STATUS in data:
                _require_utf8(data)
            if masker is None:
                await send(marked_frame(data, framer.feed(data)))
                continue
            masked = masker.server(data)  # frames with `framer` itself
            if masked.data:
                for frame in masked_frames(masked):
                    await send(frame)

    async def to_target() -> str:
        while True:
            data = await receive()
            if data is None:
                return "the client closed the session"
            if isinstance(data, Cancel):
                if canceller is not None:
                    await canceller.cancel()
                continue
            if masker is not None:
                masker.client(data)  # before the target can answer it
            writer.write(data)
            await writer.drain()

    tasks = [asyncio.create_task(to_client()), asyncio.create_task(to_target())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        if first is tasks[1] and first.exception() is None:
            # The client is done sending (normally after Terminate): tell the target, as a
            # direct client's half-close would, and let its last answers out.
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(tasks[0]), 30)
        return first.result()
    except EncodingChanged as exc:
        await send(error_frame(codes.CHARACTER_NOT_IN_REPERTOIRE, f"gatehouse agent: {exc}"))
        return str(exc)
    except (OSError, framing.ProtocolError) as exc:
        return f"relay failed: {exc}"
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        writer.close()


class EncodingChanged(Exception):
    """The session's client_encoding left UTF8; the gateway reads statements as UTF-8 only."""


def _require_utf8(data: bytes) -> None:
    """End the session if the target reports a client_encoding other than UTF8.

    The control plane decides guardrails on the statement text decoded as UTF-8; a session in
    another encoding (SJIS, say, where a multibyte character can swallow a backslash) would be
    read one way by the gateway and another by the server. Checked on the ParameterStatus the
    server sends after every change, wherever it came from (SET, set_config, startup options).
    """
    at = data.find(ENCODING_STATUS)
    while at >= 5:
        if data[at - 5] == codes.PARAMETER_STATUS:
            end = data.find(b"\x00", at + len(ENCODING_STATUS))
            value = bytes(data[at + len(ENCODING_STATUS) : end]).decode("ascii", "replace")
            if end > 0 and value.upper() not in ("UTF8", "UTF-8", "UNICODE"):
                raise EncodingChanged(
                    f"client_encoding was changed to {value}; sessions through gatehouse must "
                    "stay in UTF8"
                )
        at = data.find(ENCODING_STATUS, at + 1)


def _swap_backend_key(
    data: bytearray, messages: Sequence[framing.Message], shift: int
) -> tuple[int, bytes] | None:
    """Give the client a cancel key of the agent's own; return the target's real one.

    The real key never leaves the agent: a CancelRequest reaches it as a cancel order on the
    session, and the agent sends the real key to the target itself.
    """
    for message in messages:
        if message.tag != codes.BACKEND_KEY_DATA:
            continue
        start = message.end + shift - len(message.raw)
        if start < 0:
            return None  # split across reads: keep the real key hidden but unusable
        pid, key = pgm.parse_backend_key_data(message.body)
        fake = pgm.backend_key_data(secrets.randbits(31), secrets.token_bytes(len(key)))
        data[start : start + len(fake)] = fake
        return pid, key
    return None


class _Canceller:
    """Cancels the target backend of one session with its real key, on its own connection."""

    def __init__(self, target: PgTarget, backend_key: tuple[int, bytes] | None) -> None:
        self._target = target
        self._key = backend_key

    async def cancel(self) -> None:
        if self._key is None:
            log.warning("cancel requested but the target's cancel key is unknown")
            return
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(self._target.host, self._target.port), 10
            )
            writer.write(pgm.cancel_request(*self._key))
            await writer.drain()
            writer.close()
        except (OSError, TimeoutError) as exc:
            log.warning("cancel request to the target failed: %s", exc)
