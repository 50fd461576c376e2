"""Follow a MySQL connection's responses: which packet ends which result.

A response's shape depends on the command that asked for it (COM_QUERY may answer with OK, ERR,
a LOCAL INFILE request or a result set; COM_STMT_PREPARE with its own OK, parameter and column
definitions; ...) and on the capabilities agreed at login (DEPRECATE_EOF drops the EOF packets
after column definitions and ends rows with an OK). ``Follower`` is told every command the
client sends and every packet the server answers, and says, packet by packet, where a result
ended (``Done``) and which packets are rows (``Row``). Sans-IO; used by the agent (result marks,
masking) and the CLI's client (tables).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from wire.mysql import messages as msg
from wire.mysql.constants import (
    EOF_HEADER,
    ERR_HEADER,
    LOCAL_INFILE_HEADER,
    OK_HEADER,
    Capability,
    Command,
    Status,
)
from wire.mysql.packets import Packet, ProtocolError

__all__ = ["Done", "Follower", "Row"]

# What the server answers, by command.
_GENERIC, _QUERY, _PREPARE, _FIELDS, _STRING, _FETCH = range(6)
_EXPECT = {
    Command.QUERY: _QUERY,
    Command.STMT_EXECUTE: _QUERY,
    Command.STMT_PREPARE: _PREPARE,
    Command.FIELD_LIST: _FIELDS,
    Command.STATISTICS: _STRING,
    Command.STMT_FETCH: _FETCH,
}
_SILENT = frozenset({Command.QUIT, Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA})


@dataclass(frozen=True, slots=True)
class Row:
    """A row of the result set being read: text or binary, with its result's columns."""

    columns: list[msg.Column]
    binary: bool


@dataclass(frozen=True, slots=True)
class Done:
    """One result ended at this packet; ``last``: the whole response ended with it."""

    kind: str  # "ok", "rows", "error", "prepared", "info"
    last: bool
    status: int = 0
    rows: int = -1  # rows returned (rows) or affected (ok); -1 when neither
    command: str = ""  # the command it answered, as MySQL names it: "Query", "Prepare" …
    error: msg.Err | None = None
    prepared: msg.PrepareOk | None = None
    columns: list[msg.Column] = field(default_factory=list)
    info: str = ""

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & Status.IN_TRANS)


@dataclass(slots=True)
class _Pending:
    command: int
    expect: int
    binary: bool
    statement: int = -1  # COM_STMT_EXECUTE/FETCH: the statement id
    # Reading state of the current result.
    stage: str = "first"  # first, params, columns, rows, infile
    left: int = 0  # definitions still to read in this stage
    columns: list[msg.Column] = field(default_factory=list)
    rows: int = 0
    prepared: msg.PrepareOk | None = None
    metadata_eof: bool = False  # an EOF ends the current definitions


_NAMES = {
    Command.QUERY: "Query",
    Command.STMT_EXECUTE: "Execute",
    Command.STMT_PREPARE: "Prepare",
    Command.FIELD_LIST: "Field List",
    Command.STATISTICS: "Statistics",
    Command.STMT_FETCH: "Fetch",
    Command.INIT_DB: "Init DB",
    Command.PING: "Ping",
    Command.STMT_RESET: "Reset stmt",
}


class Follower:
    def __init__(self, capabilities: int) -> None:
        self._deprecate_eof = bool(capabilities & Capability.DEPRECATE_EOF)
        self._pending: deque[_Pending] = deque()
        self._cursors: dict[int, list[msg.Column]] = {}  # statement id -> its cursor's columns

    @property
    def idle(self) -> bool:
        """No response is awaited."""
        return not self._pending

    def command(self, payload: bytes) -> None:
        """A command the client sent (a packet with sequence id 0)."""
        if not payload:
            raise ProtocolError("an empty command packet")
        cmd = payload[0]
        if cmd == Command.STMT_CLOSE and len(payload) >= 5:
            self._cursors.pop(msg.statement_id(payload), None)
        if cmd in _SILENT:
            return
        expect = _EXPECT.get(cmd, _GENERIC)  # type: ignore[call-overload]
        binary = cmd in (Command.STMT_EXECUTE, Command.STMT_FETCH)
        pending = _Pending(cmd, expect, binary=binary)
        if binary:
            pending.statement = msg.statement_id(payload)
            # A fetch reads rows of the cursor an execute opened: they have its columns.
            pending.columns = (
                self._cursors.get(pending.statement, []) if cmd == Command.STMT_FETCH else []
            )
        self._pending.append(pending)

    def server(self, packet: Packet) -> Row | Done | None:
        """What this server packet is: a row, the end of a result, or neither."""
        if not self._pending:
            if packet.first == ERR_HEADER:  # e.g. the server's goodbye before it closes
                return Done("error", True, error=msg.parse_err(packet.payload))
            raise ProtocolError("the server sent a packet no command asked for")
        p = self._pending[0]
        payload = packet.payload
        first = packet.first
        if p.stage == "first":
            return self._first(p, payload, first)
        if p.stage in ("params", "columns"):
            return self._definition(p, payload)
        if p.stage == "rows":
            if first == ERR_HEADER:
                return self._done(
                    Done("error", True, error=msg.parse_err(payload), command=self._name(p))
                )
            if first == EOF_HEADER and len(payload) < 0xFFFFFF:
                # No row starts with 0xFE that short (its first value would be over 16 MiB).
                status = self._end_status(payload)
                more = bool(status & Status.MORE_RESULTS_EXISTS) and p.expect == _QUERY
                done = Done("rows", not more, status, p.rows, self._name(p), columns=p.columns)
                return self._next_result(p, done)
            p.rows += 1
            return Row(p.columns, p.binary)
        raise ProtocolError(f"unexpected server packet in stage {p.stage}")  # pragma: no cover

    def _name(self, p: _Pending) -> str:
        name: str = _NAMES.get(p.command, f"0x{p.command:02x}")  # type: ignore[call-overload]
        return name

    def _first(self, p: _Pending, payload: bytes, first: int) -> Row | Done | None:
        name = self._name(p)
        if first == ERR_HEADER:
            return self._done(Done("error", True, error=msg.parse_err(payload), command=name))
        if p.expect == _STRING:
            return self._done(
                Done("info", True, command=name, info=payload.decode("utf-8", "replace"))
            )
        if p.expect == _FIELDS:
            p.stage, p.left = "columns", -1  # definitions until EOF
            return self._definition(p, payload)
        if p.expect == _FETCH:  # rows of an open cursor, without metadata, then their end
            p.stage = "rows"
            return self.server(_again(payload))
        if first == OK_HEADER and p.expect == _PREPARE:
            prepared = msg.parse_prepare_ok(payload)
            p.prepared = prepared
            if prepared.params:
                p.stage, p.left = "params", prepared.params
            elif prepared.columns:
                p.stage, p.left = "columns", prepared.columns
            else:
                return self._done(Done("prepared", True, command=name, prepared=prepared))
            return None
        if first == OK_HEADER or (first == EOF_HEADER and len(payload) < 9):
            ok = msg.parse_ok(payload)
            more = bool(ok.status & Status.MORE_RESULTS_EXISTS) and p.expect == _QUERY
            done = Done("ok", not more, ok.status, ok.affected_rows, name, info=ok.info)
            return self._next_result(p, done)
        if first == LOCAL_INFILE_HEADER and p.expect == _QUERY:
            return None  # the client sends the file; the server's OK or ERR follows
        if p.expect != _QUERY:
            raise ProtocolError(f"unexpected answer 0x{first:02x} to {name}")
        count = msg.Reader(payload).lenenc()
        if not count:
            raise ProtocolError("a result set of no columns")
        p.stage, p.left, p.columns, p.rows = "columns", count, [], 0
        return None

    def _end_status(self, payload: bytes) -> int:
        """The status flags of what ends rows: an OK starting 0xFE, or an EOF."""
        if self._deprecate_eof:
            return msg.parse_ok(payload).status
        return msg.parse_eof(payload).status

    def _definition(self, p: _Pending, payload: bytes) -> Done | None:
        if p.metadata_eof or (p.left == -1 and msg.is_eof(payload)):
            # The EOF after definitions (without DEPRECATE_EOF), or the end of a field list.
            p.metadata_eof = False
            if p.left == -1:
                return self._done(
                    Done(
                        "rows",
                        True,
                        msg.parse_eof(payload).status,
                        len(p.columns),
                        self._name(p),
                        columns=p.columns,
                    )
                )
            return self._after_definitions(p, msg.parse_eof(payload).status)
        if payload and payload[0] == ERR_HEADER and p.left == -1:
            return self._done(
                Done("error", True, error=msg.parse_err(payload), command=self._name(p))
            )
        column = msg.parse_column(payload)
        if p.stage == "columns":
            p.columns.append(column)
        if p.left > 0:
            p.left -= 1
            if p.left == 0:
                if not self._deprecate_eof:
                    p.metadata_eof = True
                    return None
                return self._after_definitions(p, 0)
        return None

    def _after_definitions(self, p: _Pending, status: int) -> Done | None:
        if p.expect == _PREPARE:
            if p.stage == "params" and p.prepared is not None and p.prepared.columns:
                p.stage, p.left = "columns", p.prepared.columns
                return None
            return self._done(
                Done(
                    "prepared", True, command=self._name(p), prepared=p.prepared, columns=p.columns
                )
            )
        if status & Status.CURSOR_EXISTS:
            # COM_STMT_EXECUTE opened a cursor: rows come with COM_STMT_FETCH.
            self._cursors[p.statement] = p.columns
            return self._done(Done("rows", True, status, 0, self._name(p), columns=p.columns))
        p.stage = "rows"
        return None

    def _next_result(self, p: _Pending, done: Done) -> Done:
        if done.last:
            return self._done(done)
        p.stage, p.left, p.columns, p.rows = "first", 0, [], 0
        return done

    def _done(self, done: Done) -> Done:
        if done.last:
            self._pending.popleft()
        return done


def _again(payload: bytes) -> Packet:
    """A packet to read once more in the stage it turned out to belong to."""
    return Packet(payload, 0, 0, 0, 0)
