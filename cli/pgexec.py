"""`gatehouse exec NAME -c SQL` for PostgreSQL: a tiny frontend on the one data path.

The CLI speaks the PostgreSQL protocol through the same ClientService session that native
clients use through `connect`; the control plane records and the agent logs in. Nothing here
knows a password: the agent answers the startup itself.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc

from cli import __version__
from cli.errors import CliError
from cli.session import Call, Opened, open_session
from gatehouse.v1 import client_pb2
from wire.pg import framing
from wire.pg import messages as pgm

INT_TYPES = {20, 21, 23, 26}  # int8, int2, int4, oid
FLOAT_TYPES = {700, 701}
BOOL_TYPE = 16
JSON_TYPES = {114, 3802}


class ResultSet:
    """One statement's result: its columns, its rows as the server sent them, its tag.
    (Plain classes here: a dataclass costs ~0.4 ms to define, on every `exec`.)"""

    def __init__(self, columns: list[pgm.Column] | None = None) -> None:
        self.columns: list[pgm.Column] = columns or []
        self.rows: list[list[bytes | None]] = []
        self.command = ""
        self.truncated = False  # rows beyond the caller's cap were read and left out

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": [c.name for c in self.columns],
            "rows": [
                [_json_value(v, c.type_oid) for v, c in zip(row, self.columns, strict=True)]
                for row in self.rows
            ],
            "command": self.command,
        }


class Outcome:
    """What the session gave back: every result, the error if one ended it, the notices."""

    def __init__(self, session_id: str = "", max_rows: int | None = None) -> None:
        self.session_id = session_id
        self.max_rows = max_rows  # rows kept per result; None: all
        self.results: list[ResultSet] = []
        self.error: pgm.ErrorFields | None = None
        self.notices: list[pgm.ErrorFields] = []


class PgError(CliError):
    """The database (or the gateway, speaking as one) refused the statement."""

    def __init__(self, fields: pgm.ErrorFields, outcome: Outcome | None = None) -> None:
        lines = [f"{fields.severity or 'ERROR'}:  {fields.message}"]
        if fields.detail:
            lines.append(f"DETAIL:  {fields.detail}")
        if fields.hint:
            lines.append(f"HINT:  {fields.hint}")
        lines.append(f"(SQLSTATE {fields.sqlstate})")
        super().__init__("\n".join(lines))
        self.fields = fields
        self.outcome = outcome


async def run_sql(
    channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...], connection: str, sql: str
) -> Outcome:
    """Open an `exec` session on `connection` and run `sql` in it."""
    opened = await open_session(
        channel, metadata, connection, "exec", f"gatehouse-cli/{__version__} exec"
    )
    return await run_sql_on(opened, sql)


async def run_sql_on(
    opened: Opened,
    sql: str,
    params: list[str | None] | None = None,
    max_rows: int | None = None,
) -> Outcome:
    """Run `sql` in a session already open (`exec` opens first, then looks at the type):
    the simple protocol, or the extended one with `params` (text, types inferred). Each
    result keeps at most `max_rows` rows (the rest are read and left out: `truncated`)."""
    call = opened.call
    outcome = Outcome(session_id=opened.session_id, max_rows=max_rows)
    startup = pgm.startup_message(
        {"user": getpass.getuser() or "gatehouse", "application_name": "gatehouse exec"}
    )
    await call.write(client_pb2.ClientFrame(data=startup))
    messages = _messages(call)
    await _until_ready(messages, outcome, None)
    if outcome.error is not None:
        raise PgError(outcome.error, outcome)
    request = pgm.query(sql) if params is None else pgm.extended_query(sql, params)
    await call.write(client_pb2.ClientFrame(data=request))
    await _until_ready(messages, outcome, outcome.results)
    await call.write(client_pb2.ClientFrame(data=pgm.terminate()))
    await call.done_writing()
    async for _ in messages:
        pass
    return outcome


async def _messages(call: Call) -> AsyncIterator[framing.Message]:
    framer = framing.MessageFramer()
    while True:
        frame = await call.read()
        if not isinstance(frame, client_pb2.ServerFrame):  # end of stream
            return
        if frame.HasField("data"):
            for message in framer.feed(frame.data):
                yield message


async def _until_ready(
    messages: AsyncIterator[framing.Message], outcome: Outcome, results: list[ResultSet] | None
) -> None:
    current: ResultSet | None = None
    async for message in messages:
        tag = chr(message.tag)
        if tag == "Z":
            return
        if tag == "E":
            outcome.error = pgm.parse_error_fields(message.body)
            if outcome.error.severity in ("FATAL", "PANIC"):
                return
        elif tag == "N":
            outcome.notices.append(pgm.parse_error_fields(message.body))
        elif results is None:
            continue  # startup: AuthenticationOk, ParameterStatus, BackendKeyData
        elif tag == "T":
            current = ResultSet(columns=pgm.parse_row_description(message.body))
        elif tag == "D" and current is not None:
            if outcome.max_rows is None or len(current.rows) < outcome.max_rows:
                current.rows.append(pgm.parse_data_row(message.body))
            else:
                current.truncated = True
        elif tag == "C":
            tag_text = pgm.parse_command_complete(message.body).tag
            if current is None:
                current = ResultSet()
            current.command = tag_text
            results.append(current)
            current = None
    raise CliError(
        "the session ended before the database answered, without a reason from the control "
        "plane (the replica serving it may have stopped); run it again"
    )


def _json_value(value: bytes | None, type_oid: int) -> Any:
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace")
    try:
        if type_oid in INT_TYPES:
            return int(text)
        if type_oid in FLOAT_TYPES:
            return float(text)
        if type_oid == BOOL_TYPE:
            return text == "t"
        if type_oid in JSON_TYPES:
            return json.loads(text)
    except ValueError:
        pass
    return text


def text_rows(result: ResultSet) -> list[list[str | None]]:
    return [
        [None if v is None else v.decode("utf-8", errors="replace") for v in row]
        for row in result.rows
    ]
