"""The MCP SDK's own client, as an AI agent's MCP host runs it: `gatehouse mcp` over stdio,
or the control plane's `/mcp` over streamable HTTP."""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from mcp import ClientSession, StdioServerParameters, stdio_client

from devenv.stack import GATEHOUSE, REPO

T = TypeVar("T")
Work = Callable[[ClientSession], Awaitable[T]]


def over_stdio(env: dict[str, str], work: Work[T]) -> T:
    """Start `gatehouse mcp` with `env` as an MCP client does; run `work` in its session."""
    params = StdioServerParameters(
        command=GATEHOUSE[0],
        args=[*GATEHOUSE[1:], "mcp"],
        env={**os.environ, **env},
        cwd=str(REPO),
    )

    async def run() -> T:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await work(session)

    return asyncio.run(asyncio.wait_for(run(), 90))


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """(is_error, the structured result or the error's text)."""
    result = await session.call_tool(tool, arguments)
    if result.is_error:
        return True, result.content[0].text  # type: ignore[union-attr]
    return False, result.structured_content


def over_http(url: str, token: str | None, work: Work[T], ca: str | None = None) -> T:
    """Connect to a remote MCP endpoint with `token` as its bearer token; run `work`."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    verify = ssl.create_default_context(cafile=ca) if ca else True

    async def run() -> T:
        async with (
            httpx2.AsyncClient(headers=headers, verify=verify, timeout=60) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await work(session)

    return asyncio.run(asyncio.wait_for(run(), 90))
