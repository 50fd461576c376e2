"""What an `mcp.call` event records of a tool call's arguments: secrets redacted as the
statement's own event would have them, a command's stdin as its length and digest only."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlmodel import select

from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.errors import InvalidArgument
from controlplane.relay import mcpcall
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from gatehouse.v1 import client_pb2
from redact.detectors import DetectorSet


def recorded(arguments: str, tool: str = "query") -> dict[str, object]:
    call = client_pb2.McpCall(tool=tool, arguments=arguments)
    return mcpcall.arguments(call, None)


def test_a_password_literal_in_sql_is_masked() -> None:
    args = recorded('{"connection": "pg", "sql": "alter role app password \'hunter2\'"}')
    assert args["connection"] == "pg"
    assert "hunter2" not in str(args["sql"]) and "'***'" in str(args["sql"])


def test_parameters_pass_through_the_connection_s_detectors() -> None:
    call = client_pb2.McpCall(
        tool="query", arguments='{"sql": "select $1, $2", "params": ["alice@example.com", 42]}'
    )
    args = mcpcall.arguments(call, DetectorSet(["email"]))
    params = args["params"]
    assert isinstance(params, list) and params[1] == 42
    assert "alice@example.com" not in str(params[0])


def test_stdin_is_recorded_as_its_length_and_digest() -> None:
    args = recorded('{"connection": "web", "command": "sh", "stdin": "rm -rf /srv\\n"}')
    digest = hashlib.sha256(b"rm -rf /srv\n").hexdigest()
    assert args["stdin"] == {"bytes": 12, "sha256": digest}


@pytest.mark.parametrize(
    ("arguments", "tool", "why"),
    [
        ("{not json", "query", "not JSON"),
        ("[1, 2]", "query", "JSON object"),
        ("{}", "x" * 65, "tool name"),
        ('{"sql": "' + "x" * (mcpcall.MAX_ARGUMENTS + 1) + '"}', "query", "at most"),
    ],
)
def test_arguments_that_cannot_be_recorded_are_refused(arguments: str, tool: str, why: str) -> None:
    with pytest.raises(InvalidArgument, match=why):
        recorded(arguments, tool)


def test_an_empty_call_is_no_call() -> None:
    assert not mcpcall.present(client_pb2.McpCall())
    assert not mcpcall.present(None)
    assert mcpcall.present(client_pb2.McpCall(tool="query"))


def test_an_http_request_s_credentials_are_redacted_as_its_http_request_event_has_them() -> None:
    args = recorded(
        '{"connection": "api", "method": "GET", "path": "/v1/x?api_key=sk-live-1&q=ok",'
        ' "headers": {"Authorization": "Bearer sk-live-2", "X-Session": "sk-live-3",'
        ' "Accept": "application/json"}, "body": "password=sk-live-4"}',
        "http_request",
    )
    assert "sk-live" not in json.dumps(args)
    assert args["path"] == "/v1/x?api_key=%5Bredacted%5D&q=ok"
    assert args["headers"] == {
        "Authorization": "[redacted]",
        "X-Session": "[redacted]",
        "Accept": "application/json",
    }
    digest = hashlib.sha256(b"password=sk-live-4").hexdigest()
    assert args["body"] == {"bytes": 18, "sha256": digest}


def test_a_mysql_password_in_sql_is_masked_as_its_db_query_event_has_it() -> None:
    call = client_pb2.McpCall(
        tool="query",
        arguments='{"connection": "my", "sql": "CREATE USER app IDENTIFIED BY \'hunter2\'"}',
    )
    args = mcpcall.arguments(call, None, "mysql")
    assert "hunter2" not in str(args["sql"]) and "'***'" in str(args["sql"])


def test_a_number_parameter_is_masked_as_the_text_the_server_gets() -> None:
    """`params: [4111111111111111]` reaches the server as that text, which db.query masks."""
    call = client_pb2.McpCall(
        tool="query", arguments='{"sql": "select $1", "params": [4111111111111111, 42, true]}'
    )
    args = mcpcall.arguments(call, DetectorSet(["credit_card"]))
    params = args["params"]
    assert isinstance(params, list) and params[1:] == [42, True]
    assert "4111111111111111" not in json.dumps(params)


def test_an_mcp_run_command_is_recorded_as_its_command_event_records_it() -> None:
    text = client_pb2.McpCall(
        tool="run_command",
        arguments=json.dumps({"connection": "web", "command": "sshpass -p S3cret-Zq9 ssh h"}),
    )
    args, masked = mcpcall.recorded_arguments(text, None, "ssh")
    assert args["command"] == "sshpass -p **** ssh h" and masked
    argv = client_pb2.McpCall(
        tool="run_command",
        arguments=json.dumps({"connection": "ops", "command": ["tool", "--token", "S3cret-Zq9"]}),
    )
    args, masked = mcpcall.recorded_arguments(argv, None, "shell")
    assert args["command"] == ["tool", "--token", "****"] and masked
    plain = client_pb2.McpCall(tool="run_command", arguments='{"command": "uptime"}')
    assert mcpcall.recorded_arguments(plain, None, "ssh") == ({"command": "uptime"}, False)


async def test_the_mcp_call_event_says_its_command_was_masked(
    db: Database, writer: AuditWriter
) -> None:
    call = client_pb2.McpCall(
        tool="run_command",
        arguments=json.dumps({"connection": "ops", "command": "mysql -uroot -pS3cret-Zq9 app"}),
    )
    await mcpcall.record(writer, Identity("alice"), call, {}, connection="ops")
    with db.read_session() as session:
        [body] = session.exec(select(EventRow.body))
    event = json.loads(body)
    assert event["arguments"]["command"] == "mysql -uroot -p**** app"
    assert event["masked"] is True and "S3cret" not in body
