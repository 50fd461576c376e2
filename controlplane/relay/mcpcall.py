"""The `mcp.call` event: one per MCP tool call, before anything the call does.

An AI agent's MCP server (`gatehouse mcp`, or the control plane's own `/mcp`) names the tool
and its arguments in the request that carries the call (`McpCall` on a session's `open`, on
`ListConnections` or `ListReviews`). The control plane records them as the caller's event —
`user` the person, `actor` the agent, from its own authentication — and every event of the
session the call opens carries `"mcp_call": {"seq", "id"}` of it, so a reader goes from a
statement to the tool call that sent it and back.

The arguments are recorded redacted as the statement they carry would be: password literals
in `sql` as `'***'` (the same parse as the connection's `db.query`: MySQL's own on mysql),
`params` through the connection's parameter detectors, `stdin` and an HTTP `body` as their
length and SHA-256 only (the command's and the request's own events carry what they may of
them), an HTTP request's credential headers and query values as `http.request` has them,
a `command` (a text or an argv) with the secrets on its command line masked as its
`ssh.exec`/`shell.command` event has them; then the event says `masked: true`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controlplane.audit.events import JSON, draft
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.errors import InvalidArgument
from controlplane.policy import mysql_sql
from controlplane.policy.command_secrets import Masking
from controlplane.policy.statement_secrets import redact_statement
from controlplane.relay.http.events import redacted_headers, redacted_query
from gatehouse.v1 import client_pb2
from redact.detectors import DetectorSet

MAX_ARGUMENTS = 1024 * 1024
"""Bytes of a call's arguments (JSON text); a larger call is refused before anything runs."""
MAX_TOOL = 64
"""Characters of a tool's name."""
DEFAULT_DETECTORS = ("secret",)


def present(call: client_pb2.McpCall | None) -> bool:
    """Whether a request carries a tool call (an empty message means none)."""
    return call is not None and bool(call.tool)


def arguments(
    call: client_pb2.McpCall, detectors: DetectorSet | None, connection_type: str | None = None
) -> JSON:
    """The call's arguments as they may be recorded; InvalidArgument for ones that are not
    a JSON object or are too large."""
    return recorded_arguments(call, detectors, connection_type)[0]


def recorded_arguments(
    call: client_pb2.McpCall, detectors: DetectorSet | None, connection_type: str | None = None
) -> tuple[JSON, bool]:
    """As `arguments`, and whether a secret was masked on the command line it carries."""
    if len(call.tool) > MAX_TOOL or not call.tool.isprintable():
        raise InvalidArgument(f"an MCP tool name is printable and at most {MAX_TOOL} characters")
    if len(call.arguments.encode("utf-8", "surrogatepass")) > MAX_ARGUMENTS:
        raise InvalidArgument(f"an MCP tool call's arguments are at most {MAX_ARGUMENTS} bytes")
    try:
        parsed = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        raise InvalidArgument("an MCP tool call's arguments are not JSON") from None
    if not isinstance(parsed, dict):
        raise InvalidArgument("an MCP tool call's arguments are a JSON object")
    return _redacted(parsed, detectors or DetectorSet(DEFAULT_DETECTORS), connection_type)


def _redacted(
    args: dict[str, Any], detectors: DetectorSet, connection_type: str | None
) -> tuple[JSON, bool]:
    out = dict(args)
    masked = False
    command = out.get("command")
    if isinstance(command, str):
        text = Masking.of_text(command)
        out["command"], masked = text.text, text.masked
    elif isinstance(command, list) and all(isinstance(word, str) for word in command):
        argv = Masking.of_argv(command)
        out["command"], masked = list(argv.argv or ()), argv.masked
    sql = out.get("sql")
    if isinstance(sql, str):
        # MySQL's secrets (`IDENTIFIED BY '…'`) are not PostgreSQL's: an unknown type gets both.
        if connection_type != "mysql":
            sql = redact_statement(sql)
        if connection_type != "postgres":
            sql = mysql_sql.redact(sql)
        out["sql"] = sql
    params = out.get("params")
    if isinstance(params, list):
        out["params"] = [_masked(p, detectors) for p in params]
    stdin = out.get("stdin")
    if isinstance(stdin, str):
        out["stdin"] = _digest(stdin)
    body = out.get("body")
    if isinstance(body, str):
        out["body"] = _digest(body)
    headers = out.get("headers")
    if isinstance(headers, dict):
        out["headers"] = {
            name: _masked_header(name, value, detectors) for name, value in headers.items()
        }
    path = out.get("path")
    if isinstance(path, str) and "?" in path:
        target, query = path.split("?", 1)
        out["path"] = f"{target}?{redacted_query(query, detectors)}"
    return out, masked


def _digest(text: str) -> JSON:
    data = text.encode("utf-8", "surrogatepass")
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _masked_header(name: str, value: Any, detectors: DetectorSet) -> Any:
    if not isinstance(value, str):
        return value
    return redacted_headers(((name, value),), detectors)[0][1]


def _masked(value: Any, detectors: DetectorSet) -> Any:
    """A parameter as its event may have it: a number is masked as the text the server gets
    (the tool sends it as JSON writes it), so a card number cannot pass as a number."""
    if isinstance(value, bool) or not detectors:
        return value
    if isinstance(value, int | float):
        text = json.dumps(value)
        masked = detectors.mask(text)
        return value if masked is None else masked
    if not isinstance(value, str):
        return value
    masked = detectors.mask(value)
    return value if masked is None else masked


async def record(
    audit: AuditWriter,
    identity: Identity,
    call: client_pb2.McpCall,
    source: JSON,
    *,
    connection: str | None = None,
    detectors: DetectorSet | None = None,
    connection_type: str | None = None,
) -> JSON:
    """Commit the call's `mcp.call` event (before anything it does); returns the reference
    the events it causes carry: `{"seq", "id"}`."""
    recorded, masked = recorded_arguments(call, detectors, connection_type)
    event = draft(
        "mcp.call",
        identity=identity,
        source=source or None,
        connection={"name": connection} if connection else None,
        tool=call.tool,
        arguments=recorded,
        masked=True if masked else None,
        mcp_client=call.client[:200] or None,
    )
    seq = await audit.commit(event)
    return {"seq": seq, "id": event.body["id"]}
