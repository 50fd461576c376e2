"""The MCP tools without a control plane: bad arguments are tool errors that name the
problem, a pending review is an answer (not an error) that the next call follows, and the
client snippets have each client's shape."""

from __future__ import annotations

from typing import Any

import pytest

from cli.errors import CliError
from cli.mcpserve import config_document
from cli.mcptools import TOOLS, ToolError, Tools
from cli.session import Opened, ReviewPending
from gatehouse.v1 import client_pb2


class Gateway:
    """Records what the tools asked; every open is refused with `refusal`."""

    def __init__(self, refusal: Exception) -> None:
        self.refusal = refusal
        self.opened: list[tuple[str, str, str]] = []

    async def open(self, connection: str, call: client_pb2.McpCall, retry: str) -> Opened:
        self.opened.append((connection, call.tool, retry))
        raise self.refusal

    async def connections(self, call: client_pb2.McpCall) -> Any:
        return client_pb2.ListMyConnectionsResponse()

    async def reviews(self, call: client_pb2.McpCall) -> Any:
        return client_pb2.ListReviewsResponse()


PENDING = ReviewPending(
    client_pb2.ReviewPending(review_id="r-1", reviewer_groups=["security"], rule="oncall"), "pg"
)


@pytest.mark.parametrize(
    ("tool", "arguments", "why"),
    [
        ("drop_everything", {}, "unknown tool"),
        ("query", {"connection": "pg"}, "sql is a non-empty string"),
        ("query", {"connection": "pg", "sql": "select 1", "rows": 3}, "unknown argument"),
        ("query", {"connection": "pg", "sql": "select 1", "max_rows": -1}, "max_rows"),
        ("query", {"connection": "pg", "sql": "select 1", "params": "x"}, "params is an array"),
        ("run_command", {"connection": "web", "command": ""}, "command is"),
        ("run_command", {"connection": "web", "command": [""]}, "command is"),
        ("run_command", {"connection": "web", "command": "sh", "stdin": "a\ud800"}, "stdin"),
        ("run_command", {"connection": "web", "command": "ls", "timeout_s": 0}, "timeout_s"),
        ("review_status", {"review_id": "r", "wait_s": 600}, "wait_s"),
        ("list_connections", {"x": 1}, "no arguments"),
        ("http_request", {"connection": "api", "method": "GET"}, "path is a non-empty"),
        ("http_request", {"connection": "api", "method": "GET", "path": "x"}, "starts with /"),
        ("http_request", {"connection": "api", "method": "BREW", "path": "/"}, "method is one"),
        ("http_request", {"connection": "api", "method": "GET", "path": "/a b"}, "not a valid"),
        ("http_request", {"connection": "api", "method": "GET", "path": "/é"}, "ASCII"),
        (
            "http_request",
            {
                "connection": "api",
                "method": "GET",
                "path": "/",
                "headers": {"X": "a\r\nHost: evil"},
            },
            "not a valid",
        ),
        (
            "http_request",
            {"connection": "api", "method": "GET", "path": "/", "headers": {"a": 1}},
            "headers is an object of strings",
        ),
        (
            "http_request",
            {"connection": "api", "method": "GET", "path": "/", "max_bytes": 2**21},
            "max_bytes",
        ),
        (
            "http_request",
            {"connection": "api", "method": "GET", "path": "/", "body": "x" * 2**21},
            "body is at most",
        ),
    ],
)
async def test_bad_arguments_are_tool_errors_that_say_why(
    tool: str, arguments: dict[str, Any], why: str
) -> None:
    gateway = Gateway(CliError("unreachable"))
    with pytest.raises(ToolError, match=why):
        await Tools(gateway).call(tool, arguments)
    assert gateway.opened == []  # nothing was sent


async def test_a_pending_review_is_an_answer_and_the_next_call_follows_it() -> None:
    gateway = Gateway(PENDING)
    tools = Tools(gateway)
    answer = await tools.call("query", {"connection": "pg", "sql": "select 1"}, "claude/1")
    assert answer["status"] == "pending_review" and answer["review_id"] == "r-1"
    assert answer["reviewers"] == ["security"]
    gateway.refusal = CliError("review r-1 was denied by bob: not now")
    with pytest.raises(ToolError, match="not now"):
        await tools.call("query", {"connection": "pg", "sql": "select 1"})
    with pytest.raises(ToolError):
        await tools.call("query", {"connection": "pg", "sql": "select 1"})
    # the first asked afresh, the second retried after r-1, the third (after the denial) afresh
    assert [retry for _, _, retry in gateway.opened] == ["", "r-1", ""]


def test_every_tool_has_an_object_schema() -> None:
    for tool in TOOLS:
        assert tool.input_schema["type"] == "object" and tool.description


@pytest.mark.parametrize(
    ("client", "key", "entry"),
    [
        ("claude", "mcpServers", {"type": "stdio"}),
        ("cursor", "mcpServers", {}),
        ("vscode", "servers", {"type": "stdio"}),
    ],
)
def test_the_client_snippet_starts_gatehouse_mcp_without_writing_a_token(
    client: str, key: str, entry: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEHOUSE_TOKEN", "ghu_secret-never-printed")
    document = config_document(client, None, "127.0.0.1:9443")
    server = document[key]["gatehouse"]
    assert server["args"] == ["mcp"] and server["command"]
    assert server["env"]["GATEHOUSE_CONTROLPLANE"] == "127.0.0.1:9443"
    assert (
        "ghu_secret" not in str(document) and "GATEHOUSE_TOKEN" in server["env"]["GATEHOUSE_TOKEN"]
    )
    assert all(server[k] == v for k, v in entry.items())


def test_the_remote_snippet_names_the_url() -> None:
    url = "https://gw.example.com:8080/mcp"
    assert config_document("vscode", url, None) == {
        "servers": {"gatehouse": {"type": "http", "url": url}}
    }
    assert config_document("cursor", url, None) == {"mcpServers": {"gatehouse": {"url": url}}}
    with pytest.raises(CliError):
        config_document("claude", "gw.example.com", None)
