"""`gatehouse exec NAME -c SQL` for MySQL: a tiny client on the one data path.

The CLI speaks the MySQL protocol through the same ClientService session that native clients
use through `connect`: the agent greets it, ignores the (empty) password and logs in to the
target itself; the control plane records each statement. Multi-statement text is allowed and
each statement's result is shown, as the `mysql` client does.
"""

from __future__ import annotations

import getpass
import json
from collections.abc import AsyncIterator
from typing import Any

from cli.errors import USAGE, CliError
from cli.interrupt import cancel_on_interrupt
from cli.output import Format, echo, emit, emit_json
from cli.protocols import ExecRequest
from cli.session import Call, Opened, finish
from gatehouse.v1 import client_pb2
from wire.mysql import messages as msg
from wire.mysql.constants import NATIVE_PASSWORD, Capability, Command, FieldType
from wire.mysql.follow import Done, Follower, Row
from wire.mysql.packets import Packet, PacketFramer, encode

CAPABILITIES = (
    Capability.LONG_PASSWORD
    | Capability.LONG_FLAG
    | Capability.PROTOCOL_41
    | Capability.TRANSACTIONS
    | Capability.SECURE_CONNECTION
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PLUGIN_AUTH
    | Capability.DEPRECATE_EOF
)
_INTS = frozenset(
    {
        FieldType.TINY,
        FieldType.SHORT,
        FieldType.LONG,
        FieldType.LONGLONG,
        FieldType.INT24,
        FieldType.YEAR,
    }
)
_FLOATS = frozenset({FieldType.FLOAT, FieldType.DOUBLE})


class MysqlError(CliError):
    """The database (or the gateway, speaking as one) refused the statement."""

    def __init__(self, err: msg.Err) -> None:
        super().__init__(f"ERROR {err.code} ({err.sqlstate}): {err.message}")
        self.err = err


class ResultSet:
    def __init__(self) -> None:
        self.columns: list[msg.Column] = []
        self.rows: list[list[bytes | None]] = []
        self.affected: int | None = None
        self.truncated = False  # rows beyond the caller's cap were read and left out

    def as_json(self) -> dict[str, Any]:
        return {
            "columns": [c.name for c in self.columns],
            "rows": [
                [_json_value(v, c) for v, c in zip(row, self.columns, strict=True)]
                for row in self.rows
            ],
            "affected_rows": self.affected,
        }


async def _packets(call: Call) -> AsyncIterator[Packet]:
    framer = PacketFramer()
    while True:
        frame = await call.read()
        if not isinstance(frame, client_pb2.ServerFrame):
            return
        if frame.HasField("data"):
            for packet in framer.feed(frame.data):
                yield packet


async def run_sql_on(
    opened: Opened, sql: str, max_rows: int | None = None, max_bytes: int | None = None
) -> tuple[list[ResultSet], msg.Err | None]:
    """Log in through the session, run `sql`, quit; the results, and the error if one came.
    Each result keeps at most `max_rows` rows, and all of them at most `max_bytes` of rows
    (the rest are read and left out: `truncated`)."""
    call = opened.call
    packets = _packets(call)
    greeting = await anext(packets, None)
    if greeting is None:
        raise CliError("the session ended before the database greeted")
    if greeting.first == 0xFF:
        raise MysqlError(msg.parse_err(greeting.payload))
    hello = msg.parse_handshake(greeting.payload)
    caps = CAPABILITIES & hello.capabilities | Capability.PROTOCOL_41
    response = msg.handshake_response(
        capabilities=caps,
        user=getpass.getuser() or "gatehouse",
        auth_response=b"",
        plugin=NATIVE_PASSWORD,
        attributes={"program_name": "gatehouse exec"},
    )
    await call.write(client_pb2.ClientFrame(data=encode(response, greeting.last_seq + 1)))
    answer = await anext(packets, None)
    while answer is not None and answer.first == 0x01:  # caching_sha2's "fast auth ok"
        answer = await anext(packets, None)
    if answer is None:
        raise CliError("the session ended during the login")
    if answer.first == 0xFF:
        raise MysqlError(msg.parse_err(answer.payload))
    follower = Follower(caps)
    query = msg.command(Command.QUERY, sql.encode("utf-8"))
    follower.command(query)
    await call.write(client_pb2.ClientFrame(data=encode(query, 0)))
    results: list[ResultSet] = []
    current = ResultSet()
    error: msg.Err | None = None
    kept = 0
    async for packet in packets:
        seen = follower.server(packet)
        if isinstance(seen, Row):
            if (
                current.truncated
                or (max_rows is not None and len(current.rows) >= max_rows)
                or (max_bytes is not None and kept + len(packet.payload) > max_bytes)
            ):
                current.truncated = True
                continue
            kept += len(packet.payload)
            current.rows.append(
                _binary_text(packet.payload, seen.columns)
                if seen.binary
                else msg.parse_text_row(packet.payload, len(seen.columns))
            )
        elif isinstance(seen, Done):
            if seen.kind == "error":
                error = seen.error
            else:
                current.columns = seen.columns
                if seen.kind == "ok":
                    current.affected = seen.rows
                results.append(current)
                current = ResultSet()
            if seen.last:
                break
    await finish(call, encode(msg.command(Command.QUIT), 0), packets)
    return results, error


def _binary_text(payload: bytes, columns: list[msg.Column]) -> list[bytes | None]:
    values = msg.parse_binary_row(payload, columns)
    return [
        None if v is None else msg.binary_to_text(c.type, c.unsigned, v).encode()
        for v, c in zip(values, columns, strict=True)
    ]


def _json_value(value: bytes | None, column: msg.Column) -> Any:
    if value is None:
        return None
    text = value.decode("utf-8", errors="replace")
    try:
        if column.type in _INTS:
            return int(text)
        if column.type in _FLOATS:
            return float(text)
        if column.type == FieldType.JSON:
            return json.loads(text)
    except ValueError:
        pass
    return text


async def execute(opened: Opened, request: ExecRequest) -> int:
    """`gatehouse exec NAME -c SQL`: the results on stdout (a table, or JSON with `-o json`),
    and the database's error (exit 1) after them."""
    if request.args or request.command is None:
        opened.call.cancel()
        raise CliError(
            f"{request.connection} is a mysql connection: give the statement with -c, e.g. "
            f"gatehouse exec {request.connection} -c 'select 1'",
            USAGE,
        )
    with cancel_on_interrupt(opened.call):
        results, error = await run_sql_on(opened, request.command)
    if request.output is Format.json:
        documents = [r.as_json() for r in results]
        last = documents[-1] if documents else {"columns": [], "rows": [], "affected_rows": None}
        document = dict(last)
        if len(documents) > 1:
            document["results"] = documents
        document["session_id"] = opened.session_id
        emit_json(document)
    else:
        for result in results:
            if result.columns:
                rows = [
                    [None if v is None else v.decode("utf-8", errors="replace") for v in row]
                    for row in result.rows
                ]
                emit(request.output, None, [c.name for c in result.columns], rows)
                count = len(result.rows)
                echo(f"({count} row{'s' if count != 1 else ''})")
            else:
                echo(
                    f"OK, {result.affected or 0} row{'s' if result.affected != 1 else ''} affected"
                )
    if error is not None:
        raise MysqlError(error)
    return 0
