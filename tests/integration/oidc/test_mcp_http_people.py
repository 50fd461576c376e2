"""An http connection used over MCP by a person who is no administrator: alice (dba) may
`exec` on `api-dba` by an access rule and hands an AI agent a delegated token; the agent's
`http_request` reaches httpbin behind nginx with alice and the agent on every event, and a
connection the rule does not give her is refused before anything is sent."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import ClientSession

from devenv.httpd import HttpTargets
from devenv.oidc import OidcProvider
from tests.e2e.mcpclient import call, over_stdio
from tests.integration.oidc.test_access_rules import People, start_people

ACTOR = "devin"
POLICY = """\
connections:
  - name: api-dba
    type: http
    agent: vpc-1
    target: {{url: 'http://127.0.0.1:HTTP_PORT'}}
  - name: api-ops
    type: http
    agent: vpc-1
    target: {{url: 'http://127.0.0.1:HTTP_PORT'}}
access:
  - name: dba-api
    groups: [dba]
    connections: [api-dba]
    modes: [exec]
"""


@pytest.fixture(scope="module")
def people(
    tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider, http_targets: HttpTargets
) -> Iterator[People]:
    policy = POLICY.replace("HTTP_PORT", str(http_targets.port))
    yield from start_people(tmp_path_factory.mktemp("mcp-http-people"), oidc, policy)


def test_a_delegated_agent_sends_requests_on_the_connection_alices_rule_gives(
    people: People, http_targets: HttpTargets
) -> None:
    marker = uuid.uuid4().hex[:8]
    created = people.cli(
        "tokens", "create", "--actor", ACTOR, "-o", "json", token=people.alice.access_token
    )
    assert created.returncode == 0, created.stderr
    env = people.env(json.loads(created.stdout)["secret"])

    async def work(session: ClientSession) -> Any:
        listed = await call(session, "list_connections")
        sent = await call(
            session, "http_request", connection="api-dba", method="GET", path=f"/get?m={marker}"
        )
        refused = await call(
            session, "http_request", connection="api-ops", method="GET", path=f"/get?o={marker}"
        )
        return listed, sent, refused

    listed, sent, refused = over_stdio(env, work)
    assert [(c["name"], c["tool"]) for c in listed[1]["connections"]] == [
        ("api-dba", "http_request")
    ]
    assert sent[0] is False and sent[1]["status"] == 200, sent
    assert json.loads(sent[1]["body"])["args"] == {"m": marker}
    assert refused[0] is True and "api-ops" in refused[1]
    uris = [line.uri for line in http_targets.log_lines()]
    assert f"/get?m={marker}" in uris and f"/get?o={marker}" not in uris

    events = people.events()
    request = next(
        e
        for e in events
        if e["type"] == "http.request" and marker in (e["request"].get("query") or "")
    )
    assert request["user"]["email"] == "alice@example.com" and request["actor"] == ACTOR
    assert request["mcp_call"]["seq"]
    calls = [e for e in events if e["type"] == "mcp.call" and e["tool"] == "http_request"]
    assert len(calls) == 2 and all(c["user"]["email"] == "alice@example.com" for c in calls)
