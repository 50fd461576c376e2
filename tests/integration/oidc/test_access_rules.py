"""Access rules with real people: alice (group dba) and bob (group security) log in with a real
OIDC provider; the control plane lets alice exec on `pg-*` and refuses bob, naming the rule,
before anything reaches PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest

from cli.login import TokenSet
from devenv.oidc import AUDIENCE, OidcProvider
from devenv.postgres import PostgresServer, start_postgres
from devenv.stack import GATEHOUSE, REPO, Agent, ControlPlane, enroll_agent, gatehouse
from tests.integration.oidc.conftest import device_log_in, settings_for

POLICY = """\
connections:
  - name: pg-main
    type: postgres
    agent: vpc-1
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
  - name: pg-other
    type: postgres
    agent: vpc-1
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
  - name: warehouse
    type: postgres
    agent: vpc-1
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
access:
  - name: dba
    groups: [dba]
    connections: ['pg-*']
    modes: [exec]
"""


@dataclass
class People:
    controlplane: ControlPlane
    agent: Agent
    pg: PostgresServer
    alice: TokenSet
    bob: TokenSet

    def env(self, token: str | None = None) -> dict[str, str]:
        env = dict(self.controlplane.cli_env)
        if token is not None:
            env["GATEHOUSE_TOKEN"] = token
        return env

    def cli(self, *args: str, token: str | None = None) -> CompletedProcess[str]:
        return gatehouse(list(args), env=self.env(token))

    def events(self) -> list[dict[str, Any]]:
        export = self.cli("audit", "export")
        assert export.returncode == 0, export.stderr
        return [json.loads(line) for line in export.stdout.splitlines()]


def start_people(
    base: Path, oidc: OidcProvider, policy: str, env: dict[str, str] | None = None
) -> Iterator[People]:
    """A control plane trusting `oidc`, an agent, a PostgreSQL, the policy (its `{port}` the
    PostgreSQL's), and alice and bob logged in; everything stopped after."""
    pg = start_postgres(base / "pg", roles={"app": "pw"}, databases={"app": "app"})
    controlplane = ControlPlane.create(
        base / "cp",
        env={
            "GATEHOUSE_OIDC_ISSUER": oidc.issuer,
            "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE,
            **(env or {}),
        },
    )
    controlplane.start_and_wait()
    agent = None
    try:
        agent = enroll_agent(controlplane, "vpc-1", base / "agent", env={"PG_PASSWORD": "pw"})
        (base / "gatehouse.yaml").write_text(policy.format(port=pg.port))
        applied = gatehouse(
            ["admin", "apply", "-f", str(base / "gatehouse.yaml")], env=controlplane.cli_env
        )
        assert applied.returncode == 0, applied.stderr
        settings = settings_for(oidc)
        alice = device_log_in(oidc, settings, "alice")
        bob = device_log_in(oidc, settings, "bob")
        yield People(controlplane, agent, pg, alice, bob)
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()
        pg.stop()


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider) -> Iterator[People]:
    yield from start_people(tmp_path_factory.mktemp("access"), oidc, POLICY)


def test_alice_in_dba_may_exec_on_pg_connections(people: People) -> None:
    sql = f"select 'alice {uuid.uuid4().hex[:8]}'"
    result = people.cli("exec", "pg-main", "-c", sql, token=people.alice.access_token)
    assert result.returncode == 0, result.stderr
    assert people.pg.wait_for_statement(sql) == 1


def test_bob_is_refused_with_the_rule_that_would_be_needed(people: People) -> None:
    sql = f"select 'bob {uuid.uuid4().hex[:8]}'"
    result = people.cli("exec", "pg-main", "-c", sql, token=people.bob.access_token)
    assert result.returncode == 1
    assert "access rule 'dba' grants it to group dba" in result.stderr
    assert "bob" in result.stderr
    assert people.pg.wait_for_statement(sql, timeout=1.0) == 0
    # The refused attempt is in the trail, with who tried, what, and why not.
    refusals = [
        e
        for e in people.events()
        if e["type"] == "session.start" and e.get("decision", {}).get("result") == "deny"
    ]
    assert refusals
    last = refusals[-1]
    assert last["user"]["email"] == "bob@example.com"
    assert last["connection"] == {"name": "pg-main"}
    assert last["mode"] == "exec"
    assert "grants it to group dba" in last["decision"]["reason"]


def test_modes_not_granted_are_refused(people: People) -> None:
    refused = people.cli("exec", "warehouse", "-c", "select 1", token=people.alice.access_token)
    assert refused.returncode == 1
    assert "no access rule grants exec" in refused.stderr


def test_connections_list_shows_only_what_the_caller_may_use(people: People) -> None:
    mine = people.cli("connections", "list", "-o", "json", token=people.alice.access_token)
    assert mine.returncode == 0, mine.stderr
    assert json.loads(mine.stdout) == [
        {"name": "pg-main", "type": "postgres", "modes": ["exec"], "review": None},
        {"name": "pg-other", "type": "postgres", "modes": ["exec"], "review": None},
    ]
    table = people.cli("connections", "list", token=people.alice.access_token)
    assert "pg-main" in table.stdout
    assert "warehouse" not in table.stdout
    bobs = people.cli("connections", "list", "-o", "json", token=people.bob.access_token)
    assert bobs.returncode == 0, bobs.stderr
    assert json.loads(bobs.stdout) == []


def test_the_bootstrap_admin_may_do_everything(people: People) -> None:
    listed = people.cli("connections", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    assert {c["name"]: c["modes"] for c in json.loads(listed.stdout)} == {
        "pg-main": ["exec", "connect"],
        "pg-other": ["exec", "connect"],
        "warehouse": ["exec", "connect"],
    }
    result = people.cli("exec", "warehouse", "-c", "select 1")
    assert result.returncode == 0, result.stderr


def test_an_audit_reader_token_may_not_open_sessions(people: People) -> None:
    created = people.cli("admin", "tokens", "create", "siem", "--role", "audit-reader")
    assert created.returncode == 0, created.stderr
    refused = people.cli("exec", "pg-main", "-c", "select 1", token=created.stdout.strip())
    assert refused.returncode == 1
    assert "audit-reader" in refused.stderr


def delegate(people: People, *args: str) -> dict[str, Any]:
    created = people.cli(
        "tokens", "create", "--actor", "devin", *args, "-o", "json", token=people.alice.access_token
    )
    assert created.returncode == 0, created.stderr
    document: dict[str, Any] = json.loads(created.stdout)
    return document


def test_a_delegated_token_acts_as_the_person_within_its_scope(people: People) -> None:
    token = delegate(people, "--ttl", "1h", "--connections", "pg-main")
    assert token["actor"] == "devin"
    assert token["connections"] == ["pg-main"]
    assert token["secret"] not in people.cli("audit", "export").stdout

    sql = f"select 'devin {uuid.uuid4().hex[:8]}'"
    ran = people.cli("exec", "pg-main", "-c", sql, token=token["secret"])
    assert ran.returncode == 0, ran.stderr
    (query,) = [e for e in people.events() if e.get("request", {}).get("statement") == sql]
    session = [e for e in people.events() if e.get("session_id") == query["session_id"]]
    assert [e["type"] for e in session] == ["session.start", "db.query", "db.result", "session.end"]
    for event in session:
        assert event["actor"] == "devin"
        assert event["user"]["email"] == "alice@example.com"

    outside = people.cli("exec", "pg-other", "-c", "select 1", token=token["secret"])
    assert outside.returncode == 1
    assert "limited to the connections pg-main" in outside.stderr
    listed = people.cli("connections", "list", "-o", "json", token=token["secret"])
    assert [c["name"] for c in json.loads(listed.stdout)] == ["pg-main"]

    # Not an admin credential, and not a way to mint more tokens.
    assert people.cli("tokens", "create", "--actor", "x", token=token["secret"]).returncode == 1


def test_tokens_list_and_revoke(people: People) -> None:
    token = delegate(people, "--ttl", "2h")
    mine = people.cli("tokens", "list", "-o", "json", token=people.alice.access_token)
    assert mine.returncode == 0, mine.stderr
    (listed,) = [t for t in json.loads(mine.stdout) if t["id"] == token["id"]]
    assert listed["connections"] is None and listed["revoked"] is None
    bobs = people.cli("tokens", "list", "-o", "json", token=people.bob.access_token)
    assert token["id"] not in bobs.stdout
    stolen = people.cli("tokens", "revoke", token["id"], token=people.bob.access_token)
    assert stolen.returncode == 1

    revoked = people.cli("tokens", "revoke", token["id"], token=people.alice.access_token)
    assert revoked.returncode == 0, revoked.stderr
    refused = people.cli("exec", "pg-main", "-c", "select 1", token=token["secret"])
    assert refused.returncode == 1
    assert "revoked" in refused.stderr


def test_revoking_ends_live_sessions_within_seconds(people: People) -> None:
    token = delegate(people, "--ttl", "1h")
    sql = f"select pg_sleep(60), '{uuid.uuid4().hex[:8]}'"
    running = subprocess.Popen(
        [*GATEHOUSE, "exec", "pg-main", "-c", sql],
        env={**os.environ, **people.env(token["secret"])},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert people.pg.wait_for_statement(sql, timeout=20) == 1
        revoked = people.cli("tokens", "revoke", token["id"], token=people.alice.access_token)
        assert revoked.returncode == 0, revoked.stderr
        started = time.monotonic()
        _, stderr = running.communicate(timeout=15)
        assert time.monotonic() - started < 8
        assert running.returncode == 1
        assert "revoked" in stderr
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    ends = [
        e
        for e in people.events()
        if e["type"] == "session.end"
        and e.get("actor") == "devin"
        and e.get("reason") == "the token was revoked"
    ]
    assert ends
