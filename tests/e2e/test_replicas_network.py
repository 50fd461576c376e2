"""Two replicas across real network boundaries, over TLS and mTLS, behind HAProxy
(devenv/replicanet.py draws the map): any replica serves any session on any agent instance,
changes fan out, and killing or restarting replicas and agents under load through the
balancer loses no event and no statement.

One world for the module (~20 s to build); the tests run in order and leave two instances of
`vpc` online, one on each replica, for the next, except the last (a revocation).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from devenv.replicanet import (
    EXTRA,
    GRPC_PORT,
    POLICY,
    REPLICAS,
    Load,
    World,
    create_pool,
    reconcile,
    started,
    wait,
)

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("namespaces_available")]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with started(tmp_path_factory.mktemp("replicas-net")) as built:
        built.place_agents(create_pool(built, uses=2))
        yield built


def _served_by(world: World, session_id: str) -> int:
    (which,) = [i for i, a in enumerate(world.agents) if f"session {session_id} ended" in a.log()]
    return which


def _holder(world: World, index: int) -> str:
    """The replica name (a or b) holding agent `index`'s control stream."""
    held = world.online()[world.instance_of(index)]
    return next(r for r in REPLICAS if world.replica_id(r) == held)


def _restore(world: World) -> None:
    """Both replicas up and both instances online, one on each replica."""
    for replica in REPLICAS:
        process = world.replicas[replica]
        if not process.running:
            world.start_replica(replica)
    for index, agent in enumerate(world.agents):
        if not agent.running:
            world.start_agent(world.join_token, index)  # its stored certificate: no token use spent
    wait("both instances online", lambda: len(world.online()) == 2)
    world.place_agents(world.join_token)  # restarts agent 1 until it lands on the other replica


def _agent_dialled(world: World, index: int) -> set[str]:
    """Remote addresses agent `index` holds TCP connections to (in the VPC namespace)."""
    proc = world.agents[index].proc
    assert proc is not None
    got = world.net["vpc"].run(["ss", "-Htnp", "state", "established"])
    return {  # IPv4 peers of a dual-stack socket show as [::ffff:A.B.C.D]:PORT
        re.sub(r"^\[::ffff:([0-9.]+)\]", r"\1", line.split()[3])
        for line in got.stdout.splitlines()
        if f"pid={proc.pid}," in line and len(line.split()) > 3
    }


def test_exec_through_each_replica_lands_on_both_instances(world: World) -> None:
    served: set[tuple[str, int]] = set()
    for i in range(8):
        via = REPLICAS[i % 2]
        ran = world.exec(f"select {i} as n, inet_server_addr() as at", via=via)
        assert ran.returncode == 0, ran.stderr
        result = json.loads(ran.stdout)
        assert result["rows"] == [[i, "127.0.0.1"]]  # the target on the VPC's loopback
        served.add((via, _served_by(world, result["session_id"])))
    assert served == {(r, a) for r in REPLICAS for a in (0, 1)}, served
    # Each instance holds its control stream on one replica and was ordered through the other
    # too: it dialled that replica's advertised address, with its client certificate (in
    # production mode that is the only credential a session stream is accepted with).
    for index in (0, 1):
        dialled = _agent_dialled(world, index)
        assert {f"{world.vpc_side(r)}:{GRPC_PORT}" for r in REPLICAS} <= dialled, dialled
    # `agents list` is the same from every replica; connects are recorded from the VPC.
    views = [sorted((a["instance"], a["replica"]) for a in world.listing(via=r)) for r in REPLICAS]
    assert views[0] == views[1]
    connects = [e for e in world.export() if e["type"] == "agent.connect"]
    assert {e["agent"]["peer"].split(":")[1] for e in connects} <= world.vpc_ips
    # Through the balancer the replicas see the CLI's own address (PROXY v2 from HAProxy).
    ran = world.exec("select 'through the balancer' as how")
    assert ran.returncode == 0, ran.stderr
    events = [e for e in world.export() if "through the balancer" in json.dumps(e)]
    assert events and {e["source"]["ip"] for e in events} == {world.balancer}


def test_an_apply_through_b_reaches_the_instance_on_a_within_a_second(world: World) -> None:
    on_a = next(i for i in (0, 1) if _holder(world, i) == "a")
    tag = uuid.uuid4().hex[:8]
    policy = world.base / "gatehouse.yaml"
    policy.write_text(
        POLICY.format(port=world.target.port) + EXTRA.format(tag=tag, port=world.target.port)
    )
    started_at = time.monotonic()
    applied = world.cli("admin", "apply", "-f", str(policy), via="b")
    assert applied.returncode == 0, applied.stderr
    returned = time.monotonic()
    wait(
        "the new connection reaching the agent on A",
        lambda: f"pg-{tag}" in world.agents[on_a].log(),
        world.agents[on_a].log_file,
        timeout=5,
    )
    reached = time.monotonic() - returned
    print(
        f"\napply through B reached the instance on A {reached * 1000:.0f} ms after the CLI "
        f"returned ({(time.monotonic() - started_at) * 1000:.0f} ms with the CLI's start)"
    )
    assert reached < 1.0
    ran = world.cli("exec", f"pg-{tag}", "-c", "select 'new connection' as how", via="a")
    assert ran.returncode == 0, ran.stderr


def test_kill_9_of_a_replica_then_of_an_agent_under_load_through_haproxy(world: World) -> None:
    with Load(world) as load:
        load.wait_ok(6)
        killed = time.monotonic()
        world.kill_replica("a")
        replica_recovery = load.recovered_after(killed)
        survivor = world.replica_id("b")
        wait("both instances on the survivor", lambda: set(world.online().values()) == {survivor})
        moved = time.monotonic() - killed
        refused_replica = len(load.refused)
        load.wait_ok(4)
        killed = time.monotonic()
        world.kill_agent(0)
        agent_recovery = load.recovered_after(killed)
        load.wait_ok(4)
    refused_agent = len(load.refused) - refused_replica
    print(
        f"\nkill -9 of replica a: first new session after {replica_recovery:.2f} s, both "
        f"instances on b by {moved:.2f} s, {refused_replica} refused; kill -9 of an agent "
        f"instance: first new session after {agent_recovery:.2f} s, {refused_agent} refused; "
        f"{len(load.ok)} sessions ok"
    )
    for _, _, why in load.refused:  # what the user was told says what happened
        assert "ended before the database answered" not in why, why
    # Only sessions in flight when a process died may fail: at most one per load thread each.
    assert refused_replica <= load.threads and refused_agent <= load.threads, load.refused
    assert replica_recovery < 10 and agent_recovery < 10
    _restore(world)
    counts = reconcile(world, world.base / "kill.pub")
    print(f"trail after the kills: {counts}")
    for _, _, tag in load.ok:
        assert f"select '{tag}' as tag" in world.target.statement_log()


def test_a_rolling_restart_under_load_refuses_at_most_the_in_flight_sessions(
    world: World,
) -> None:
    restarts: list[str] = []
    with Load(world) as load:
        load.wait_ok(4)
        for replica in REPLICAS:
            before = len(load.refused)
            began = time.monotonic()
            world.replicas[replica].stop()  # SIGTERM: it marks itself stopped, drains
            world.start_replica(replica)
            restarts.append(
                f"{replica}: {time.monotonic() - began:.1f} s, {len(load.refused) - before} refused"
            )
            load.wait_ok(4)
    print(f"\nrolling restart: {'; '.join(restarts)}; {len(load.ok)} sessions ok")
    assert len(load.refused) <= load.threads * len(REPLICAS), load.refused
    _restore(world)
    counts = reconcile(world, world.base / "rolling.pub")
    print(f"trail after the rolling restart: {counts}")
    for _, _, tag in load.ok:
        assert f"select '{tag}' as tag" in world.target.statement_log()


def test_a_revoke_through_a_ends_the_streams_b_holds(world: World) -> None:
    """A long session whose client is on B (B holds its session stream); the instance serving
    it is revoked through A: the agent exits, the session ends at once and its user is told."""
    marker = f"held-{uuid.uuid4().hex[:8]}"
    target = f"127.0.0.1:{world.target.port}"
    with world.cli_running("exec", "pg", "-c", f"select pg_sleep(60), '{marker}'", via="b") as held:
        wait(
            "the long statement reaching the target",
            lambda: any(marker in s for s in world.target.statement_log()),
            timeout=30,
        )
        serving = next(i for i in (0, 1) if target in _agent_dialled(world, i))
        agent = world.agents[serving]
        started_at = time.monotonic()
        revoked = world.cli(
            "admin", "agents", "revoke", "vpc", "--instance", world.instance_of(serving), via="a"
        )
        assert revoked.returncode == 0, revoked.stderr
        assert agent.proc is not None
        assert agent.proc.wait(timeout=20) == 1
        exited = time.monotonic() - started_at
        out, err = held.communicate(timeout=20)
        ended = time.monotonic() - started_at
    print(
        f"\nrevoke through A: the session held by B ended {ended:.2f} s later, the agent "
        f"exited {exited:.2f} s later"
    )
    assert "was revoked" in agent.log()
    assert held.returncode != 0 and marker not in out
    assert "revoked" in err, err  # not "the session ended before the database answered"
    assert ended < 10
    other = world.agents[1 - serving]
    assert other.running
    ran = world.exec("select 'after the revoke' as how", via="b")
    assert ran.returncode == 0, ran.stderr
    assert _served_by(world, json.loads(ran.stdout)["session_id"]) == 1 - serving
