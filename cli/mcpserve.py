"""`gatehouse mcp`: the MCP tools (cli.mcptools) on stdio, with the caller's credential, and
`gatehouse mcp config`, the snippet an MCP client needs to start it.

The credential is read for every tool call (GATEHOUSE_TOKEN — a delegated token, so that
events carry the person as `user` and the agent as `actor` — or the stored login, refreshed
as it nears expiry), over one channel to the control plane for the server's life. Stdout is
the MCP channel: nothing else is written to it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from cli.errors import USAGE, CliError

CLIENTS = ("claude", "cursor", "vscode")


def mcp(controlplane: str | None) -> int:
    """Serve MCP on stdin/stdout until the client closes it."""
    from cli import rpc

    address = rpc.controlplane_address(controlplane)
    rpc.metadata()  # no credential at all: say so now, not at the first tool call
    rpc.run(_serve(address))
    return 0


async def _serve(address: str) -> None:

    from mcp.server.stdio import stdio_server

    from cli import __version__, rpc
    from cli.mcptools import Tools, build_server

    async with rpc.channel(address) as channel:
        tools = Tools(GrpcGateway(channel), lambda: rpc.explained(address))

        async def tools_for(_ctx: Any) -> Tools:
            return tools

        server = build_server(tools_for, __version__)
        async with stdio_server() as (read, write):
            await server.run(read, write, server.create_initialization_options())


class GrpcGateway:
    """Tool requests over the CLI's channel, each with the credential as it is now."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    async def open(self, connection: str, call: Any, retry: str) -> Any:
        from cli import __version__, rpc
        from cli.session import open_session

        return await open_session(
            self.channel,
            rpc.metadata(),
            connection,
            "exec",
            f"gatehouse-cli/{__version__} mcp",
            no_wait=True,
            retry=retry,
            mcp=call,
        )

    async def connections(self, call: Any) -> Any:
        from cli import rpc
        from gatehouse.v1 import client_pb2, client_pb2_grpc

        stub = client_pb2_grpc.ClientServiceStub(self.channel)
        request = client_pb2.ListMyConnectionsRequest(mcp=call)
        return await stub.ListConnections(request, metadata=rpc.metadata())

    async def reviews(self, call: Any) -> Any:
        from cli import rpc
        from gatehouse.v1 import client_pb2, client_pb2_grpc

        stub = client_pb2_grpc.ClientServiceStub(self.channel)
        request = client_pb2.ListReviewsRequest(mcp=call if call.tool else None)
        return await stub.ListReviews(request, metadata=rpc.metadata())


def mcp_config(client: str, url: str | None, controlplane: str | None) -> None:
    """Print the configuration an MCP client needs: `gatehouse mcp` on stdio, or with
    `--url` the control plane's remote `/mcp` endpoint (the client logs in with OAuth)."""
    if client not in CLIENTS:
        raise CliError(f"--client is one of {', '.join(CLIENTS)}, not {client!r}", USAGE)
    document = config_document(client, url, controlplane)
    sys.stdout.write(json.dumps(document, indent=2) + "\n")


def config_document(client: str, url: str | None, controlplane: str | None) -> dict[str, Any]:
    """The snippet for `client`: Claude Code's `.mcp.json`, Cursor's `.cursor/mcp.json`,
    VS Code's `.vscode/mcp.json`. The token is the environment's GATEHOUSE_TOKEN at the
    client's start (a delegated token for the agent), never written here; without one the
    stored login is used."""
    if url is not None:
        if not url.startswith(("https://", "http://")):
            raise CliError(f"--url is the control plane's https://HOST:PORT/mcp, not {url}", USAGE)
        remote: dict[str, Any] = {"type": "http", "url": url}
        if client == "cursor":
            remote = {"url": url}
        key = "servers" if client == "vscode" else "mcpServers"
        return {key: {"gatehouse": remote}}
    from cli import rpc
    from cli.profiles import selected

    command = shutil.which("gatehouse") or os.path.abspath(sys.argv[0])
    env = {"GATEHOUSE_CONTROLPLANE": rpc.controlplane_address(controlplane)}
    ca = selected().ca_file
    if ca:
        env["GATEHOUSE_CA_FILE"] = os.path.abspath(ca)
    env["GATEHOUSE_TOKEN"] = (
        "${GATEHOUSE_TOKEN:-}" if client == "claude" else "${env:GATEHOUSE_TOKEN}"
    )
    server: dict[str, Any] = {"command": command, "args": ["mcp"], "env": env}
    if client == "vscode":
        return {"servers": {"gatehouse": {"type": "stdio", **server}}}
    if client == "claude":
        server = {"type": "stdio", **server}
    return {"mcpServers": {"gatehouse": server}}
