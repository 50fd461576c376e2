"""Which module serves a connection type in `exec` and `connect`: the one place the CLI lists
its protocols.

A new protocol is a folder (`cli/<protocol>/`) with an `execute` and, when native clients can
use it, a `listen`, and one line in each table here. The tables name modules as text and load
only the one a session needs: `exec` runs again and again (AI agents), and imports nothing of
a protocol it does not speak.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

from cli.errors import CliError

if TYPE_CHECKING:
    from pathlib import Path

    from cli.output import Format
    from cli.session import Opened

EXEC: Mapping[str, str] = {
    "postgres": "cli.pg.query:execute",
    "mysql": "cli.mysql.query:execute",
    "ssh": "cli.term.command:execute",
    "shell": "cli.term.command:execute",
    "http": "cli.http.exec_:execute",
}
"""`gatehouse exec` on a session whose `opened` frame names this type."""
CONNECT: Mapping[str, str] = {
    "postgres": "cli.pg.listen:listen",
    "mysql": "cli.mysql.listen:listen",
    "ssh": "cli.term.listen:listen",
    "http": "cli.http.listen:listen",
}
"""`gatehouse connect`: the local listener for this type's native clients."""
MCP_TOOL: Mapping[str, str] = {
    "postgres": "query",
    "mysql": "query",
    "ssh": "run_command",
    "shell": "run_command",
    "http": "http_request",
}
"""The MCP tool that runs requests on a connection of this type (cli.mcptools)."""
SQL_TOOLS: Mapping[str, str] = {
    "postgres": "cli.pg.mcp",
    "mysql": "cli.mysql.mcp",
}
"""MCP's `query` and `describe` on this type: a module shaped as `SqlTools`."""
DEFAULT = "postgres"
"""What a session speaks when its type is not known: a control plane that does not name it,
or a connection not in the caller's list (the control plane then refuses in this protocol)."""

#: A listener's client must finish its handshake within this many seconds (PostgreSQL's
#: authentication_timeout is 60 s); GATEHOUSE_HANDSHAKE_TIMEOUT.
HANDSHAKE_TIMEOUT = 10.0
#: At most this many connections may be starting at once; GATEHOUSE_MAX_PENDING_HANDSHAKES.
MAX_PENDING = 64


class ExecRequest:
    """What the caller asked `exec` to run: `-c` text or the words after `--`.
    (Plain classes here: a dataclass costs ~0.4 ms to define, on every `exec`.)"""

    def __init__(
        self,
        connection: str,
        args: list[str],
        command: str | None,
        no_stdin: bool,
        output: Format,
    ) -> None:
        self.connection = connection
        self.args = args
        self.command = command
        self.no_stdin = no_stdin
        self.output = output


class ListenRequest:
    """What the caller asked `connect` for; `port` None: the protocol's usual local port."""

    def __init__(
        self,
        address: str,
        metadata: tuple[tuple[str, str], ...],
        connection: str,
        host: str,
        port: int | None,
        authorized_keys: list[Path] | None,
    ) -> None:
        self.address = address
        self.metadata = metadata
        self.connection = connection
        self.host = host
        self.port = port
        self.authorized_keys = authorized_keys


class Listening:
    """A listener ready to run: the port it will bind and the coroutine that serves it."""

    def __init__(self, port: int, serve: Coroutine[Any, Any, None]) -> None:
        self.port = port
        self.serve = serve


class Catalogue:
    """What `describe` read: (schema, table, column, type, nullable YES/NO) rows, in order,
    and whether rows were left out at the cap."""

    def __init__(self, rows: list[list[str | None]], truncated: bool) -> None:
        self.rows = rows
        self.truncated = truncated


MAX_RESULT_BYTES = 256 * 1024
"""Bytes of row values (as the database sends them) an MCP `query` or `describe` keeps over
all its results; the rows after are read and left out (`truncated`), as past `max_rows`.
The tools run inside the control plane on `/mcp`, and an MCP client takes no larger answer."""


class SqlTools(Protocol):
    """A database protocol's MCP tools; failures raise CliError with the database's words."""

    async def query(
        self, opened: Opened, sql: str, params: list[str | None] | None, max_rows: int
    ) -> dict[str, Any]:
        """The result document: columns, rows (capped, `truncated`), and the protocol's own
        outcome (command tag, affected rows)."""
        ...

    async def describe(
        self, opened: Opened, schema: str | None, table: str | None, max_rows: int
    ) -> Catalogue:
        """The columns of the tables outside the system schemas, through the session."""
        ...


Execute = Callable[["Opened", ExecRequest], Awaitable[int]]
"""Run the request in the opened session; returns the exit status, raises CliError."""
Listen = Callable[[ListenRequest], Listening]
"""Check the request (a usage error raises before anything listens) and make the listener."""


def execute_for(connection_type: str) -> Execute:
    target = EXEC.get(connection_type or DEFAULT)
    if target is None:
        raise CliError(
            f"this gatehouse cannot run requests on {connection_type} connections; "
            "install a newer version"
        )
    return cast(Execute, _load(target))


def sql_tools_for(connection_type: str) -> SqlTools | None:
    """The type's `query` and `describe`, or None when it is not a database."""
    target = SQL_TOOLS.get(connection_type or DEFAULT)
    return None if target is None else cast(SqlTools, importlib.import_module(target))


def listen_for(connection_type: str | None) -> Listen | None:
    """The type's listener, or None when its clients have no native protocol to speak."""
    target = CONNECT.get(connection_type or DEFAULT)
    return None if target is None else cast(Listen, _load(target))


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def handshake_limits(env: Mapping[str, str] = os.environ) -> tuple[float, int]:
    """(deadline, max pending) for a local listener's handshakes, from the environment."""
    timeout = env.get("GATEHOUSE_HANDSHAKE_TIMEOUT", "").strip()
    pending = env.get("GATEHOUSE_MAX_PENDING_HANDSHAKES", "").strip()
    try:
        limits = (float(timeout or HANDSHAKE_TIMEOUT), int(pending or MAX_PENDING))
    except ValueError:
        raise CliError(
            "GATEHOUSE_HANDSHAKE_TIMEOUT must be seconds and GATEHOUSE_MAX_PENDING_HANDSHAKES "
            "a whole number"
        ) from None
    if not (0.1 <= limits[0] <= 600 and 1 <= limits[1] <= 100_000):
        raise CliError(
            "GATEHOUSE_HANDSHAKE_TIMEOUT must be 0.1 to 600 s and "
            "GATEHOUSE_MAX_PENDING_HANDSHAKES 1 to 100000"
        )
    return limits
