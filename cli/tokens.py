"""`gatehouse tokens …`: delegated tokens, which let an AI agent act as you, limited and
expiring."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit, emit_json

tokens_app = typer.Typer(
    help="Delegated tokens: let an AI agent act as you, limited and expiring.",
    no_args_is_help=True,
)


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


@tokens_app.command("create")
def tokens_create(
    actor: Annotated[str, typer.Option(help="Who uses the token, e.g. devin.")],
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 30m, 8h, 7d.")] = "8h",
    connections: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated connections (globs) it is limited to; default: all you may use."
        ),
    ] = None,
    role: Annotated[
        str,
        typer.Option(
            help="user (default), or admin: only an admin may give it, it is recorded, and it "
            "holds only while you are still an admin."
        ),
    ] = "user",
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Create a token that acts as you for an AI agent and print its secret once.

    Every event of a session opened with it names you as `user` and the agent as `actor`.
    It has your groups as they are at each use (never more than today's) and the `user` role.

    Example: gatehouse tokens create --actor devin --ttl 8h --connections pg-prod
    """
    from cli import rpc
    from cli.options import parse_duration
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    seconds = parse_duration(ttl)
    scope = [c.strip() for c in connections.split(",") if c.strip()] if connections else []
    if connections is not None and not scope:
        from cli.errors import USAGE, CliError

        raise CliError("--connections names no connection", USAGE)
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        request = client_pb2.CreateDelegatedTokenRequest(
            actor=actor, ttl_seconds=seconds, connections=scope, role=role
        )
        return await stub.CreateDelegatedToken(request, metadata=md)

    response = call(address, work)
    if output is Format.json:
        emit_json({**_document(response.token), "secret": response.secret})
        return
    typer.echo(response.secret)
    limited = ", ".join(response.token.connections) or "every connection you may use"
    typer.echo(
        f"Token {response.token.id} ({response.token.role or 'user'}) for "
        f"{response.token.actor}, acting as "
        f"{response.token.user} on {limited} until {response.token.expires}; the secret above "
        "is shown once (give it to the agent as GATEHOUSE_TOKEN).",
        err=True,
    )


@tokens_app.command("list")
def tokens_list(controlplane: ControlplaneOpt = None, output: OutputOpt = Format.table) -> None:
    """List the delegated tokens you created (never their secrets).

    Example: gatehouse tokens list -o json
    """
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


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The token's id.")],
    controlplane: ControlplaneOpt = None,
) -> None:
    """Revoke a delegated token: new sessions are refused at once, live ones end within
    seconds.

    Example: gatehouse tokens revoke 6f1c…
    """
    from cli import rpc
    from gatehouse.v1 import client_pb2, client_pb2_grpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.RevokeMyToken(client_pb2.RevokeMyTokenRequest(id=token_id), metadata=md)

    call(address, work)
    typer.echo(f"token {token_id} revoked")
