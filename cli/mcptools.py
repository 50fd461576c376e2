"""The tools Gatehouse gives an AI agent over MCP, and the MCP server that offers them.

Each tool call is one request on the same audited path as `gatehouse exec`: `query` and
`describe` speak the database's own protocol through a session (the modules that
cli.protocols.SQL_TOOLS names: PostgreSQL, MySQL), `run_command` the terminal protocol
(cli.term) and `http_request` HTTP (cli.http), so guardrails, reviews, masking and the trail
apply unchanged. Which tool fits a connection type is cli.protocols.MCP_TOOL. The call
itself travels with the request (`McpCall`): the control plane records it as an `mcp.call`
event first, and the session's events name it.

Where the sessions come from is a `Gateway`: the CLI's gRPC channel for `gatehouse mcp` on
stdio (cli.mcpserve), the control plane itself for its `/mcp` endpoint
(controlplane/http/mcp.py). A tool never blocks on a review: a pending one comes back at once
as `pending_review` with its id; `review_status` polls (or waits a bounded while), and the
retried call names the review (or the server remembers it per connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import mcp_types as types
from mcp.server import Server, ServerRequestContext

from cli.errors import CliError
from cli.protocols import DEFAULT, MCP_TOOL, SqlTools, sql_tools_for
from cli.session import Opened, ReviewPending
from gatehouse.v1 import client_pb2

log = logging.getLogger("gatehouse.mcp")

DEFAULT_ROWS = 200
MAX_ROWS = 10_000
DESCRIBE_ROWS = 5_000
"""Columns `describe` lists at most (then `truncated`)."""
MAX_OUTPUT = 64 * 1024
"""Bytes of stdout and of stderr a `run_command` result carries (then `*_truncated`)."""
MAX_STDIN = 1024 * 1024
"""Bytes of a command's stdin, and of an HTTP request's body."""
DEFAULT_BYTES = 64 * 1024
MAX_BYTES = 1024 * 1024
"""Bytes of an HTTP response's body `http_request` returns (then `truncated`)."""
MAX_HEADERS = 100
DEFAULT_TIMEOUT = 60.0
MAX_TIMEOUT = 600.0
KILL_GRACE = 5.0
"""Seconds a command has to report its exit after SIGKILL at its timeout."""
MAX_WAIT = 60.0
"""Seconds `review_status` may wait for a decision in one call."""
POLL = 1.0

PENDING = "pending_review"
REVIEW_ID = {
    "type": "string",
    "description": "Retry after this review (the id a pending_review result gave).",
}

TOOLS: tuple[types.Tool, ...] = (
    types.Tool(
        name="list_connections",
        description=(
            "The connections you may use and how: type (postgres, mysql, ssh, shell, http), "
            "the tool that runs requests on it, modes usable now, modes that need a review "
            "first and who reviews them."
        ),
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
    ),
    types.Tool(
        name="query",
        description=(
            "Run SQL on a database connection (postgres or mysql); recorded before it runs, "
            "refused by its guardrails with the rule's name. Returns columns, rows (at most "
            "max_rows, with `truncated`) and the command tag (postgres) or affected_rows "
            "(mysql); or status pending_review with a review_id."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "connection": {"type": "string"},
                "sql": {"type": "string"},
                "params": {
                    "type": "array",
                    "items": {"type": ["string", "number", "boolean", "null"]},
                    "description": "Values for $1, $2, … (postgres; one statement only).",
                },
                "max_rows": {"type": "integer", "minimum": 0, "maximum": MAX_ROWS},
                "review_id": REVIEW_ID,
            },
            "required": ["connection", "sql"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="run_command",
        description=(
            "Run a command on an ssh or shell connection (a string is a shell command line, "
            "an array an argv); recorded before it runs, refused by its guardrails. Returns "
            "exit_status, stdout and stderr (capped); or status pending_review."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "connection": {"type": "string"},
                "command": {
                    "oneOf": [
                        {"type": "string"},
                        {"type": "array", "items": {"type": "string"}, "minItems": 1},
                    ]
                },
                "stdin": {"type": "string"},
                "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TIMEOUT},
                "review_id": REVIEW_ID,
            },
            "required": ["connection", "command"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="describe",
        description=(
            "Schemas (databases, on mysql), tables and columns of a database connection (the "
            "catalogue query is recorded like any other); optionally of one schema or table."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "connection": {"type": "string"},
                "schema": {"type": "string"},
                "table": {"type": "string"},
                "review_id": REVIEW_ID,
            },
            "required": ["connection"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="http_request",
        description=(
            "Send one HTTP request on an http connection (the gateway adds the credential); "
            "recorded before it is forwarded, refused by its guardrails with the rule's name. "
            "Returns status, headers and the body as text (at most max_bytes, with "
            "`truncated`); or status pending_review."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "connection": {"type": "string"},
                "method": {
                    "type": "string",
                    "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
                },
                "path": {"type": "string", "description": "From /, with the query: /v1/x?q=1"},
                "headers": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                    "maxProperties": MAX_HEADERS,
                },
                "body": {"type": "string"},
                "max_bytes": {"type": "integer", "minimum": 0, "maximum": MAX_BYTES},
                "review_id": REVIEW_ID,
            },
            "required": ["connection", "method", "path"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="request_access",
        description=(
            "Ask for access to a connection whose rule needs a review: returns at once, "
            "status granted or pending_review with the review_id to follow with review_status."
        ),
        input_schema={
            "type": "object",
            "properties": {"connection": {"type": "string"}, "review_id": REVIEW_ID},
            "required": ["connection"],
            "additionalProperties": False,
        },
    ),
    types.Tool(
        name="review_status",
        description=(
            "The state of a review you requested: pending, approved (retry the call) or an "
            "error with the reviewer's reason once denied or expired. wait_s waits up to "
            f"{MAX_WAIT:.0f} s for a decision."
        ),
        input_schema={
            "type": "object",
            "properties": {
                "review_id": {"type": "string"},
                "wait_s": {"type": "number", "minimum": 0, "maximum": MAX_WAIT},
            },
            "required": ["review_id"],
            "additionalProperties": False,
        },
    ),
)
TOOL_NAMES = frozenset(t.name for t in TOOLS)


class ToolError(Exception):
    """The tool call failed; the message, with the reason, is what the agent reads."""


class Gateway(Protocol):
    """Where a tool's requests go, with the caller's credential."""

    async def open(self, connection: str, call: client_pb2.McpCall, retry: str) -> Opened:
        """An `exec` session that does not wait for a review (ReviewPending instead)."""
        ...

    async def connections(
        self, call: client_pb2.McpCall
    ) -> client_pb2.ListMyConnectionsResponse: ...

    async def reviews(self, call: client_pb2.McpCall) -> client_pb2.ListReviewsResponse: ...


class Tools:
    """The tools of one MCP connection: the reviews it waits on are remembered here, per
    connection, so that an agent that simply retries its call follows its review."""

    def __init__(
        self,
        gateway: Gateway,
        explain: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        self.gateway = gateway
        self.explain = explain  # turns the gateway's own failures into CliErrors
        self.reviews: dict[str, str] = {}

    async def call(self, tool: str, args: dict[str, Any], client: str = "") -> dict[str, Any]:
        if tool not in TOOL_NAMES:
            raise ToolError(f"unknown tool {tool!r}; the tools are {', '.join(sorted(TOOL_NAMES))}")
        if not isinstance(args, dict):
            raise ToolError("the arguments are a JSON object")
        call = client_pb2.McpCall(tool=tool, arguments=_recorded(args), client=client)
        try:
            with self.explain():
                if tool == "list_connections":
                    _only(args, ())
                    return await self._list_connections(call)
                if tool == "review_status":
                    return await self._review_status(args, call)
        except CliError as exc:
            raise ToolError(exc.message) from None
        connection = _text(args, "connection")
        try:
            with self.explain():
                return await self._on_connection(tool, connection, args, call)
        except ReviewPending as pending:
            self.reviews[connection] = pending.pending.review_id
            return _pending(pending.pending, connection)
        except CliError as exc:
            self.reviews.pop(connection, None)
            # A refusal may not name the connection (names are not for everyone): say it here.
            message = exc.message if connection in exc.message else f"{connection}: {exc.message}"
            raise ToolError(message) from None

    async def _on_connection(
        self, tool: str, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        if tool == "query":
            _only(args, ("connection", "sql", "params", "max_rows", "review_id"))
            return await self._query(connection, args, call)
        if tool == "describe":
            _only(args, ("connection", "schema", "table", "review_id"))
            return await self._describe(connection, args, call)
        if tool == "run_command":
            _only(args, ("connection", "command", "stdin", "timeout_s", "review_id"))
            return await self._run_command(connection, args, call)
        if tool == "http_request":
            _only(
                args, ("connection", "method", "path", "headers", "body", "max_bytes", "review_id")
            )
            return await self._http_request(connection, args, call)
        _only(args, ("connection", "review_id"))
        opened = await self._open(connection, args, call)
        opened.call.cancel()
        return {"status": "granted", "connection": connection}

    async def _open(
        self, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> Opened:
        retry = _optional_text(args, "review_id") or self.reviews.get(connection, "")
        opened = await self.gateway.open(connection, call, retry)
        self.reviews.pop(connection, None)
        return opened

    async def _list_connections(self, call: client_pb2.McpCall) -> dict[str, Any]:
        listing = await self.gateway.connections(call)
        return {
            "connections": [
                {
                    "name": c.name,
                    "type": c.type,
                    "tool": MCP_TOOL.get(c.type),
                    "modes": list(c.modes),
                    "review_modes": list(c.review_modes),
                    "reviewers": list(c.review_groups),
                }
                for c in listing.connections
            ]
        }

    async def _query(
        self, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        sql = _text(args, "sql")
        params = _params(args.get("params"))
        max_rows = _number(args, "max_rows", DEFAULT_ROWS, 0, MAX_ROWS, whole=True)
        async with self._session("query", connection, args, call) as opened:
            sql_tools = _sql_tools(connection, opened)
            return await sql_tools.query(opened, sql, params, int(max_rows))

    async def _describe(
        self, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        schema = _optional_text(args, "schema")
        table = _optional_text(args, "table")
        async with self._session("query", connection, args, call) as opened:
            sql_tools = _sql_tools(connection, opened)
            catalogue = await sql_tools.describe(opened, schema, table, DESCRIBE_ROWS)
        tables: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for schema_name, table_name, column, data_type, nullable in catalogue.rows:
            tables.setdefault((schema_name or "", table_name or ""), []).append(
                {"name": column, "type": data_type, "nullable": nullable == "YES"}
            )
        return {
            "tables": [
                {"schema": s, "name": t, "columns": columns} for (s, t), columns in tables.items()
            ],
            "truncated": catalogue.truncated,
            "session_id": opened.session_id,
        }

    @contextlib.asynccontextmanager
    async def _session(
        self, tool: str, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> AsyncIterator[Opened]:
        """A session on `connection` when `tool` is the one for its type (else the tool that
        is), cancelled when the tool does not see it to its end (a failure, or the MCP
        client's `notifications/cancelled`): left alone it would stay open to the target,
        unread and never ended."""
        opened = await self._open(connection, args, call)
        try:
            kind = opened.connection_type or DEFAULT
            fits = MCP_TOOL.get(kind)
            if fits != tool:
                use = f"use {fits}" if fits else "no tool here serves it"
                raise ToolError(f"{connection} is a {kind} connection: {use}")
            yield opened
        except BaseException:
            opened.call.cancel()
            raise

    async def _http_request(
        self, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        from cli.http import mcp as http

        method = _text(args, "method")
        path = _text(args, "path")
        headers = args.get("headers") or {}
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise ToolError("headers is an object of strings")
        if len(headers) > MAX_HEADERS:
            raise ToolError(f"headers holds at most {MAX_HEADERS} fields")
        body = _optional_text(args, "body")
        if body is not None and len(body.encode("utf-8", "replace")) > MAX_STDIN:
            raise ToolError(f"body is at most {MAX_STDIN} bytes")
        if "body" in args and body is None:
            body = ""  # an empty body is still a body: Content-Length: 0
        max_bytes = _number(args, "max_bytes", DEFAULT_BYTES, 0, MAX_BYTES, whole=True)
        prepared = http.prepare(method, path, headers, body)
        async with self._session("http_request", connection, args, call) as opened:
            return await http.request(opened, prepared, int(max_bytes))

    async def _run_command(
        self, connection: str, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        from cli.term import stream as term
        from cli.term.command import command_start

        command = args.get("command")
        if (
            isinstance(command, list)
            and all(isinstance(w, str) for w in command)
            and " ".join(command)  # an empty command line is a login shell to sshd
        ):
            start = command_start(command, None)
        elif isinstance(command, str) and command.strip():
            start = command_start([], command)
        else:
            raise ToolError("command is a non-empty string or an array of strings")
        stdin = args.get("stdin")
        if stdin is not None and not isinstance(stdin, str):
            raise ToolError("stdin is a string")
        try:
            # As its mcp.call event digests it: text that is not Unicode would be replaced
            # here and the target would get other bytes than the trail's digest says.
            data = (stdin or "").encode("utf-8")
        except UnicodeEncodeError:
            raise ToolError("stdin is Unicode text (it holds a lone surrogate)") from None
        if len(data) > MAX_STDIN:
            raise ToolError(f"stdin is at most {MAX_STDIN} bytes")
        timeout = _number(args, "timeout_s", DEFAULT_TIMEOUT, 0.001, MAX_TIMEOUT)
        output = Captured(MAX_OUTPUT)
        timed_out = False
        async with (
            self._session("run_command", connection, args, call) as opened,
            term.TermSession(opened) as session,
        ):
            relaying = asyncio.create_task(term.relay(session, start, _once(data), output))
            try:
                exit_ = await asyncio.wait_for(asyncio.shield(relaying), timeout)
            except TimeoutError:
                timed_out = True
                with contextlib.suppress(term.SessionClosed):
                    session.signal("KILL")
                try:
                    exit_ = await asyncio.wait_for(relaying, KILL_GRACE)
                except TimeoutError:
                    raise ToolError(
                        f"the command did not end within {timeout:g} s nor after SIGKILL; "
                        f"see `gatehouse sessions show {opened.session_id}`"
                    ) from None
            finally:
                if not relaying.done():
                    relaying.cancel()
                    await asyncio.gather(relaying, return_exceptions=True)
        if exit_.error:
            raise ToolError(f"{exit_.error} (exit status {exit_.status})")
        return {
            "exit_status": exit_.status,
            "stdout": output.out.decode("utf-8", "replace"),
            "stderr": output.err.decode("utf-8", "replace"),
            "stdout_truncated": output.out_total > len(output.out),
            "stderr_truncated": output.err_total > len(output.err),
            "timed_out": timed_out,
            "session_id": opened.session_id,
        }

    async def _review_status(
        self, args: dict[str, Any], call: client_pb2.McpCall
    ) -> dict[str, Any]:
        _only(args, ("review_id", "wait_s"))
        review_id = _text(args, "review_id")
        wait = _number(args, "wait_s", 0.0, 0.0, MAX_WAIT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            listing = await self.gateway.reviews(call)
            # Only the first look is the tool call's own event; the polls are not new calls.
            call = client_pb2.McpCall()
            review = next((r for r in listing.reviews if r.id == review_id and r.mine), None)
            if review is None:
                raise ToolError(f"no review {review_id} of yours")
            if review.status in ("denied", "expired", "cancelled"):
                # Remembered still: the retried call fails with this reason, then forgets it.
                who = f" by {review.decided_by}" if review.decided_by else ""
                reason = f": {review.reason}" if review.reason else ""
                raise ToolError(f"review {review_id} was {review.status}{who}{reason}")
            if review.status == "approved" or loop.time() >= deadline:
                break
            await asyncio.sleep(min(POLL, max(0.0, deadline - loop.time())))
        return {
            "review_id": review.id,
            "status": review.status if review.status == "approved" else "pending",
            "connection": review.connection,
            "reviewers": list(review.reviewer_groups),
            "expires": review.expires,
            "grant_until": review.grant_until or None,
        }


def _sql_tools(connection: str, opened: Opened) -> SqlTools:
    sql_tools = sql_tools_for(opened.connection_type)
    if sql_tools is None:  # a database type this MCP_TOOL lists and SQL_TOOLS does not
        raise ToolError(f"{connection}: query is not served on {opened.connection_type}")
    return sql_tools


class Captured:
    """A command's stdout and stderr, each kept up to `limit` bytes and counted whole."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()
        self.err = bytearray()
        self.out_total = 0
        self.err_total = 0

    async def stdout(self, data: bytes) -> None:
        self.out_total += len(data)
        self.out += data[: max(0, self.limit - len(self.out))]

    async def stderr(self, data: bytes) -> None:
        self.err_total += len(data)
        self.err += data[: max(0, self.limit - len(self.err))]


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


def _pending(pending: client_pb2.ReviewPending, connection: str) -> dict[str, Any]:
    return {
        "status": PENDING,
        "review_id": pending.review_id,
        "connection": connection,
        "rule": pending.rule,
        "reviewers": list(pending.reviewer_groups),
        "next": (
            f"someone of {', '.join(pending.reviewer_groups)} runs `gatehouse reviews approve "
            f"{pending.review_id}`; follow it with review_status, then call again"
        ),
    }


def _recorded(args: dict[str, Any]) -> str:
    """The arguments as the control plane records them (it redacts secrets in them); a
    command's stdin only as its length and SHA-256: it travels once, in the session."""
    stdin = args.get("stdin")
    if isinstance(stdin, str):
        data = stdin.encode("utf-8", "replace")
        args = {**args, "stdin": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    try:
        return json.dumps(args, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise ToolError("the arguments must be plain JSON values") from None


def _only(args: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        takes = ", ".join(allowed) or "no arguments"
        raise ToolError(f"unknown argument(s) {', '.join(unknown)}; this tool takes {takes}")


def _text(args: dict[str, Any], name: str) -> str:
    value = args.get(name)
    if not isinstance(value, str) or not value:
        raise ToolError(f"{name} is a non-empty string")
    return value


def _optional_text(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ToolError(f"{name} is a string")
    return value or None


def _number(
    args: dict[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    whole: bool = False,
) -> float:
    value = args.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise ToolError(f"{name} is {kind} from {low:g} to {high:g}")
    if whole and value != int(value):
        raise ToolError(f"{name} is a whole number")
    return float(value)


def _params(value: Any) -> list[str | None] | None:
    """Statement parameters as the text the server parses (JSON true is `true`)."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ToolError("params is an array")
    out: list[str | None] = []
    for item in value:
        if item is None or isinstance(item, str):
            out.append(item)
        elif isinstance(item, bool):
            out.append("true" if item else "false")
        elif isinstance(item, int | float):
            out.append(json.dumps(item))
        else:
            raise ToolError("params holds strings, numbers, booleans or null")
    return out


ToolsFor = Callable[[ServerRequestContext[Any, Any]], Awaitable[Tools]]


def build_server(tools_for: ToolsFor, version: str) -> Server[Any]:
    """The MCP server: the tools above; `tools_for` gives the caller's tools (on HTTP, it
    authenticates the request's bearer token). Every failure is a tool error with its
    reason; none ends the server."""

    async def list_tools(
        ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=list(TOOLS))

    async def call_tool(
        ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            tools = await tools_for(ctx)
            result = await tools.call(params.name, params.arguments or {}, _client(ctx))
        except ToolError as exc:
            return _error(str(exc))
        except Exception:
            log.exception("MCP tool %s failed", params.name)
            return _error(f"{params.name} failed inside gatehouse; see its log")
        text = json.dumps(result, ensure_ascii=False)
        return types.CallToolResult(
            content=[types.TextContent(text=text)], structured_content=result
        )

    return Server(
        "gatehouse",
        version=version,
        instructions=(
            "Audited access to databases and servers through Gatehouse. Start with "
            "list_connections. Every call is recorded with your person and agent identity "
            "before it runs. A pending_review result is not an error: follow it with "
            "review_status, then call again."
        ),
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _error(message: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=message)], is_error=True)


def _client(ctx: ServerRequestContext[Any, Any]) -> str:
    """The MCP client's name and version as it introduced itself (recorded, not trusted)."""
    params = getattr(ctx.session, "client_params", None)
    info = getattr(params, "client_info", None)
    if info is None:
        return ""
    return f"{getattr(info, 'name', '')}/{getattr(info, 'version', '')}".strip("/")
