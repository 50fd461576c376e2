"""Two control-plane replicas on one PostgreSQL store, and a pool of two agent instances.

Real processes: two `controlplane serve` sharing `GATEHOUSE_DATABASE_URL` and the audit
signing key, agent processes pointed at one replica each (or at both), the CLI against either
replica. Sessions through either replica reach either instance, an apply through one reaches
the instances the other holds, a revoke through one ends a stream the other holds, and a
replica killed with -9 costs only its own sessions while the trail stays one dense chain.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.audit.checkpoints import KEY_FILE_NAME
from devenv.postgres import PostgresServer, start_postgres
from devenv.stack import Agent, ControlPlane, StackError, gatehouse
from tests.integration.store.conftest import TARGET_PASSWORD, TARGET_ROLE, postgres_url

pytestmark = pytest.mark.e2e

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: vpc
    target: {{host: 127.0.0.1, port: {port}, database: {db}, user: {user}, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""
EXTRA = """\
  - name: pg-{tag}
    type: postgres
    agent: vpc
    target: {{host: 127.0.0.1, port: {port}, database: {db}, user: {user}, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""


@dataclass
class Cluster:
    """Replicas on one store, agent instances of `vpc`, and the target they serve."""

    base: Path
    url: str
    target: PostgresServer
    replicas: list[ControlPlane]
    agents: list[Agent]

    def cli(
        self, replica: int, *args: str, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return gatehouse(list(args), env=self.replicas[replica].cli_env, timeout=timeout)

    def replica(self, index: int) -> ControlPlane:
        """Start replica `index` (again) on its own ports, sharing the store and signing key."""
        data_dir = self.base / f"replica-{index}"
        env = {"GATEHOUSE_DATABASE_URL": self.url}
        if index > 0:  # one signing key for all: the first replica's
            env["GATEHOUSE_AUDIT_KEY_FILE"] = str(self.base / "replica-0" / KEY_FILE_NAME)
        old = self.replicas[index] if index < len(self.replicas) else None
        plane = ControlPlane.create(
            data_dir,
            env=env,
            grpc_port=old.grpc_port if old else None,
            http_port=old.http_port if old else None,
        )
        plane.start_and_wait()
        if old is None:
            self.replicas.append(plane)
        else:
            self.replicas[index] = plane
        return plane

    def agent(self, token: str, addresses: str, index: int) -> Agent:
        data_dir = self.base / f"agent-{index}"
        agent = Agent(
            args=[
                "agent",
                "run",
                "--controlplane",
                addresses,
                "--token",
                token,
                "--name",
                "vpc",
                "--insecure",
                "--data-dir",
                str(data_dir),
            ],
            log_file=data_dir / "agent.log",
            env={"PG_PASSWORD": TARGET_PASSWORD},
            name="vpc",
        )
        agent.start()
        self.agents.append(agent)
        return agent

    def listing(self, replica: int) -> list[dict[str, Any]]:
        listed = self.cli(replica, "admin", "agents", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        return [a for a in json.loads(listed.stdout) if a["name"] == "vpc"]

    def wait_online(self, count: int, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.listing(0)
            if sum(a["status"] == "online" for a in lines) >= count:
                return lines
            if time.monotonic() > deadline:
                raise StackError(f"not {count} instances online: {lines}")
            time.sleep(0.2)

    def exec(self, replica: int, statement: str) -> subprocess.CompletedProcess[str]:
        return self.cli(replica, "exec", "pg", "-c", statement, "-o", "json", timeout=30)

    def served_by(self, session_id: str) -> int:
        (which,) = [
            i for i, a in enumerate(self.agents) if f"session {session_id} ended" in a.log()
        ]
        return which

    def stop(self) -> None:
        for process in [*self.agents, *self.replicas]:
            process.stop()


@pytest.fixture
def cluster(tmp_path: Path, pg_server: PostgresServer, pg_database: str) -> Iterator[Cluster]:
    target = start_postgres(
        tmp_path / "target",
        roles={TARGET_ROLE: TARGET_PASSWORD},
        databases={TARGET_ROLE: TARGET_ROLE},
        log_statements=True,
    )
    made = Cluster(tmp_path, postgres_url(pg_server, pg_database), target, [], [])
    try:
        made.replica(0)
        made.replica(1)
        policy = tmp_path / "gatehouse.yaml"
        policy.write_text(POLICY.format(port=target.port, db=TARGET_ROLE, user=TARGET_ROLE))
        applied = made.cli(0, "admin", "apply", "-f", str(policy))
        assert applied.returncode == 0, applied.stderr
        yield made
    finally:
        made.stop()
        target.stop()


def _pool_token(cluster: Cluster, uses: int = 2) -> str:
    created = cluster.cli(0, "admin", "agents", "create", "vpc", "--uses", str(uses), "-o", "json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["join_token"])


def test_any_replica_serves_any_instance_and_changes_reach_every_replica(
    cluster: Cluster,
) -> None:
    token = _pool_token(cluster)
    cluster.agent(token, cluster.replicas[0].address, 0)  # held by replica A
    cluster.wait_online(1)
    cluster.agent(token, cluster.replicas[1].address, 1)  # held by replica B
    lines = cluster.wait_online(2)
    holders = {a["instance"]: a["replica"] for a in lines}
    assert len(set(holders.values())) == 2  # one instance on each replica

    # `agents list` is the same from every replica.
    def view(replica: int) -> list[tuple[str, str, str]]:
        return sorted((a["instance"], a["status"], a["replica"]) for a in cluster.listing(replica))

    assert view(0) == view(1)

    # Exec through A and through B lands on both instances (across replicas both ways).
    served = set()
    for i in range(8):
        ran = cluster.exec(i % 2, f"select {i} as n")
        assert ran.returncode == 0, ran.stderr
        assert json.loads(ran.stdout)["rows"] == [[i]]
        served.add((i % 2, cluster.served_by(json.loads(ran.stdout)["session_id"])))
    assert {agent for _, agent in served} == {0, 1}
    assert {replica for replica, _ in served} == {0, 1}

    # An apply through B reaches the instance held by A within a second.
    policy = cluster.base / "gatehouse.yaml"
    tag = uuid.uuid4().hex[:8]
    args = {"port": cluster.target.port, "db": TARGET_ROLE, "user": TARGET_ROLE}
    policy.write_text(POLICY.format(**args) + EXTRA.format(tag=tag, **args))
    started = time.monotonic()
    applied = cluster.cli(1, "admin", "apply", "-f", str(policy))
    assert applied.returncode == 0, applied.stderr
    returned = time.monotonic()
    while f"pg-{tag}" not in cluster.agents[0].log():
        assert time.monotonic() - started < 5, cluster.agents[0].log()[-2000:]
        time.sleep(0.02)
    reached = time.monotonic()
    # The CLI's own start is most of the total; the fan-out is what follows its answer.
    assert reached - returned < 1.0, f"{reached - returned:.2f} s after the apply returned"
    print(
        f"apply through B reached the instance on A {(reached - returned) * 1000:.0f} ms "
        f"after the CLI returned ({(reached - started) * 1000:.0f} ms with the CLI's start)"
    )

    # A revoke through A ends the stream B holds: that agent is refused and exits.
    on_b = next(i for i, r in holders.items() if r != _replica_id(cluster, 0))
    started = time.monotonic()
    revoked = cluster.cli(0, "admin", "agents", "revoke", "vpc", "--instance", on_b)
    assert revoked.returncode == 0, revoked.stderr
    while cluster.agents[1].running:
        assert time.monotonic() - started < 10, cluster.agents[1].log()[-2000:]
        time.sleep(0.05)
    print(f"revoke through A ended the stream held by B in {time.monotonic() - started:.2f} s")
    assert "refused this agent" in cluster.agents[1].log()
    assert cluster.agents[0].running
    ran = cluster.exec(1, "select 'after revoke' as n")
    assert ran.returncode == 0, ran.stderr
    assert cluster.served_by(json.loads(ran.stdout)["session_id"]) == 0


def _replica_id(cluster: Cluster, index: int) -> str:
    health = cluster.replicas[index].health()
    assert health is not None
    return str(health["replica"])


def test_a_second_replica_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    first = ControlPlane.create(tmp_path / "data")
    first.start_and_wait()
    try:
        second = gatehouse(
            [
                "controlplane",
                "serve",
                "--dev",
                "--data-dir",
                str(tmp_path / "data"),
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            timeout=30,
        )
        assert second.returncode != 0
        assert "SQLite holds one replica" in second.stderr
        assert first.running and first.health() is not None
    finally:
        first.stop()


def test_a_killed_replica_costs_only_its_sessions_and_the_trail_stays_dense(
    cluster: Cluster,
) -> None:
    _pool_on_both(cluster)

    ok: list[str] = []
    failed: list[tuple[float, str]] = []

    def load(seconds: float, victim: int | None = None) -> tuple[float, float | None]:
        """Exec through both replicas in turn for `seconds`; with a victim, kill it -9 a
        third of the way in and return how long until a session through the survivor and on
        an instance that was held by the victim succeeded again."""
        started = time.monotonic()
        killed_at: float | None = None
        recovered: float | None = None
        i = 0
        while time.monotonic() - started < seconds:
            if (
                victim is not None
                and killed_at is None
                and time.monotonic() - started > seconds / 3
            ):
                proc = cluster.replicas[victim].proc
                assert proc is not None
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                killed_at = time.monotonic()
            replica = i % 2
            i += 1
            if killed_at is not None and replica == victim:
                continue  # the clients of a dead replica go to the survivor
            tag = uuid.uuid4().hex[:10]
            ran = cluster.exec(replica, f"select '{tag}' as tag")
            if ran.returncode == 0:
                ok.append(tag)
                if killed_at is not None and recovered is None:
                    recovered = time.monotonic() - killed_at
            else:
                failed.append((time.monotonic(), ran.stderr.strip()[-200:]))
        return killed_at or started, recovered

    load(4)
    assert ok and not failed, failed
    survivor = _replica_id(cluster, 1)
    moved: list[float] = []

    def watch() -> None:
        """When both instances hold their streams on the survivor (polled through it)."""
        while not moved:
            lines = cluster.listing(1)
            held = [a["replica"] for a in lines if a["status"] == "online"]
            proc = cluster.replicas[0].proc
            if held == [survivor] * 2 and (proc is None or proc.poll() is not None):
                moved.append(time.monotonic())
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    killed_at, recovered = load(12, victim=0)
    assert recovered is not None, failed
    watcher.join(20)
    assert moved, cluster.listing(1)  # both instances reconnected to the survivor
    print(
        f"replica killed: first session after {recovered:.2f} s, both instances seen on the "
        f"survivor by {moved[0] - killed_at:.2f} s; {len(ok)} sessions ok, "
        f"{len(failed)} refused during the failover"
    )

    # Then one agent instance dies: the other serves on.
    proc = cluster.agents[0].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(failed)
    killed = time.monotonic()
    first_ok: float | None = None
    while time.monotonic() - killed < 6:
        tag = uuid.uuid4().hex[:10]
        ran = cluster.exec(1, f"select '{tag}' as tag")
        if ran.returncode == 0:
            ok.append(tag)
            first_ok = first_ok or time.monotonic() - killed
        else:
            failed.append((time.monotonic(), ran.stderr.strip()[-200:]))
    assert first_ok is not None
    print(f"instance killed: first session after {first_ok:.2f} s, {len(failed) - before} refused")

    # The replica comes back; the trail is one dense chain written by all of them.
    cluster.replica(0)
    _trail_accounts_for_every_statement(cluster, ok)


def test_a_rolling_restart_loses_no_event_and_no_statement(cluster: Cluster) -> None:
    _pool_on_both(cluster)
    ok: list[str] = []
    refused: list[str] = []
    down: set[int] = set()
    stop = threading.Event()

    def load() -> None:
        """Clients of a replica being restarted go to the other one, as a balancer does."""
        i = 0
        while not stop.is_set():
            replica = i % 2
            i += 1
            if replica in down:
                replica = 1 - replica
            tag = uuid.uuid4().hex[:10]
            ran = cluster.exec(replica, f"select '{tag}' as tag")
            if ran.returncode == 0:
                ok.append(tag)
            else:  # why, for the assertion's message
                refused.append(f"replica {replica}: {ran.stderr.strip()[-300:]}")

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        for index in (0, 1):
            time.sleep(2)
            down.add(index)
            cluster.replicas[index].stop()
            cluster.replica(index)
            down.discard(index)
        time.sleep(2)
    finally:
        stop.set()
        worker.join(60)
    print(f"rolling restart: {len(ok)} sessions ok, {len(refused)} refused")
    assert len(ok) > 10
    # At most the sessions in flight on each replica as it stops.
    assert len(refused) <= 2, refused

    _trail_accounts_for_every_statement(cluster, ok)


def _pool_on_both(cluster: Cluster) -> None:
    """Two instances of `vpc`, each given both replicas' addresses."""
    token = _pool_token(cluster)
    both = f"{cluster.replicas[0].address},{cluster.replicas[1].address}"
    for index in range(2):
        cluster.agent(token, both, index)
    cluster.wait_online(2)


def _trail_accounts_for_every_statement(cluster: Cluster, ok: list[str]) -> None:
    """The chain verifies through either replica, seq is dense, every statement the target
    logged has its `db.query` event and ran once, and every session that succeeded ran."""
    verified = cluster.cli(0, "audit", "verify")
    assert verified.returncode == 0, verified.stderr + verified.stdout
    exported = cluster.cli(1, "audit", "export")
    assert exported.returncode == 0, exported.stderr
    events = [json.loads(line) for line in exported.stdout.split("\n") if line]
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    logged = [s for s in cluster.target.statement_log() if "as tag" in s]
    recorded = {e["request"]["statement"] for e in events if e["type"] == "db.query"}
    assert len(logged) == len(set(logged))  # nothing ran twice
    assert set(logged) <= recorded
    for tag in ok:
        assert f"select '{tag}' as tag" in logged
