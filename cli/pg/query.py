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
from cli.errors import USAGE, CliError
from cli.output import Format, echo, emit, emit_json
from cli.protocols import ExecRequest
from cli.session import Call, Opened, finish, open_session
from gatehouse.v1 import client_pb2
from wire.pg import codes, framing
from wire.pg import messages as pgm


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

    def __init__(
        self, session_id: str = "", max_rows: int | None = None, max_bytes: int | None = None
    ) -> None:
        self.session_id = session_id
        self.max_rows = max_rows  # rows kept per result; None: all
        self.max_bytes = max_bytes  # bytes of rows kept over all results; None: all
        self.kept = 0
        self.results: list[ResultSet] = []
        self.error: pgm.ErrorFields | None = None
        self.notices: list[pgm.ErrorFields] = []

    def keeps(self, result: ResultSet, size: int) -> bool:
        """Whether a row of `size` bytes is kept in `result` (none after one left out)."""
        if result.truncated or (self.max_rows is not None and len(result.rows) >= self.max_rows):
            return False
        if self.max_bytes is not None and self.kept + size > self.max_bytes:
            return False
        self.kept += size
        return True


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
    max_bytes: int | None = None,
) -> Outcome:
    """Run `sql` in a session already open (`exec` opens first, then looks at the type):
    the simple protocol, or the extended one with `params` (text, types inferred). Each
    result keeps at most `max_rows` rows, and all of them at most `max_bytes` of rows (the
    rest are read and left out: `truncated`)."""
    call = opened.call
    outcome = Outcome(session_id=opened.session_id, max_rows=max_rows, max_bytes=max_bytes)
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
    # After a FATAL (the session was ended: a revoked token, say) the control plane closes
    # the call itself; what it said is in `outcome`.
    ended = outcome.error is not None and outcome.error.severity in ("FATAL", "PANIC")
    await finish(call, None if ended else pgm.terminate(), messages)
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
            if outcome.keeps(current, len(message.body)):
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
        if type_oid in codes.INT_TYPES:
            return int(text)
        if type_oid in codes.FLOAT_TYPES:
            return float(text)
        if type_oid == codes.BOOL:
            return text == "t"
        if type_oid in codes.JSON_TYPES:
            return json.loads(text)
    except ValueError:
        pass
    return text


def text_rows(result: ResultSet) -> list[list[str | None]]:
    return [
        [None if v is None else v.decode("utf-8", errors="replace") for v in row]
        for row in result.rows
    ]


async def execute(opened: Opened, request: ExecRequest) -> int:
    """`gatehouse exec NAME -c SQL`: the results on stdout (a table, or JSON with `-o json`),
    notices on stderr, and the database's error (exit 1) after them."""
    if request.args:
        opened.call.cancel()
        raise CliError(
            f"{request.connection} is a {opened.connection_type or 'database'} connection: give "
            f"the statement with -c, e.g. gatehouse exec {request.connection} -c 'select 1'",
            USAGE,
        )
    assert request.command is not None
    try:
        outcome = await run_sql_on(opened, request.command)
    except CliError as exc:
        for notice in _notices(exc):
            echo(f"{notice.severity}:  {notice.message}", err=True)
        raise
    for notice in outcome.notices:
        echo(f"{notice.severity}:  {notice.message}", err=True)
    _print_results(outcome, request.output)
    if outcome.error is not None:
        raise PgError(outcome.error, outcome)
    return 0


def _notices(exc: CliError) -> list[Any]:
    """A database error's notices, printed before it as psql does."""
    outcome = getattr(exc, "outcome", None)
    return list(outcome.notices) if outcome is not None else []


def _print_results(outcome: Outcome, output: Format) -> None:
    results = outcome.results
    if output is Format.json:
        documents = [r.as_json() for r in results]
        last = documents[-1] if documents else {"columns": [], "rows": [], "command": ""}
        document = dict(last)
        if len(documents) > 1:
            document["results"] = documents
        document["session_id"] = outcome.session_id
        emit_json(document)
        return
    for result in results:
        if result.columns:
            emit(output, None, [c.name for c in result.columns], text_rows(result))
            count = len(result.rows)
            echo(f"({count} row{'s' if count != 1 else ''})")
        else:
            echo(result.command)
