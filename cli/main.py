"""The `gatehouse` command. Verbs import what they need when they run, so that `exec` — what
an AI agent calls again and again — does not pay for the control plane's imports."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli.errors import USAGE, CliError
from cli.output import Format, emit, emit_json

T = TypeVar("T")

app = typer.Typer(
    name="gatehouse",
    help="Gatehouse: an access gateway that records every request before it reaches the target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
controlplane_app = typer.Typer(help="Run the control plane.", no_args_is_help=True)
agent_app = typer.Typer(help="Run an agent next to your targets.", no_args_is_help=True)
admin_app = typer.Typer(help="Administer agents, connections and policy.", no_args_is_help=True)
agents_app = typer.Typer(help="Enroll, list and revoke agents.", no_args_is_help=True)
connections_admin_app = typer.Typer(help="Connections as applied.", no_args_is_help=True)
audit_app = typer.Typer(help="Export and verify the audit trail.", no_args_is_help=True)
app.add_typer(controlplane_app, name="controlplane")
app.add_typer(agent_app, name="agent")
app.add_typer(admin_app, name="admin")
admin_app.add_typer(agents_app, name="agents")
admin_app.add_typer(connections_admin_app, name="connections")
app.add_typer(audit_app, name="audit")

ControlplaneOpt = Annotated[
    str | None,
    typer.Option(
        "--controlplane",
        envvar="GATEHOUSE_CONTROLPLANE",
        help="host:port of the control plane's gRPC listener.",
        show_default="127.0.0.1:8443",
    ),
]
OutputOpt = Annotated[
    Format, typer.Option("--output", "-o", help="table (default) or json.", case_sensitive=False)
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="GATEHOUSE_DATA_DIR",
        help="State directory.",
        show_default="~/.local/share/gatehouse",
    ),
]


def _data_dir(value: Path | None) -> Path:
    return (value or Path.home() / ".local" / "share" / "gatehouse").expanduser()


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)


async def _with_channel(address: str, work: Any) -> Any:
    from cli import rpc

    async with rpc.channel(address) as channel:
        with rpc.explained(address):
            return await work(channel)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ---- control plane --------------------------------------------------------------------------


@controlplane_app.command("serve")
def controlplane_serve(
    dev: Annotated[
        bool, typer.Option("--dev", help="SQLite, plaintext on loopback, admin token in DIR.")
    ] = False,
    data_dir: DataDirOpt = None,
    grpc_listen: Annotated[
        str, typer.Option(envvar="GATEHOUSE_GRPC_LISTEN", help="host:port for gRPC.")
    ] = "127.0.0.1:8443",
    http_listen: Annotated[
        str, typer.Option(envvar="GATEHOUSE_HTTP_LISTEN", help="host:port for health and export.")
    ] = "127.0.0.1:8080",
    database_url: Annotated[
        str | None,
        typer.Option(envvar="GATEHOUSE_DATABASE_URL", help="SQLAlchemy URL of the store."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the control plane: apply migrations, listen, relay and record.

    Example: gatehouse controlplane serve --dev --data-dir ./data
    """
    from controlplane.errors import GatehouseError
    from controlplane.server import Settings, serve

    _logging(verbose)
    settings = Settings(
        data_dir=_data_dir(data_dir),
        grpc_listen=grpc_listen,
        http_listen=http_listen,
        database_url=database_url,
        dev=dev,
    )
    try:
        _run(serve(settings))
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot start the control plane: {exc}") from None


# ---- agent ----------------------------------------------------------------------------------


@agent_app.command("run")
def agent_run(
    controlplane: ControlplaneOpt = None,
    token: Annotated[
        str | None,
        typer.Option(envvar="GATEHOUSE_AGENT_TOKEN", help="Join token or agent credential."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Agent name (as created by the admin).")] = None,
    insecure: Annotated[
        bool, typer.Option("--insecure", help="Plaintext gRPC; only to a loopback address.")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(envvar="GATEHOUSE_CA_FILE", help="CA of the control plane's certificate."),
    ] = None,
    data_dir: DataDirOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run an agent: dial out to the control plane and open targets on its orders.

    Example: gatehouse agent run --controlplane 127.0.0.1:8443 --token ghj_… --name vpc-1 --insecure
    """
    from agent.runner import AgentFatal, AgentSettings, run_agent
    from cli.rpc import controlplane_address, is_loopback

    address = controlplane_address(controlplane)
    if not token:
        raise CliError("--token (or GATEHOUSE_AGENT_TOKEN) is required", USAGE)
    if not name:
        raise CliError("--name is required: the name the agent was created with", USAGE)
    if insecure and not is_loopback(address):
        raise CliError(
            f"--insecure is refused for {address}: plaintext is allowed only to loopback", USAGE
        )
    _logging(verbose)
    settings = AgentSettings(address, token, name, _data_dir(data_dir), insecure, ca_file)
    try:
        _run(run_agent(settings))
    except AgentFatal as exc:
        raise CliError(str(exc)) from None


# ---- admin ----------------------------------------------------------------------------------


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Argument(help="Agent name, e.g. vpc-eu-1.")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create an agent and print its one-time join token.

    Example: gatehouse admin agents create vpc-eu-1
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.CreateAgent(admin_pb2.CreateAgentRequest(name=name), metadata=md)

    response = _run(_with_channel(address, work))
    if output is Format.json:
        emit_json({"name": response.name, "join_token": response.join_token})
    else:
        typer.echo(response.join_token)
        typer.echo(
            f"One-time join token for agent {response.name!r}: start the agent with\n"
            f"  gatehouse agent run --controlplane {address} --name {response.name} "
            f"--token {response.join_token}",
            err=True,
        )


@agents_app.command("list")
def agents_list(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """Show every agent: online/offline, version, last seen.

    Example: gatehouse admin agents list -o json
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.ListAgents(admin_pb2.ListAgentsRequest(), metadata=md)

    response = _run(_with_channel(address, work))
    agents = [
        {
            "name": a.name,
            "status": a.status,
            "version": a.version,
            "hostname": a.hostname,
            "last_seen": a.last_seen or None,
            "created": a.created,
        }
        for a in response.agents
    ]
    emit(
        output,
        agents,
        ["NAME", "STATUS", "VERSION", "HOST", "LAST SEEN"],
        [[a["name"], a["status"], a["version"], a["hostname"], a["last_seen"]] for a in agents],
        empty="No agents yet: create one with `gatehouse admin agents create NAME`.",
    )


@agents_app.command("revoke")
def agents_revoke(
    name: Annotated[str, typer.Argument(help="The agent to revoke.")],
    controlplane: ControlplaneOpt = None,
) -> None:
    """Revoke an agent: its credential stops working and its streams are closed.

    Example: gatehouse admin agents revoke vpc-eu-1
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.RevokeAgent(admin_pb2.RevokeAgentRequest(name=name), metadata=md)

    _run(_with_channel(address, work))
    typer.echo(f"agent {name} revoked")


@admin_app.command("apply")
def admin_apply(
    file: Annotated[Path, typer.Option("--file", "-f", help="The policy file (YAML).")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Apply a policy file: connections, guardrails, masking, access.

    Example: gatehouse admin apply -f gatehouse.yaml
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    try:
        content = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CliError(f"cannot read {file}: {exc.strerror}", USAGE) from None
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.ApplyRequest(filename=str(file), content=content)
        return await stub.Apply(request, metadata=md)

    response = _run(_with_channel(address, work))
    document = {
        "version": response.version,
        "changes": list(response.changes),
        "agents_notified": list(response.agents_notified),
    }
    if output is Format.json:
        emit_json(document)
        return
    typer.echo(f"applied policy version {response.version}")
    for change in response.changes:
        typer.echo(f"  {change}")
    notified = ", ".join(response.agents_notified) or "none online"
    typer.echo(f"agents notified: {notified}")


@connections_admin_app.command("list")
def admin_connections_list(
    controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table
) -> None:
    """List every connection of the applied policy and its agent's status.

    Example: gatehouse admin connections list
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.ListConnections(admin_pb2.ListConnectionsRequest(), metadata=md)

    response = _run(_with_channel(address, work))
    items = [
        {
            "name": c.name,
            "type": c.type,
            "agent": c.agent,
            "agent_status": c.agent_status,
            "audit": c.audit,
        }
        for c in response.connections
    ]
    emit(
        output,
        items,
        ["NAME", "TYPE", "AGENT", "AGENT STATUS", "AUDIT"],
        [list(i.values()) for i in items],
        empty="No connections: apply a policy with `gatehouse admin apply -f gatehouse.yaml`.",
    )


# ---- exec -----------------------------------------------------------------------------------


@app.command("exec")
def exec_(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    command: Annotated[str, typer.Option("--command", "-c", help="SQL to run.")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Run one request through the gateway; it is recorded before it runs.

    Example: gatehouse exec pg-prod -c 'select 41+1 as answer' -o json
    """
    from cli import pgexec, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> pgexec.Outcome:
        return await pgexec.run_sql(channel, md, connection, command)

    try:
        outcome = _run(_with_channel(address, work))
    except pgexec.PgError as exc:
        for notice in exc.outcome.notices if exc.outcome else []:
            typer.echo(f"{notice.severity}:  {notice.message}", err=True)
        raise
    for notice in outcome.notices:
        typer.echo(f"{notice.severity}:  {notice.message}", err=True)
    _print_results(outcome, output)
    if outcome.error is not None:
        raise pgexec.PgError(outcome.error, outcome)


def _print_results(outcome: Any, output: Format) -> None:
    from cli import pgexec

    results: list[pgexec.ResultSet] = outcome.results
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
            emit(output, None, [c.name for c in result.columns], pgexec.text_rows(result))
            count = len(result.rows)
            typer.echo(f"({count} row{'s' if count != 1 else ''})")
        else:
            typer.echo(result.command)


# ---- audit ----------------------------------------------------------------------------------


@audit_app.command("export")
def audit_export(
    after: Annotated[int, typer.Option(help="Start after this seq (the cursor).")] = 0,
    limit: Annotated[int | None, typer.Option(help="At most this many events.")] = None,
    types: Annotated[
        str | None, typer.Option(help="Comma-separated event types, e.g. db.query,db.result.")
    ] = None,
    controlplane: ControlplaneOpt = None,
) -> None:
    """Print audit events as NDJSON, in seq order.

    Example: gatehouse audit export --after 1042 --limit 100
    """
    from cli import auditcmd, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    kinds = [t.strip() for t in types.split(",") if t.strip()] if types else None

    async def work(channel: Any) -> int:
        return await auditcmd.export(channel, md, after=after, limit=limit, types=kinds)

    _run(_with_channel(address, work))


@audit_app.command("verify")
def audit_verify(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """Walk the hash chain; exit 1 naming the first broken link.

    Example: gatehouse audit verify
    """
    from cli import auditcmd, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        return await auditcmd.verify(channel, md)

    report = _run(_with_channel(address, work))
    broken = report.broken
    document = {
        "ok": broken is None,
        "checked": report.checked,
        "last_seq": report.last_seq,
        "last_hash": report.last_hash,
        "broken": None if broken is None else {"seq": broken.seq, "reason": broken.reason},
    }
    if output is Format.json:
        emit_json(document)
    elif broken is None:
        typer.echo(f"ok: {report.checked} events, chain intact up to seq {report.last_seq}")
    if broken is not None:
        raise CliError(f"chain broken at seq {broken.seq}: {broken.reason}")


def run() -> None:
    """Entry point: run the app, turning CliError into its message and exit status."""
    try:
        app()
    except CliError as exc:
        typer.echo(
            f"error: {exc.message}"
            if not exc.message.startswith(("ERROR", "FATAL"))
            else exc.message,
            err=True,
        )
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    run()
