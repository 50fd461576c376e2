"""Just-in-time access reviews with real people: alice (group dba) may exec on `pg-review*`
only after someone of group security approves; bob (security) lists and decides. Nothing
reaches PostgreSQL before the approval, an approval holds for the rule's TTL, and every step
is an audit event."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from subprocess import CompletedProcess
from typing import Any

import pytest

from devenv.oidc import AUDIENCE, OidcProvider
from devenv.postgres import start_postgres
from devenv.stack import GATEHOUSE, REPO, ControlPlane, enroll_agent, gatehouse
from tests.integration.oidc.conftest import device_log_in, settings_for
from tests.integration.oidc.test_access_rules import People

# Seconds a session waits for a decision (GATEHOUSE_REVIEW_TIMEOUT): room for a busy machine's
# `exec` start and a few `reviews list` polls before a test approves, denies or interrupts.
REVIEW_TIMEOUT = 15
BRIEF_TTL = 3  # seconds an approval of the `brief` rule holds

TARGET = (
    "    type: postgres\n"
    "    agent: vpc-1\n"
    "    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}\n"
    "    secret: {{password: env:PG_PASSWORD}}\n"
)
POLICY = (
    "connections:\n"
    + "".join(
        f"  - name: {name}\n{TARGET}"
        for name in ("pg-review", "pg-review-2", "pg-review-3", "pg-brief")
    )
    + """\
access:
  - name: oncall
    groups: [dba]
    connections: ['pg-review*']
    modes: [exec]
    review: {{groups: [security], ttl: 1h}}
  - name: brief
    groups: [dba]
    connections: [pg-brief]
    modes: [exec]
    review: {{groups: [security], ttl: {brief_ttl}s}}
"""
)


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider) -> Iterator[People]:
    base = tmp_path_factory.mktemp("reviews")
    pg = start_postgres(base / "pg", roles={"app": "pw"}, databases={"app": "app"})
    controlplane = ControlPlane.create(
        base / "cp",
        env={
            "GATEHOUSE_OIDC_ISSUER": oidc.issuer,
            "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE,
            "GATEHOUSE_REVIEW_TIMEOUT": str(REVIEW_TIMEOUT),
        },
    )
    controlplane.start_and_wait()
    agent = None
    try:
        agent = enroll_agent(controlplane, "vpc-1", base / "agent", env={"PG_PASSWORD": "pw"})
        (base / "gatehouse.yaml").write_text(POLICY.format(port=pg.port, brief_ttl=BRIEF_TTL))
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


def start_exec(people: People, connection: str, sql: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*GATEHOUSE, "exec", connection, "-c", sql],
        env={**os.environ, **people.env(people.alice.access_token)},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def pending_review(
    people: People, connection: str, timeout: float = REVIEW_TIMEOUT - 3
) -> dict[str, Any]:
    """The pending review on `connection` as bob sees it, once it shows up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = people.cli("reviews", "list", "-o", "json", token=people.bob.access_token)
        assert listed.returncode == 0, listed.stderr
        for review in json.loads(listed.stdout):
            if review["connection"] == connection and review["status"] == "pending":
                return dict(review)
        time.sleep(0.2)
    raise AssertionError(f"no pending review on {connection} within {timeout} s")


def finish(running: subprocess.Popen[str]) -> CompletedProcess[str]:
    try:
        stdout, stderr = running.communicate(timeout=20)
    finally:
        if running.poll() is None:
            running.kill()
            running.communicate()
    return CompletedProcess(running.args, running.returncode, stdout, stderr)


def test_an_approved_review_opens_the_session_and_holds_for_the_ttl(people: People) -> None:
    sql = f"select 'reviewed {uuid.uuid4().hex[:8]}'"
    running = start_exec(people, "pg-review", sql)
    try:
        review = pending_review(people, "pg-review")
        assert review["requester"] == "alice@example.com"
        assert review["reviewers"] == ["security"] and review["rule"] == "oncall"
        assert review["mode"] == "exec"
        # Alice waits; nothing reached PostgreSQL yet.
        assert running.poll() is None
        assert people.pg.wait_for_statement(sql, timeout=0.5) == 0

        # Alice sees her own request but cannot approve it.
        mine = people.cli("reviews", "list", "-o", "json", token=people.alice.access_token)
        assert review["id"] in [r["id"] for r in json.loads(mine.stdout) if r["mine"]]
        own = people.cli("reviews", "approve", review["id"], token=people.alice.access_token)
        assert own.returncode == 1
        assert "your own review request" in own.stderr

        approved = people.cli("reviews", "approve", review["id"], token=people.bob.access_token)
        assert approved.returncode == 0, approved.stderr
    finally:
        result = finish(running)
    assert result.returncode == 0, result.stderr
    assert f"waiting for review {review['id']} by group security" in result.stderr
    assert people.pg.wait_for_statement(sql) == 1

    # Within the TTL the same connection and mode need no new review.
    again = f"select 'again {uuid.uuid4().hex[:8]}'"
    second = people.cli("exec", "pg-review", "-c", again, token=people.alice.access_token)
    assert second.returncode == 0, second.stderr
    assert "waiting for review" not in second.stderr
    assert people.pg.wait_for_statement(again) == 1

    events = people.events()
    (request,) = [
        e for e in events if e["type"] == "review.request" and e["review"]["id"] == review["id"]
    ]
    assert request["user"]["email"] == "alice@example.com"
    assert request["connection"] == {"name": "pg-review"} and request["mode"] == "exec"
    assert request["review"]["rule"] == "oncall"
    (approve,) = [
        e for e in events if e["type"] == "review.approve" and e["review"]["id"] == review["id"]
    ]
    assert approve["user"]["email"] == "bob@example.com"
    assert approve["requester"]["email"] == "alice@example.com"
    assert approve["seq"] > request["seq"]
    starts = [e for e in events if e["type"] == "session.start" and e.get("review") == review["id"]]
    assert len(starts) == 2  # the approved session and the one within the TTL
    assert all(s["seq"] > approve["seq"] for s in starts)


def test_a_denial_ends_the_wait_with_the_reason(people: People) -> None:
    sql = f"select 'denied {uuid.uuid4().hex[:8]}'"
    running = start_exec(people, "pg-review-2", sql)
    try:
        review = pending_review(people, "pg-review-2")
        reason = f"not during the freeze {uuid.uuid4().hex[:4]}"
        denied = people.cli(
            "reviews", "deny", review["id"], "--reason", reason, token=people.bob.access_token
        )
        assert denied.returncode == 0, denied.stderr
    finally:
        result = finish(running)
    assert result.returncode == 1
    assert reason in result.stderr and "denied by bob@example.com" in result.stderr
    assert people.pg.wait_for_statement(sql, timeout=1.0) == 0
    (deny,) = [
        e
        for e in people.events()
        if e["type"] == "review.deny" and e["review"]["id"] == review["id"]
    ]
    assert deny["user"]["email"] == "bob@example.com"
    assert deny["requester"]["email"] == "alice@example.com"
    assert deny["reason"] == reason
    assert deny["connection"] == {"name": "pg-review-2"} and deny["mode"] == "exec"
    assert deny["review"]["rule"] == "oncall"


def test_ctrl_c_stops_waiting_and_withdraws_the_request(people: People) -> None:
    running = start_exec(people, "pg-review-3", "select 'withdrawn'")
    try:
        review = pending_review(people, "pg-review-3")
        running.send_signal(signal.SIGINT)
    finally:
        result = finish(running)
    assert result.returncode == 130
    deadline = time.monotonic() + 5
    status = "pending"
    while status == "pending" and time.monotonic() < deadline:
        mine = people.cli("reviews", "list", "-o", "json", token=people.alice.access_token)
        (listed,) = [r for r in json.loads(mine.stdout) if r["id"] == review["id"]]
        status = listed["status"]
        time.sleep(0.2)
    assert status == "cancelled"
    refused = people.cli("reviews", "approve", review["id"], token=people.bob.access_token)
    assert refused.returncode == 1


def test_a_review_nobody_decides_times_out(people: People) -> None:
    sql = f"select 'timeout {uuid.uuid4().hex[:8]}'"
    started = time.monotonic()
    result = people.cli("exec", "pg-review-3", "-c", sql, token=people.alice.access_token)
    assert result.returncode == 1
    assert "timed out" in result.stderr
    assert REVIEW_TIMEOUT - 1 < time.monotonic() - started < REVIEW_TIMEOUT + 10
    assert people.pg.wait_for_statement(sql, timeout=0.5) == 0
    assert any(e["type"] == "review.expire" for e in people.events())


def test_an_approval_ends_with_its_ttl(people: People) -> None:
    def approve_next() -> subprocess.Popen[str]:
        running = start_exec(people, "pg-brief", f"select 'brief {uuid.uuid4().hex[:8]}'")
        review = pending_review(people, "pg-brief")
        decided = people.cli("reviews", "approve", review["id"], token=people.bob.access_token)
        assert decided.returncode == 0, decided.stderr
        return running

    assert finish(approve_next()).returncode == 0
    time.sleep(BRIEF_TTL + 1)
    # The grant has run out: the next session asks for a review again.
    assert finish(approve_next()).returncode == 0
    requests = [
        e
        for e in people.events()
        if e["type"] == "review.request" and e["connection"] == {"name": "pg-brief"}
    ]
    assert len(requests) == 2
