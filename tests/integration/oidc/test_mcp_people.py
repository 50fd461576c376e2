"""MCP with real people. Reviews that do not block a tool call: alice (dba) hands an AI agent
a delegated token; its MCP tool call on a review-gated connection answers `pending_review`
at once, bob (security) decides with `gatehouse reviews approve|deny`, and the retried call
runs or fails with his reason (`gatehouse exec --no-wait` makes the same choice for a
script). The remote `/mcp` endpoint takes the same tokens, refuses any other, and names the
OIDC issuer an MCP client logs in with."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import ClientSession

from devenv.oidc import OidcProvider
from tests.e2e.mcpclient import call, over_http, over_stdio
from tests.integration.oidc.test_access_rules import People, start_people
from tests.integration.oidc.test_reviews import TARGET

ACTOR = "devin"
POLICY = (
    "connections:\n"
    + "".join(f"  - name: {name}\n{TARGET}" for name in ("pg-gated-1", "pg-gated-2", "pg-gated-3"))
    + """\
access:
  - name: oncall
    groups: [dba]
    connections: ['pg-gated-*']
    modes: [exec]
    review: {{groups: [security], ttl: 1h}}
"""
)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider) -> Iterator[People]:
    yield from start_people(tmp_path_factory.mktemp("mcp-people"), oidc, POLICY)


@pytest.fixture(scope="module")
def agent_env(people: People) -> dict[str, str]:
    created = people.cli(
        "tokens", "create", "--actor", ACTOR, "-o", "json", token=people.alice.access_token
    )
    assert created.returncode == 0, created.stderr
    return people.env(json.loads(created.stdout)["secret"])


def decide(people: People, *args: str) -> None:
    decided = people.cli("reviews", *args, token=people.bob.access_token)
    assert decided.returncode == 0, decided.stderr


def test_a_gated_call_returns_pending_at_once_and_runs_once_approved(
    people: People, agent_env: dict[str, str]
) -> None:
    sql = f"select 'gated {uuid.uuid4().hex[:8]}' as marker"

    async def work(session: ClientSession) -> Any:
        first = await call(session, "query", connection="pg-gated-1", sql=sql)
        again = await call(session, "query", connection="pg-gated-1", sql=sql)
        status = await call(session, "review_status", review_id=first[1]["review_id"])
        reached = people.pg.wait_for_statement(sql, timeout=0.5)
        await asyncio.to_thread(decide, people, "approve", first[1]["review_id"])
        waited = await call(session, "review_status", review_id=first[1]["review_id"], wait_s=10)
        retried = await call(session, "query", connection="pg-gated-1", sql=sql)
        return first, again, status, reached, waited, retried

    first, again, status, reached, waited, retried = over_stdio(agent_env, work)
    assert first[0] is False and first[1]["status"] == "pending_review"
    review_id = first[1]["review_id"]
    assert first[1]["reviewers"] == ["security"] and first[1]["rule"] == "oncall"
    # Asking again while it is pending is the same request, not a new one.
    assert again[1]["review_id"] == review_id
    assert status == (False, {**status[1], "status": "pending"})
    assert reached == 0  # nothing reached PostgreSQL before the approval
    assert waited[1]["status"] == "approved"
    assert retried[0] is False and retried[1]["rows"] == [[sql.split("'")[1]]]
    assert people.pg.wait_for_statement(sql) == 1

    events = people.events()
    requests = [e for e in events if e["type"] == "review.request"]
    assert [r["review"]["id"] for r in requests].count(review_id) == 1
    (start,) = [e for e in events if e["type"] == "session.start" and e.get("review") == review_id]
    assert start["actor"] == ACTOR and start["user"]["email"] == "alice@example.com"
    mcp_call = next(e for e in events if e["seq"] == start["mcp_call"]["seq"])
    assert mcp_call["type"] == "mcp.call" and mcp_call["tool"] == "query"
    assert mcp_call["arguments"]["sql"] == sql and mcp_call["actor"] == ACTOR


def test_a_denied_review_fails_the_retried_call_with_the_reason(
    people: People, agent_env: dict[str, str]
) -> None:
    sql = f"select 'denied {uuid.uuid4().hex[:8]}'"
    reason = f"not during the freeze {uuid.uuid4().hex[:4]}"

    async def work(session: ClientSession) -> Any:
        first = await call(session, "query", connection="pg-gated-2", sql=sql)
        await asyncio.to_thread(decide, people, "deny", first[1]["review_id"], "--reason", reason)
        status = await call(session, "review_status", review_id=first[1]["review_id"])
        retried = await call(session, "query", connection="pg-gated-2", sql=sql)
        return first, status, retried

    first, status, retried = over_stdio(agent_env, work)
    assert first[1]["status"] == "pending_review"
    assert status[0] is True and reason in status[1] and "denied" in status[1]
    assert retried[0] is True and reason in retried[1] and "bob@example.com" in retried[1]
    assert people.pg.wait_for_statement(sql, timeout=0.5) == 0


def test_exec_no_wait_exits_3_with_the_review_id(people: People) -> None:
    sql = f"select 'no wait {uuid.uuid4().hex[:8]}'"
    args = ("exec", "pg-gated-3", "--no-wait", "-c", sql)
    first = people.cli(*args, token=people.alice.access_token)
    assert first.returncode == 3, first.stderr
    listed = people.cli("reviews", "list", "-o", "json", token=people.bob.access_token)
    (review,) = [r for r in json.loads(listed.stdout) if r["connection"] == "pg-gated-3"]
    assert review["status"] == "pending" and review["id"] in first.stderr
    second = people.cli(*args, token=people.alice.access_token)
    assert second.returncode == 3 and review["id"] in second.stderr  # the same request
    assert people.pg.wait_for_statement(sql, timeout=0.5) == 0
    decide(people, "approve", review["id"])
    third = people.cli(*args, token=people.alice.access_token)
    assert third.returncode == 0, third.stderr
    assert people.pg.wait_for_statement(sql) == 1


def http(url: str, token: str | None = None, method: str = "POST") -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_mcp_endpoint_refuses_missing_forged_and_expired_tokens_and_names_the_issuer(
    people: People, oidc: OidcProvider
) -> None:
    base = f"http://127.0.0.1:{people.controlplane.http_port}"
    status, headers, _ = http(base + "/mcp")
    assert status == 401
    metadata_url = f"{base}/.well-known/oauth-protected-resource/mcp"
    assert headers["WWW-Authenticate"] == f'Bearer resource_metadata="{metadata_url}"'
    status, _, body = http(metadata_url, method="GET")
    assert status == 200
    metadata = json.loads(body)
    assert metadata["authorization_servers"] == [oidc.issuer]
    assert metadata["resource"] == f"{base}/mcp"

    forged_jwt = people.alice.access_token[:-8] + ("A" * 8)
    short = people.cli(
        "tokens",
        "create",
        "--actor",
        ACTOR,
        "--ttl",
        "1s",
        "-o",
        "json",
        token=people.alice.access_token,
    )
    assert short.returncode == 0, short.stderr
    expired = json.loads(short.stdout)["secret"]
    time.sleep(2)  # past its expiry
    for token in ("ghu_" + uuid.uuid4().hex, forged_jwt, expired):
        status, headers, _ = http(base + "/mcp", token)
        assert status == 401, token
        challenge = headers["WWW-Authenticate"]
        assert 'error="invalid_token"' in challenge and metadata_url in challenge
    fails = [e for e in people.events() if e["type"] == "auth.fail"]
    assert fails  # each refusal is in the trail


def test_mcp_endpoint_runs_a_login_s_calls_as_the_person(people: People) -> None:
    url = f"http://127.0.0.1:{people.controlplane.http_port}/mcp"

    async def work(session: ClientSession) -> Any:
        listed = await call(session, "list_connections")
        gated = await call(session, "request_access", connection="pg-gated-3")
        return listed, gated

    listed, gated = over_http(url, people.alice.access_token, work)
    names = {c["name"]: c for c in listed[1]["connections"]}
    assert names["pg-gated-1"]["review_modes"] == ["exec"]
    assert names["pg-gated-1"]["reviewers"] == ["security"]
    assert gated[0] is False and gated[1]["status"] in ("pending_review", "granted")
    calls = [e for e in people.events() if e["type"] == "mcp.call"]
    assert calls[-1]["tool"] == "request_access"
    assert calls[-1]["user"]["email"] == "alice@example.com" and "actor" not in calls[-1]
