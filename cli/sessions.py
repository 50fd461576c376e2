"""`gatehouse sessions list | show`: who opened what, and one session's events in order.
`replay` lives in cli/replay.py; the options and help in cli.commands."""

from __future__ import annotations

import json
from typing import Any

from cli.output import Format, echo, emit, emit_json
from cli.rpc import call


def session_document(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "connection": info.connection,
        "type": info.connection_type,
        "agent": info.agent,
        "mode": info.mode,
        "user": info.user,
        "actor": info.actor or None,
        "source_ip": info.source_ip,
        "client": info.client,
        "started": info.started,
        "ended": info.ended or None,
        "end_reason": info.end_reason or None,
        "recorded": info.recorded,
    }


def sessions_list(
    user: str | None,
    connection: str | None,
    since: str | None,
    type_: str | None,
    limit: int,
    controlplane: str | None,
    output: Format,
) -> None:
    from cli import rpc
    from gatehouse.v1 import sessions_pb2, sessions_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    request = sessions_pb2.ListSessionsRequest(
        user=user or "",
        connection=connection or "",
        since=since or "",
        type=type_ or "",
        limit=limit,
    )

    async def work(channel: Any) -> Any:
        return await sessions_pb2_grpc.SessionServiceStub(channel).ListSessions(
            request, metadata=md
        )

    sessions = [session_document(s) for s in call(address, work).sessions]
    emit(
        output,
        sessions,
        ["ID", "CONNECTION", "USER", "ACTOR", "MODE", "STARTED", "ENDED"],
        [
            [s["id"], s["connection"], s["user"], s["actor"], s["mode"], s["started"], s["ended"]]
            for s in sessions
        ],
        empty="No sessions match.",
    )


def sessions_show(session_id: str, controlplane: str | None, output: Format) -> None:
    from cli import rpc
    from gatehouse.v1 import sessions_pb2, sessions_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        return await sessions_pb2_grpc.SessionServiceStub(channel).GetSession(
            sessions_pb2.GetSessionRequest(id=session_id), metadata=md
        )

    response = call(address, work)
    events = [{**json.loads(e.body), "hash": e.hash} for e in response.events]
    if output is Format.json:
        emit_json({"session": session_document(response.session), "events": events})
        return
    info = session_document(response.session)
    echo(
        f"session {info['id']}: {info['user']} on {info['connection']} ({info['type']}, "
        f"{info['mode']}) from {info['source_ip']} with {info['client']}"
    )
    emit(output, None, ["SEQ", "TIME", "TYPE", "DETAIL"], [_row(e) for e in events])


def _row(event: dict[str, Any]) -> list[Any]:
    return [event["seq"], event["time"], event["type"], event_detail(event)]


def event_detail(event: dict[str, Any]) -> str:
    """One line a person can read: the statement or command, its result, or why the session
    ended."""
    if "request" in event:
        decision = event.get("decision", {}).get("result", "")
        request = event["request"]
        text = (
            request.get("statement")
            or request.get("command")
            or " ".join(request.get("argv", []))
            or (f"subsystem {request['subsystem']}" if request.get("subsystem") else "")
            or ("terminal" if request.get("pty") else "")
        )
        return f"{text}  [{decision}]" if decision and decision != "allow" else str(text)
    if "result" in event:
        result = event["result"]
        if "exit_code" in result:
            ended = f"→ exit {result['exit_code']}"
            if result.get("error"):
                ended += f": {result['error']}"
            return f"{ended}, {result.get('duration_ms')} ms"
        if result.get("error"):
            return f"→ error {result['error']}: {result.get('message', '')}"
        rows = result.get("rows")
        return f"→ {result.get('command', 'ok')}, {rows} rows, {result.get('duration_ms')} ms"
    if "input" in event:
        line = event["input"].get("line")
        return "(a line typed without echo)" if line is None else f"typed: {line}"
    if event["type"] == "session.end":
        return f"{event.get('reason', '')}, {event.get('statements', 0)} statements"
    return ""
