"""`gatehouse admin …`: agents, the policy file, connections."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from cli.errors import USAGE, CliError
from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit, emit_json

admin_app = typer.Typer(help="Administer agents, connections and policy.", no_args_is_help=True)
agents_app = typer.Typer(help="Enroll, list and revoke agents.", no_args_is_help=True)
connections_admin_app = typer.Typer(help="Connections as applied.", no_args_is_help=True)
admin_app.add_typer(agents_app, name="agents")
admin_app.add_typer(connections_admin_app, name="connections")


@agents_app.command("create")
def agents_create(
    name: Annotated[str, typer.Argument(help="Agent name, e.g. vpc-eu-1.")],
    uses: Annotated[
        int,
        typer.Option(
            "--uses", min=1, help="How many enrollments the join token allows (re-joins)."
        ),
    ] = 1,
    ttl: Annotated[
        str, typer.Option("--ttl", help="How long the join token works (30m, 24h, 7d).")
    ] = "1h",
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create an agent and print its join token, which carries the pin of the control
    plane's CA: the agent needs no CA file.

    Example: gatehouse admin agents create vpc-eu-1 --uses 10 --ttl 24h
    """
    from cli.options import parse_duration

    ttl_seconds = parse_duration(ttl)
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateAgentRequest(name=name, uses=uses, ttl_seconds=ttl_seconds)
        return await stub.CreateAgent(request, metadata=md)

    response = call(address, work)
    if output is Format.json:
        emit_json(
            {
                "name": response.name,
                "join_token": response.join_token,
                "ca_pin": response.ca_pin or None,
                "uses": response.uses,
                "expires": response.expires,
            }
        )
    else:
        typer.echo(response.join_token)
        times = "once" if response.uses == 1 else f"{response.uses} times"
        pinned = f"; it pins the CA {response.ca_pin}" if response.ca_pin else ""
        typer.echo(
            f"Join token for agent {response.name!r}, usable {times} until {response.expires}"
            f"{pinned}. Start the agent with\n"
            f"  gatehouse agent run --controlplane {address} --name {response.name} "
            f"--token {response.join_token}",
            err=True,
        )


@agents_app.command("list")
def agents_list(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """Show every agent instance: online/offline, version, host, replica, last seen.

    Example: gatehouse admin agents list -o json
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.ListAgents(admin_pb2.ListAgentsRequest(), metadata=md)

    response = call(address, work)
    agents = [
        {
            "name": a.name,
            "instance": a.instance_id or None,
            "status": a.status,
            "version": a.version,
            "hostname": a.hostname,
            "replica": a.replica or None,
            "last_seen": a.last_seen or None,
            "created": a.created,
            "cert_serial": a.cert_serial or None,
            "cert_expires": a.cert_expires or None,
        }
        for a in response.agents
    ]
    emit(
        output,
        agents,
        ["NAME", "INSTANCE", "STATUS", "VERSION", "HOST", "REPLICA", "LAST SEEN", "CERT EXPIRES"],
        [
            [
                a["name"],
                a["instance"],
                a["status"],
                a["version"],
                a["hostname"],
                a["replica"],
                a["last_seen"],
                a["cert_expires"],
            ]
            for a in agents
        ],
        empty="No agents yet: create one with `gatehouse admin agents create NAME`.",
    )


@agents_app.command("revoke")
def agents_revoke(
    name: Annotated[str, typer.Argument(help="The agent to revoke.")],
    instance: Annotated[
        str,
        typer.Option(
            "--instance", help="Revoke only this instance (see `agents list`), not the agent."
        ),
    ] = "",
    controlplane: ControlplaneOpt = None,
) -> None:
    """Revoke an agent (every instance and its join token), or one instance of it: their
    credentials stop working and their streams are closed on every replica.

    Example: gatehouse admin agents revoke vpc-eu-1 --instance 3f2a9c01b7de
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.RevokeAgentRequest(name=name, instance_id=instance)
        return await stub.RevokeAgent(request, metadata=md)

    response = call(address, work)
    if instance:
        typer.echo(f"instance {instance} of agent {name} revoked")
    else:
        typer.echo(f"agent {name} revoked ({len(response.instances)} instance(s))")


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

    response = call(address, work)
    document = {
        "version": response.version,
        "changes": list(response.changes),
        "agents_notified": list(response.agents_notified),
        "warnings": list(response.warnings),
    }
    for warning in response.warnings:  # on stderr in both formats: stdout may be parsed
        typer.echo(f"warning: {warning}", err=True)
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

    response = call(address, work)
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


tokens_app = typer.Typer(
    help="Tokens for machines, e.g. a SIEM's audit-reader.", no_args_is_help=True
)
admin_app.add_typer(tokens_app, name="tokens")


def _token_document(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role,
        "created": info.created,
        "expires": info.expires or None,
        "revoked": info.revoked or None,
    }


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="Who holds it, e.g. splunk.")],
    role: Annotated[str, typer.Option(help="audit-reader (read the trail only) or admin.")] = (
        "audit-reader"
    ),
    ttl: Annotated[str | None, typer.Option(help="Lifetime, e.g. 90d; none: no expiry.")] = None,
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a token and print its secret once (only its hash is stored).

    Example: gatehouse admin tokens create splunk --role audit-reader --ttl 90d
    """
    from cli import rpc
    from cli.options import parse_duration
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    seconds = parse_duration(ttl) if ttl else 0
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateTokenRequest(name=name, role=role, ttl_seconds=seconds)
        return await stub.CreateToken(request, metadata=md)

    response = call(address, work)
    if output is Format.json:
        emit_json({**_token_document(response.token), "secret": response.secret})
        return
    typer.echo(response.secret)
    typer.echo(
        f"Token {response.token.id} ({response.token.role}) for {name}; the secret above is "
        "shown once.",
        err=True,
    )


@tokens_app.command("list")
def tokens_list(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """List machine tokens (never their secrets).

    Example: gatehouse admin tokens list -o json
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.ListTokens(admin_pb2.ListTokensRequest(), metadata=md)

    tokens = [_token_document(t) for t in call(address, work).tokens]
    emit(
        output,
        tokens,
        ["ID", "NAME", "ROLE", "CREATED", "EXPIRES", "REVOKED"],
        [[t["id"], t["name"], t["role"], t["created"], t["expires"], t["revoked"]] for t in tokens],
        empty="No tokens.",
    )


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id.")],
    controlplane: ControlplaneOpt = None,
) -> None:
    """Revoke a token: it stops working at once.

    Example: gatehouse admin tokens revoke 6f1c…
    """
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.RevokeToken(admin_pb2.RevokeTokenRequest(id=token_id), metadata=md)

    call(address, work)
    typer.echo(f"token {token_id} revoked")
