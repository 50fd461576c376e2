"""Agents: enrollment with one-time join tokens, status, reconnect after a control-plane restart."""

from __future__ import annotations

import json
import time

from devenv.stack import Agent, gatehouse
from tests.e2e.conftest import AGENT, PG_PASSWORD, POLICY, Stack


def test_agents_list_shows_status_version_and_last_seen(own_stack: Stack) -> None:
    listed = own_stack.cli("admin", "agents", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    (agent,) = json.loads(listed.stdout)
    assert agent["name"] == AGENT
    assert agent["status"] == "online"
    assert agent["version"] == "0.1.0"
    assert agent["last_seen"]
    table = own_stack.cli("admin", "agents", "list")
    assert "online" in table.stdout and AGENT in table.stdout

    own_stack.agent.stop()
    own_stack.controlplane.wait_agent(AGENT, "offline")


def test_reused_join_token_is_refused_with_a_clear_message(own_stack: Stack) -> None:
    created = own_stack.cli("admin", "agents", "create", "edge-2", "-o", "json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["join_token"]
    first = Agent.create(own_stack.controlplane, "edge-2", token, own_stack.base / "a1")
    first.start()
    try:
        own_stack.controlplane.wait_agent("edge-2")
    finally:
        first.stop()
    # A second machine trying the same token (no stored credential there) is refused.
    second = gatehouse(
        [
            "agent",
            "run",
            "--controlplane",
            own_stack.controlplane.address,
            "--token",
            token,
            "--name",
            "edge-2",
            "--insecure",
            "--data-dir",
            str(own_stack.base / "a2"),
        ],
        timeout=30,
    )
    assert second.returncode == 1
    assert "join token was already used" in second.stderr


def test_revoked_agent_is_disconnected_and_cannot_return(own_stack: Stack) -> None:
    revoked = own_stack.cli("admin", "agents", "revoke", AGENT)
    assert revoked.returncode == 0, revoked.stderr
    assert own_stack.agent.proc is not None
    code = own_stack.agent.proc.wait(timeout=20)
    assert code == 1
    assert "revoked" in own_stack.agent.log()
    own_stack.controlplane.wait_agent(AGENT, "revoked")
    result = own_stack.cli("exec", "pg", "-c", "select 1")
    assert result.returncode == 1
    assert "offline" in result.stderr


def test_exec_names_a_connection_whose_agent_is_offline(own_stack: Stack) -> None:
    assert own_stack.cli("admin", "agents", "create", "ghost").returncode == 0
    policy = POLICY.format(agent=AGENT, port=own_stack.pg.port) + POLICY.format(
        agent="ghost", port=own_stack.pg.port
    ).replace("connections:\n", "").replace("name: pg", "name: pg-ghost")
    applied = own_stack.apply(policy)
    assert applied.returncode == 0, applied.stderr
    result = own_stack.cli("exec", "pg-ghost", "-c", "select 1")
    assert result.returncode == 1
    assert "'pg-ghost' is served by agent 'ghost', which is offline" in result.stderr


def test_agent_reconnects_after_the_control_plane_restarts(own_stack: Stack) -> None:
    controlplane, agent = own_stack.controlplane, own_stack.agent
    assert agent.proc is not None
    agent_pid = agent.proc.pid
    controlplane.stop()

    started = time.monotonic()
    down = own_stack.cli("exec", "pg", "-c", "select 1", timeout=30)
    assert down.returncode == 1
    assert "cannot reach the control plane" in down.stderr
    assert time.monotonic() - started < 10

    controlplane.start_and_wait()
    controlplane.wait_agent(AGENT, timeout=40)
    back = own_stack.cli("exec", "pg", "-c", "select 41+1 as answer")
    assert back.returncode == 0, back.stderr
    assert "42" in back.stdout
    assert agent.proc is not None and agent.proc.pid == agent_pid  # never restarted
    assert "reconnecting" in agent.log()


def test_apply_names_an_unknown_key_and_its_line(own_stack: Stack) -> None:
    bad = "connections:\n  - name: pg\n    type: postgres\n    agent: vpc-1\n    tagret: {}\n"
    result = own_stack.apply(bad)
    assert result.returncode == 1
    assert "gatehouse.yaml:5: unknown key 'tagret'" in result.stderr


def test_agent_without_a_token_is_a_usage_error() -> None:
    result = gatehouse(["agent", "run", "--name", "x"], env={"GATEHOUSE_AGENT_TOKEN": ""})
    assert result.returncode == 2
    assert "--token" in result.stderr


def test_a_pool_of_instances_serves_one_name_and_one_instance_can_be_revoked(
    own_stack: Stack,
) -> None:
    created = own_stack.cli("admin", "agents", "create", "pool", "--uses", "2", "-o", "json")
    assert created.returncode == 0, created.stderr
    token = json.loads(created.stdout)["join_token"]
    env = {"PG_PASSWORD": PG_PASSWORD}
    agents = [
        Agent.create(own_stack.controlplane, "pool", token, own_stack.base / f"p{i}", env=env)
        for i in range(2)
    ]
    for agent in agents:
        agent.start()
    try:
        lines = own_stack.controlplane.wait_agent("pool", instances=2)
        assert len({line["instance"] for line in lines}) == 2
        assert all(line["replica"] for line in lines)
        applied = own_stack.apply(POLICY.format(agent="pool", port=own_stack.pg.port))
        assert applied.returncode == 0, applied.stderr

        served: dict[int, int] = {}
        for _ in range(6):
            ran = own_stack.cli("exec", "pg", "-c", "select 1 as one", "-o", "json")
            assert ran.returncode == 0, ran.stderr
            session = json.loads(ran.stdout)["session_id"]
            (which,) = [i for i, a in enumerate(agents) if f"session {session} ended" in a.log()]
            served[which] = served.get(which, 0) + 1
        assert len(served) == 2  # sessions spread over both instances
        for agent in agents:  # and neither was knocked off by the other
            assert "replaced by" not in agent.log()

        first = str(lines[0]["instance"])
        revoked = own_stack.cli("admin", "agents", "revoke", "pool", "--instance", first)
        assert revoked.returncode == 0, revoked.stderr
        listed = {
            a["instance"]: a["status"]
            for a in json.loads(own_stack.cli("admin", "agents", "list", "-o", "json").stdout)
            if a["name"] == "pool"
        }
        assert listed[first] == "revoked"
        assert set(listed.values()) == {"revoked", "online"}
        for _ in range(3):  # the other instance serves on
            ran = own_stack.cli("exec", "pg", "-c", "select 2 as two")
            assert ran.returncode == 0, ran.stderr
        deadline = time.monotonic() + 15
        cut = [a for a in agents if "refused this agent" in a.log()]
        while not cut and time.monotonic() < deadline:
            time.sleep(0.2)
            cut = [a for a in agents if "refused this agent" in a.log()]
        assert len(cut) == 1 and not cut[0].running
    finally:
        for agent in agents:
            agent.stop()
