"""`gatehouse admin …`: agents, the policy file, connections, machine tokens. Their options
and help are declared in cli.commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli.errors import USAGE, CliError
from cli.output import Format, echo, emit, emit_json
from cli.rpc import call


def agents_create(name: str, uses: int, ttl: int, controlplane: str | None, output: Format) -> None:
    """A join token that pins the control plane's CA, so the agent needs no CA file; `ttl`
    in seconds."""
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        request = admin_pb2.CreateAgentRequest(name=name, uses=uses, ttl_seconds=ttl)
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
        echo(response.join_token)
        times = "once" if response.uses == 1 else f"{response.uses} times"
        pinned = f"; it pins the CA {response.ca_pin}" if response.ca_pin else ""
        echo(
            f"Join token for agent {response.name!r}, usable {times} until {response.expires}"
            f"{pinned}. Start the agent with\n"
            f"  gatehouse agent run --controlplane {address} --name {response.name} "
            f"--token {response.join_token}",
            err=True,
        )


def agents_list(controlplane: str | None, output: Format) -> None:
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


def agents_revoke(name: str, instance: str, controlplane: str | None) -> None:
    """The whole agent (every instance and its join token), or one `instance` of it."""
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
        echo(f"instance {instance} of agent {name} revoked")
    else:
        echo(f"agent {name} revoked ({len(response.instances)} instance(s))")


def admin_apply(file: Path, controlplane: str | None, output: Format) -> None:
    """The control plane validates the file (errors name its line) and pushes each agent its
    part."""
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
        echo(f"warning: {warning}", err=True)
    if output is Format.json:
        emit_json(document)
        return
    echo(f"applied policy version {response.version}")
    for change in response.changes:
        echo(f"  {change}")
    notified = ", ".join(response.agents_notified) or "none online"
    echo(f"agents notified: {notified}")


def admin_connections_list(controlplane: str | None, output: Format) -> None:
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


def _token_document(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role,
        "created": info.created,
        "expires": info.expires or None,
        "revoked": info.revoked or None,
    }


def tokens_create(
    name: str, role: str, ttl: int | None, controlplane: str | None, output: Format
) -> None:
    """The secret is printed once; only its hash is stored. No `ttl`: no expiry."""
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    seconds = ttl or 0
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
    echo(response.secret)
    echo(
        f"Token {response.token.id} ({response.token.role}) for {name}; the secret above is "
        "shown once.",
        err=True,
    )


def tokens_list(controlplane: str | None, output: Format) -> None:
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


def tokens_revoke(token_id: str, controlplane: str | None) -> None:
    from cli import rpc
    from gatehouse.v1 import admin_pb2, admin_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        return await stub.RevokeToken(admin_pb2.RevokeTokenRequest(id=token_id), metadata=md)

    call(address, work)
    echo(f"token {token_id} revoked")
