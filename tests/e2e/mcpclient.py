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


class RawSession:
    """Streamable HTTP spoken by hand, as a client that does not follow the SDK's rules may:
    its own request ids, notifications, another token on the same session id."""

    VERSION = "2025-11-25"

    def __init__(self, http: Any, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.token = token
        self.session_id = ""

    def headers(self, token: str | None = None) -> dict[str, str]:
        headers = {
            "Authorization": f"Bearer {token or self.token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
            "MCP-Protocol-Version": self.VERSION,
        }
        if self.session_id:
            headers["Mcp-Session-Id"] = self.session_id
        return headers

    def initialize_message(self) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {
                "protocolVersion": self.VERSION,
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        }

    async def initialize(self) -> None:
        response = await self.post(self.initialize_message())
        assert response[0] == 200, response
        await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})

    async def post(self, message: Any, token: str | None = None) -> tuple[int, list[Any]]:
        """The HTTP status and the JSON-RPC messages of the answer (SSE or JSON)."""
        import json

        response = await self.http.post(self.url, json=message, headers=self.headers(token))
        if not self.session_id:
            self.session_id = response.headers.get("mcp-session-id", "")
        text = response.text
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            return response.status_code, [json.loads(d) for d in data if d]
        return response.status_code, [json.loads(text)] if text.strip() else []

    async def call(
        self, request_id: int, tool: str, token: str | None = None, **arguments: Any
    ) -> tuple[int, list[Any]]:
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        return await self.post(message, token)
