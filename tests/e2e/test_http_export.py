"""The SIEM's view: the HTTP export API, its tokens, metrics; and `gatehouse sessions`."""

from __future__ import annotations

import json
import sqlite3
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.e2e.conftest import Stack


def http_get(
    stack: Stack, path: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.controlplane.http_port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def ndjson(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in body.decode().splitlines()]


@pytest.fixture(scope="module")
def reader(stack: Stack) -> str:
    created = stack.cli("admin", "tokens", "create", "siem", "--role", "audit-reader", "-o", "json")
    assert created.returncode == 0, created.stderr
    secret: str = json.loads(created.stdout)["secret"]
    return secret


def test_health_and_metrics_need_no_token(stack: Stack) -> None:
    status, _, body = http_get(stack, "/healthz")
    assert status == 200
    assert json.loads(body)["agents_online"] == 1
    assert stack.cli("exec", "pg", "-c", "select 1").returncode == 0
    status, _, body = http_get(stack, "/metrics")
    assert status == 200
    text = body.decode()
    committed = next(
        line
        for line in text.splitlines()
        if line.startswith("gatehouse_audit_events_committed_total")
    )
    assert float(committed.split()[-1]) >= 4
    assert "gatehouse_agents_online 1.0" in text
    assert "gatehouse_sessions_total" in text


def test_reader_pages_through_every_event_exactly_once(stack: Stack, reader: str) -> None:
    for n in range(3):
        assert stack.cli("exec", "pg", "-c", f"select {n}").returncode == 0
    expected = [e["seq"] for e in stack.events()]
    seen: list[int] = []
    cursor = 0
    while True:
        status, headers, body = http_get(stack, f"/v1/audit/events?after={cursor}&limit=4", reader)
        assert status == 200
        assert headers["Content-Type"].startswith("application/x-ndjson")
        page = ndjson(body)
        if not page:
            assert int(headers["Gatehouse-Next-After"]) == cursor
            break
        seen += [e["seq"] for e in page]
        cursor = int(headers["Gatehouse-Next-After"])
        assert cursor == page[-1]["seq"]
        assert f"after={cursor}" in headers["Link"]
    assert seen[: len(expected)] == expected
    assert len(seen) == len(set(seen))


def test_exported_lines_match_the_cli_export(stack: Stack, reader: str) -> None:
    status, _, body = http_get(stack, "/v1/audit/events?limit=5000", reader)
    assert status == 200
    via_http = ndjson(body)
    via_cli = stack.events()
    assert via_http[: len(via_cli)] == via_cli


def test_types_filter_returns_only_those_types(stack: Stack, reader: str) -> None:
    assert stack.cli("exec", "pg", "-c", "select 7").returncode == 0
    status, _, body = http_get(stack, "/v1/audit/events?types=db.query,db.result", reader)
    assert status == 200
    types = {e["type"] for e in ndjson(body)}
    assert types == {"db.query", "db.result"}


@pytest.mark.parametrize(
    ("token", "status"),
    [(None, 401), ("ghu_not-a-real-token", 401), ("gha_an-agent-credential", 401)],
)
def test_missing_or_wrong_tokens_are_refused(stack: Stack, token: str | None, status: int) -> None:
    code, headers, body = http_get(stack, "/v1/audit/events", token)
    assert code == status
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert json.loads(body)["error"]
    # Each refusal is in the trail, with its reason and never the token.
    failure = [e for e in stack.events() if e["type"] == "auth.fail"][-1]
    assert failure["reason"] == json.loads(body)["error"]
    if token is not None:
        assert token not in json.dumps(failure)


def test_a_token_without_a_reader_role_is_refused(stack: Stack) -> None:
    created = stack.cli("admin", "tokens", "create", "someone", "--role", "admin", "-o", "json")
    document = json.loads(created.stdout)
    # Demote it to a plain user the way a later identity feature would create one.
    with sqlite3.connect(stack.controlplane.data_dir / "gatehouse.db") as db:
        db.execute("update api_tokens set role = 'user' where id = ?", (document["id"],))
    code, _, body = http_get(stack, "/v1/audit/events", document["secret"])
    assert code == 403
    assert "audit-reader" in json.loads(body)["error"]


def test_reader_token_can_do_nothing_else(stack: Stack, reader: str) -> None:
    listed = stack.cli("admin", "agents", "list", GATEHOUSE_TOKEN=reader)
    assert listed.returncode == 1
    assert "may not do this" in listed.stderr
    refused = stack.cli("exec", "pg", "-c", "select 1", GATEHOUSE_TOKEN=reader)
    assert refused.returncode == 1


def test_revoked_reader_token_stops_working(stack: Stack) -> None:
    created = json.loads(
        stack.cli("admin", "tokens", "create", "temp", "-o", "json", "--ttl", "1h").stdout
    )
    assert http_get(stack, "/v1/audit/events?limit=1", created["secret"])[0] == 200
    assert stack.cli("admin", "tokens", "revoke", created["id"]).returncode == 0
    code, _, body = http_get(stack, "/v1/audit/events?limit=1", created["secret"])
    assert code == 401
    assert "revoked" in json.loads(body)["error"]
    listed = json.loads(stack.cli("admin", "tokens", "list", "-o", "json").stdout)
    assert any(t["id"] == created["id"] and t["revoked"] for t in listed)


def test_bad_parameters_get_a_clear_400(stack: Stack, reader: str) -> None:
    code, _, body = http_get(stack, "/v1/audit/events?after=abc", reader)
    assert code == 400
    assert "after must be a whole number" in json.loads(body)["error"]
    code, _, body = http_get(stack, "/v1/audit/events?format=xml", reader)
    assert code == 400
    for hostile in ("after=1e23", "after=100000000000000000000000", "limit=-1", "afer=1"):
        code, _, body = http_get(stack, f"/v1/audit/events?{hostile}", reader)
        assert code == 400, hostile
        assert hostile.split("=")[0] in json.loads(body)["error"]


def test_openapi_description_is_served(stack: Stack) -> None:
    code, _, body = http_get(stack, "/v1/openapi.yaml")
    assert code == 200
    assert b"/v1/audit/events" in body


def test_sessions_list_and_show(stack: Stack, reader: str) -> None:
    sql = "select 'sessions-show' as what"
    assert stack.cli("exec", "pg", "-c", sql).returncode == 0
    listed = stack.cli(
        "sessions", "list", "--connection", "pg", "-o", "json", GATEHOUSE_TOKEN=reader
    )
    assert listed.returncode == 0, listed.stderr
    newest = json.loads(listed.stdout)[0]
    assert newest["connection"] == "pg" and newest["user"] == "admin" and newest["ended"]
    shown = stack.cli("sessions", "show", newest["id"], "-o", "json")
    assert shown.returncode == 0, shown.stderr
    events = json.loads(shown.stdout)["events"]
    assert [e["type"] for e in events] == ["session.start", "db.query", "db.result", "session.end"]
    assert events[1]["request"]["statement"] == sql
    table = stack.cli("sessions", "show", newest["id"])
    assert sql in table.stdout
    assert stack.cli("sessions", "list", "--type", "ssh", "-o", "json").stdout.strip() == "[]"
    missing = stack.cli("sessions", "show", "nope")
    assert missing.returncode == 1 and "no session nope" in missing.stderr


def test_ocsf_format_maps_each_event_to_its_class(stack: Stack, reader: str) -> None:
    assert stack.cli("exec", "pg", "-c", "select 'ocsf'").returncode == 0
    status, _, body = http_get(stack, "/v1/audit/events?format=ocsf&types=db.query", reader)
    assert status == 200
    events = ndjson(body)
    assert events
    assert {e["class_uid"] for e in events} == {6005}
    assert any(e["query_info"]["query_string"] == "select 'ocsf'" for e in events)
    assert all(e["type_uid"] == 600504 for e in events)
