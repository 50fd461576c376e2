"""`gatehouse tokens …`: delegated tokens, which let an AI agent act as you, limited and
expiring. Their options and help are declared in cli.commands."""

from __future__ import annotations

from typing import Any

from cli.output import Format, echo, emit, emit_json
from cli.rpc import call


def _document(info: Any) -> dict[str, Any]:
    return {
        "id": info.id,
        "actor": info.actor,
        "user": info.user,
        "connections": list(info.connections) or None,
        "role": info.role or "user",
        "created": info.created,
        "expires": info.expires or None,
        "revoked": info.revoked or None,
    }


def tokens_create(
    actor: str,
    ttl: int,
    connections: str | None,
    role: str,
    controlplane: str | None,
    output: Format,
) -> None:
    """The token acts as its creator for `actor`, `ttl` seconds long; its secret is printed
    once."""
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    scope = [c.strip() for c in connections.split(",") if c.strip()] if connections else []
    if connections is not None and not scope:
        from cli.errors import USAGE, CliError

        raise CliError("--connections names no connection", USAGE)
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        request = client_pb2.CreateDelegatedTokenRequest(
            actor=actor, ttl_seconds=ttl, connections=scope, role=role
        )
        return await stub.CreateDelegatedToken(request, metadata=md)

    response = call(address, work)
    if output is Format.json:
        emit_json({**_document(response.token), "secret": response.secret})
        return
    echo(response.secret)
    limited = ", ".join(response.token.connections) or "every connection you may use"
    echo(
        f"Token {response.token.id} ({response.token.role or 'user'}) for "
        f"{response.token.actor}, acting as "
        f"{response.token.user} on {limited} until {response.token.expires}; the secret above "
        "is shown once (give it to the agent as GATEHOUSE_TOKEN).",
        err=True,
    )


def tokens_list(controlplane: str | None, output: Format) -> None:
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.ListMyTokens(client_pb2.ListMyTokensRequest(), metadata=md)

    tokens = [_document(t) for t in call(address, work).tokens]
    emit(
        output,
        tokens,
        ["ID", "ACTOR", "USER", "ROLE", "CONNECTIONS", "EXPIRES", "REVOKED"],
        [
            [
                t["id"],
                t["actor"],
                t["user"],
                t["role"],
                ", ".join(t["connections"] or ["(all yours)"]),
                t["expires"],
                t["revoked"],
            ]
            for t in tokens
        ],
        empty="No delegated tokens: create one with `gatehouse tokens create --actor NAME`.",
    )


def tokens_revoke(token_id: str, controlplane: str | None) -> None:
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.RevokeMyToken(client_pb2.RevokeMyTokenRequest(id=token_id), metadata=md)

    call(address, work)
    echo(f"token {token_id} revoked")
