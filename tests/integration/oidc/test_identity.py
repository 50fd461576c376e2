"""Identity cannot be stretched: delegated tokens never outgrow their person, review approvals
cover exactly the person and actor they were granted to, and sessions of an expired login end.

Real parts: a real OpenID Provider whose directory the tests edit (carol loses `admins`,
alice loses `dba`), a real control plane, agent and PostgreSQL; every refusal is checked in
what the CLI prints and in PostgreSQL's own statement log.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import JWKRegistry

from cli.login import TokenSet
from devenv.oidc import AUDIENCE, CLIENT_ID, OidcProvider, start_oidc_provider
from devenv.postgres import PostgresServer, start_postgres
from devenv.stack import Agent, ControlPlane, enroll_agent, gatehouse, spawn
from tests.integration.oidc.conftest import device_log_in, settings_for

REVIEW_TIMEOUT = 4
ACCOUNTS: dict[str, dict[str, Any]] = {
    "alice": {"email": "alice@example.com", "groups": ["dba"]},
    "bob": {"email": "bob@example.com", "groups": ["security"]},
    "carol": {"email": "carol@example.com", "groups": ["dba", "admins"]},
}
TARGET = (
    "    type: postgres\n"
    "    agent: vpc-1\n"
    "    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}\n"
    "    secret: {{password: env:PG_PASSWORD}}\n"
)
POLICY = (
    "connections:\n"
    + "".join(f"  - name: {name}\n{TARGET}" for name in ("pg-main", "pg-review", "warehouse"))
    + """\
access:
  - name: dba
    groups: [dba]
    connections: [pg-main]
    modes: [exec]
  - name: oncall
    groups: [dba]
    connections: [pg-review]
    modes: [exec]
    review: {{groups: [security], ttl: 1h}}
"""
)


@dataclass
class World:
    provider: OidcProvider
    controlplane: ControlPlane
    agent: Agent
    pg: PostgresServer
    policy: Path

    def login(self, user: str) -> TokenSet:
        return device_log_in(self.provider, settings_for(self.provider), user)

    def cli(self, *args: str, token: str | None = None) -> CompletedProcess[str]:
        env = dict(self.controlplane.cli_env)
        if token is not None:
            env["GATEHOUSE_TOKEN"] = token
        return gatehouse(list(args), env=env)

    def start(self, *args: str, token: str) -> subprocess.Popen[str]:
        return spawn(args, env={**self.controlplane.cli_env, "GATEHOUSE_TOKEN": token})

    def events(self, *types: str) -> list[dict[str, Any]]:
        args = ["audit", "export"] + (["--types", ",".join(types)] if types else [])
        export = self.cli(*args)
        assert export.returncode == 0, export.stderr
        return [json.loads(line) for line in export.stdout.splitlines()]

    def delegate(self, person: TokenSet, *args: str) -> dict[str, Any]:
        created = self.cli(
            "tokens", "create", "--actor", "devin", *args, "-o", "json", token=person.access_token
        )
        assert created.returncode == 0, created.stderr
        document: dict[str, Any] = json.loads(created.stdout)
        return document

    def ran(self, sql: str, timeout: float = 1.0) -> int:
        return self.pg.wait_for_statement(sql, timeout=timeout)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, node_modules: None) -> Iterator[World]:
    base = tmp_path_factory.mktemp("identity")
    provider = start_oidc_provider(base / "oidc", accounts=ACCOUNTS)
    pg = start_postgres(base / "pg", roles={"app": "pw"}, databases={"app": "app"})
    controlplane = ControlPlane.create(
        base / "cp",
        env={
            "GATEHOUSE_OIDC_ISSUER": provider.issuer,
            "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE,
            "GATEHOUSE_OIDC_LEEWAY": "0",
            "GATEHOUSE_REVIEW_TIMEOUT": str(REVIEW_TIMEOUT),
        },
    )
    agent = None
    try:
        controlplane.start_and_wait()
        agent = enroll_agent(controlplane, "vpc-1", base / "agent", env={"PG_PASSWORD": "pw"})
        policy = base / "gatehouse.yaml"
        policy.write_text(POLICY.format(port=pg.port))
        applied = gatehouse(["admin", "apply", "-f", str(policy)], env=controlplane.cli_env)
        assert applied.returncode == 0, applied.stderr
        yield World(provider, controlplane, agent, pg, policy)
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()
        pg.stop()
        provider.stop()


@pytest.fixture
def directory(world: World) -> Iterator[dict[str, dict[str, Any]]]:
    """The provider's accounts, for a test to edit; restored afterwards."""
    accounts = json.loads(json.dumps(ACCOUNTS))
    yield accounts
    world.provider.set_accounts(ACCOUNTS)


def crafted(provider: OidcProvider, **claims: Any) -> str:
    """A token signed by the provider's own key, with claims of the test's choosing."""
    key = provider.signing_key
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": provider.issuer,
        "aud": AUDIENCE,
        "sub": "alice",
        "email": "alice@example.com",
        "groups": ["dba"],
        "iat": now,
        "exp": now + 300,
        "client_id": CLIENT_ID,
        **claims,
    }
    header = {"alg": key["alg"], "kid": key["kid"], "typ": "at+jwt"}
    return jwt.encode(header, payload, JWKRegistry.import_key(key), algorithms=[key["alg"]])


ADMIN_CALLS: Mapping[str, tuple[str, ...]] = {
    "admin apply": ("admin", "apply", "-f", "POLICY"),
    "admin tokens list": ("admin", "tokens", "list"),
    "admin agents list": ("admin", "agents", "list"),
    "audit prune": ("audit", "prune", "--before", "2000-01-01"),
    "sessions list": ("sessions", "list"),
}


def admin_call(world: World, name: str, token: str) -> CompletedProcess[str]:
    args = [str(world.policy) if a == "POLICY" else a for a in ADMIN_CALLS[name]]
    return world.cli(*args, token=token)


def test_an_admins_delegated_token_is_a_user(world: World) -> None:
    carol = world.login("carol")
    assert admin_call(world, "admin tokens list", carol.access_token).returncode == 0
    token = world.delegate(carol, "--ttl", "1h")
    assert token["role"] == "user"
    for name in ADMIN_CALLS:
        refused = admin_call(world, name, token["secret"])
        assert refused.returncode == 1, (name, refused.stdout)
        assert "may open sessions only" in refused.stderr, name
    listed = world.cli("tokens", "list", token=token["secret"])
    assert listed.returncode == 1 and "cannot list tokens" in listed.stderr
    # Carol herself may use `warehouse` (an admin); her token only what her groups grant.
    sql = f"select 'devin as carol {uuid.uuid4().hex[:8]}'"
    outside = world.cli("exec", "warehouse", "-c", sql, token=token["secret"])
    assert outside.returncode == 1
    assert "no access rule grants exec on it" in outside.stderr
    assert world.ran(sql) == 0
    inside = world.cli("exec", "pg-main", "-c", sql, token=token["secret"])
    assert inside.returncode == 0, inside.stderr
    assert world.ran(sql) == 1


def test_the_admin_role_needs_the_explicit_flag_and_an_admin(world: World) -> None:
    carol, alice = world.login("carol"), world.login("alice")
    refused = world.cli(
        "tokens", "create", "--actor", "devin", "--role", "admin", token=alice.access_token
    )
    assert refused.returncode == 1
    assert "may not delegate the admin role" in refused.stderr
    token = world.delegate(carol, "--ttl", "1h", "--role", "admin")
    assert token["role"] == "admin"
    listed = admin_call(world, "admin tokens list", token["secret"])
    assert listed.returncode == 0, listed.stderr
    (created,) = [
        e
        for e in world.events("admin.change")
        if e["change"].get("action") == "token.delegate" and e["change"]["token"] == token["id"]
    ]
    assert created["change"]["role"] == "admin"
    assert created["user"]["sub"] == "carol"


def test_losing_the_admin_group_takes_the_admin_role_from_delegated_tokens(
    world: World, directory: dict[str, dict[str, Any]]
) -> None:
    carol = world.login("carol")
    token = world.delegate(carol, "--ttl", "1h", "--role", "admin")
    assert admin_call(world, "admin tokens list", token["secret"]).returncode == 0

    directory["carol"]["groups"] = ["dba"]
    world.provider.set_accounts(directory)
    fresh = world.login("carol")  # her next login, once used, tells the control plane
    assert world.cli("connections", "list", token=fresh.access_token).returncode == 0
    refused = admin_call(world, "admin tokens list", token["secret"])
    assert refused.returncode == 1
    assert "role 'user'" in refused.stderr
    # The token still works for what carol may do today.
    assert world.cli("connections", "list", token=token["secret"]).returncode == 0


def test_removing_the_person_from_a_group_takes_effect_on_the_next_session(
    world: World, directory: dict[str, dict[str, Any]]
) -> None:
    alice = world.login("alice")
    token = world.delegate(alice, "--ttl", "1h")
    before = f"select 'before {uuid.uuid4().hex[:8]}'"
    ran = world.cli("exec", "pg-main", "-c", before, token=token["secret"])
    assert ran.returncode == 0, ran.stderr
    assert world.ran(before) == 1

    directory["alice"]["groups"] = []
    world.provider.set_accounts(directory)
    fresh = world.login("alice")
    assert world.cli("connections", "list", token=fresh.access_token).returncode == 0
    after = f"select 'after {uuid.uuid4().hex[:8]}'"
    refused = world.cli("exec", "pg-main", "-c", after, token=token["secret"])
    assert refused.returncode == 1
    assert "(no groups) may not exec on 'pg-main'" in refused.stderr
    # Her older login, still unexpired, does not give the groups back.
    assert world.cli("connections", "list", token=alice.access_token).returncode == 0
    again = world.cli("exec", "pg-main", "-c", after, token=token["secret"])
    assert again.returncode == 1
    assert world.ran(after) == 0


def test_an_approval_covers_exactly_the_person_and_actor_it_was_granted_to(world: World) -> None:
    alice, bob = world.login("alice"), world.login("bob")
    devin = world.delegate(alice, "--ttl", "1h")
    other = world.cli(
        "tokens", "create", "--actor", "cursor", "-o", "json", token=alice.access_token
    )
    cursor = json.loads(other.stdout)

    def approve_next() -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listed = world.cli("reviews", "list", "-o", "json", token=bob.access_token)
            pending = [r for r in json.loads(listed.stdout) if r["status"] == "pending"]
            if pending:
                approved = world.cli("reviews", "approve", pending[0]["id"], token=bob.access_token)
                assert approved.returncode == 0, approved.stderr
                return
            time.sleep(0.2)
        raise AssertionError("no pending review")

    # Alice's own request, approved: alice may, her agents' tokens may not.
    sql = f"select 'alice {uuid.uuid4().hex[:8]}'"
    running = world.start("exec", "pg-review", "-c", sql, token=alice.access_token)
    approve_next()
    assert running.wait(20) == 0, running.communicate()[1]
    for secret in (devin["secret"], cursor["secret"]):
        tried = f"select 'agent {uuid.uuid4().hex[:8]}'"
        refused = world.cli("exec", "pg-review", "-c", tried, token=secret)
        assert refused.returncode == 1
        assert "timed out" in refused.stderr
        assert world.ran(tried) == 0

    # Devin's request, approved: devin may; cursor may not.
    by_devin = f"select 'devin {uuid.uuid4().hex[:8]}'"
    running = world.start("exec", "pg-review", "-c", by_devin, token=devin["secret"])
    approve_next()
    assert running.wait(20) == 0, running.communicate()[1]
    assert world.ran(by_devin) == 1
    again = f"select 'devin again {uuid.uuid4().hex[:8]}'"
    held = world.cli("exec", "pg-review", "-c", again, token=devin["secret"])
    assert held.returncode == 0, held.stderr
    tried = f"select 'cursor {uuid.uuid4().hex[:8]}'"
    refused = world.cli("exec", "pg-review", "-c", tried, token=cursor["secret"])
    assert refused.returncode == 1 and "timed out" in refused.stderr
    assert world.ran(tried) == 0
    approvals = world.events("review.approve")
    assert [a["review"].get("actor") for a in approvals[-2:]] == [None, "devin"]


def test_a_session_of_an_expired_login_ends(world: World) -> None:
    expires = int(time.time()) + 6
    token = crafted(world.provider, exp=expires)
    marker = uuid.uuid4().hex[:8]
    sql = f"select pg_sleep(60), '{marker}'"
    running = world.start("exec", "pg-main", "-c", sql, token=token)
    try:
        _, stderr = running.communicate(timeout=30)
    finally:
        if running.poll() is None:
            running.kill()
    assert running.returncode != 0
    assert "login expired" in stderr
    assert time.time() - expires < 10
    ended = [
        e
        for e in world.events("session.end")
        if e["user"]["sub"] == "alice" and "login expired" in e["reason"]
    ]
    assert ended, "no session.end naming the expired login"
