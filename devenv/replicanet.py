"""Two control-plane replicas across real network boundaries, over TLS, behind HAProxy: for
tests/e2e/test_replicas_network.py and the soak (`python -m bench.replicas`).

Network namespaces (`rep{pid}-ROLE`, see devenv/netns.py):

* `a`, `b`: one production replica each (TLS, the shared CA, audit key and store), listening
  on every address, advertising its VPC-side address to agents.
* `db`: the PostgreSQL store, reachable from `a` and `b` only.
* `vpc`: two instances of agent `vpc` (one join token, `--uses 2`, each given both replicas'
  addresses) and the target PostgreSQL on the VPC's own loopback, logging every statement.
* `cli`: HAProxy from Debian in TCP mode (a test copy of deploy/haproxy/gatehouse.cfg, PROXY
  v2 to the replicas from an address of its own, which they trust) and the CLI.

The second replica is set up the way docs/deploy.md tells an operator: `ca.pem`, `ca.key`
and `audit-signing.key` copied from the first replica's data directory before its first start.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.audit.checkpoints import KEY_FILE_NAME
from controlplane.tls.ca import CA_CERT_FILE, CA_KEY_FILE
from devenv import netns
from devenv.postgres import PostgresServer, start_postgres
from devenv.processes import stop_process, tail
from devenv.production import production_agent
from devenv.stack import Agent, Process, gatehouse, gatehouse_running
from trail.canonical import canonical
from trail.chain import export_line

PREFIX = "rep"
REPLICAS = ("a", "b")
LINKS = [("a", "vpc"), ("b", "vpc"), ("a", "cli"), ("b", "cli"), ("a", "db"), ("b", "db")]
GRPC_PORT, HTTP_PORT = 8443, 8080
STORE_ROLE, STORE_PASSWORD = "gatehouse", "rep-store-pw"
TARGET_PASSWORD = "rep-target-pw"
AGENT = "vpc"
HAPROXY_CONFIG = Path(__file__).resolve().parent.parent / "deploy" / "haproxy" / "gatehouse.cfg"
# Replicas checkpoint often, so the trail holds checkpoints signed by both with the one key.
CHECKPOINT_EVERY = "25"
POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: vpc
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""
EXTRA = """\
  - name: pg-{tag}
    type: postgres
    agent: vpc
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""


def wait(
    what: str, check: Callable[[], bool], log: Path | None = None, timeout: float = 60
) -> None:
    """Poll `check` until it holds; fail naming `what` (with the end of `log`)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen" + (f":\n{tail(log)}" if log else ""))
        time.sleep(0.1)


@dataclass
class Haproxy:
    """HAProxy in the foreground (`-db`) inside a namespace; stopped with the world."""

    config: Path
    wrap: list[str]
    log_file: Path
    proc: subprocess.Popen[bytes] | None = None

    def check(self) -> subprocess.CompletedProcess[str]:
        command = [*self.wrap, "haproxy", "-c", "-f", str(self.config)]
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)

    def start(self) -> None:
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, "haproxy", "-db", "-f", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "haproxy", [(signal.SIGTERM, 5), (signal.SIGKILL, 5)])
            self.proc = None


@dataclass
class World:
    net: netns.Network
    base: Path
    store: PostgresServer
    target: PostgresServer
    haproxy: Haproxy
    replicas: dict[str, Process] = field(default_factory=dict)
    agents: list[Agent] = field(default_factory=list)
    join_token: str = ""  # the pool's; a restarted agent uses its stored certificate instead

    # ---- addresses --------------------------------------------------------------------

    def vpc_side(self, replica: str) -> str:
        """Where agents reach `replica` (its --advertise host)."""
        return self.net[replica].addresses[0]

    def cli_side(self, replica: str) -> str:
        return self.net[replica].addresses[1]

    @property
    def balancer(self) -> str:
        """HAProxy's address in the cli namespace (also the CLI's own source address)."""
        return self.net["cli"].addresses[0]

    def lb_source(self, replica: str) -> str:
        """The address HAProxy dials `replica` from: the only one it trusts PROXY headers of."""
        return self.net["cli"].extra[REPLICAS.index(replica)]

    @property
    def vpc_ips(self) -> set[str]:
        return set(self.net["vpc"].addresses)

    def data_dir(self, replica: str) -> Path:
        return self.base / f"replica-{replica}"

    @property
    def token(self) -> str:
        return (self.data_dir("a") / "admin.token").read_text().strip()

    # ---- the CLI ------------------------------------------------------------------------

    def cli_env(self, via: str | None = None) -> dict[str, str]:
        """Through the balancer, or straight to one replica's cli-side address."""
        host = self.balancer if via is None else self.cli_side(via)
        return {
            "GATEHOUSE_CONTROLPLANE": f"{host}:{GRPC_PORT}",
            "GATEHOUSE_CA_FILE": str(self.data_dir("a") / CA_CERT_FILE),
            "GATEHOUSE_TOKEN": self.token,
        }

    def cli(
        self, *args: str, via: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return gatehouse(
            list(args), env=self.cli_env(via), timeout=timeout, wrap=self.net["cli"].wrap
        )

    @contextlib.contextmanager
    def cli_running(self, *args: str, via: str | None = None) -> Iterator[subprocess.Popen[str]]:
        """A CLI command left running in the cli namespace; killed if it still runs after."""
        with gatehouse_running(args, env=self.cli_env(via), wrap=self.net["cli"].wrap) as command:
            yield command

    def exec(self, statement: str, via: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.cli("exec", "pg", "-c", statement, "-o", "json", via=via, timeout=60)

    def listing(self, via: str | None = None) -> list[dict[str, Any]]:
        listed = self.cli("admin", "agents", "list", "-o", "json", via=via)
        assert listed.returncode == 0, listed.stderr
        return [a for a in json.loads(listed.stdout) if a["name"] == AGENT]

    def replica_id(self, replica: str) -> str:
        health = self.health(replica)
        assert health is not None, f"replica {replica} is not answering"
        return str(health["replica"])

    def health(self, replica: str, path: str = "healthz") -> dict[str, Any] | None:
        got = self.net["cli"].run(
            [
                "curl",
                "-sS",
                "--fail",
                "--max-time",
                "2",
                "--cacert",
                str(self.data_dir("a") / CA_CERT_FILE),
                f"https://{self.cli_side(replica)}:{HTTP_PORT}/{path}",
            ]
        )
        if got.returncode != 0:
            return None
        document = json.loads(got.stdout)
        return document if isinstance(document, dict) else None

    def export(self) -> list[dict[str, Any]]:
        """The whole trail over HTTPS through the balancer, as a SIEM pulls it: page after
        page (the answer is bounded) until one comes back empty."""
        events: list[dict[str, Any]] = []
        while True:
            after = events[-1]["seq"] if events else 0
            got = self.net["cli"].run(
                [
                    "curl",
                    "-sS",
                    "--fail",
                    "--cacert",
                    str(self.data_dir("a") / CA_CERT_FILE),
                    "-H",
                    f"Authorization: Bearer {self.token}",
                    f"https://{self.balancer}:{HTTP_PORT}/v1/audit/events?after={after}",
                ],
                timeout=60,
            )
            assert got.returncode == 0, got.stderr
            page = [json.loads(line) for line in got.stdout.split("\n") if line]
            if not page:
                return events
            events += page

    # ---- replicas -----------------------------------------------------------------------

    def start_replica(self, replica: str) -> Process:
        """Start (or restart) `replica` and wait until it is ready from the cli namespace."""
        data = self.data_dir(replica)
        if replica != "a" and not (data / CA_KEY_FILE).exists():
            # What docs/deploy.md tells an operator: the first replica's CA and audit key.
            data.mkdir(mode=0o700, parents=True, exist_ok=True)
            for name in (CA_CERT_FILE, CA_KEY_FILE, KEY_FILE_NAME):
                shutil.copy2(self.data_dir("a") / name, data / name)
                (data / name).chmod(0o644 if name == CA_CERT_FILE else 0o600)
        store_host = self.net["db"].addresses[REPLICAS.index(replica)]
        url = (
            f"postgresql+psycopg://{STORE_ROLE}:{STORE_PASSWORD}@{store_host}:"
            f"{self.store.port}/{STORE_ROLE}"
        )
        process = Process(
            args=[
                "controlplane",
                "serve",
                "--data-dir",
                str(data),
                "--grpc-listen",
                f"0.0.0.0:{GRPC_PORT}",
                "--http-listen",
                f"0.0.0.0:{HTTP_PORT}",
                "--public-addr",
                f"{self.vpc_side(replica)},{self.cli_side(replica)},{self.balancer}",
                "--advertise",
                f"{self.vpc_side(replica)}:{GRPC_PORT}",
                "--trusted-proxies",
                f"{self.lb_source(replica)}/32",
            ],
            log_file=self.base / f"replica-{replica}.log",
            env={
                "GATEHOUSE_DATABASE_URL": url,
                "GATEHOUSE_CHECKPOINT_EVERY": CHECKPOINT_EVERY,
            },
            wrap=self.net[replica].wrap,
        )
        process.start()
        self.replicas[replica] = process

        def ready() -> bool:
            assert process.running, tail(process.log_file)
            token = (self.data_dir("a") / "admin.token").exists()
            return token and self.health(replica, "readyz") is not None

        wait(f"replica {replica} ready", ready, process.log_file)
        return process

    def kill_replica(self, replica: str) -> None:
        """kill -9: no clean stop, no chance to tell anyone."""
        process = self.replicas[replica]
        assert process.proc is not None
        os.kill(process.proc.pid, signal.SIGKILL)
        process.proc.wait()
        process.proc = None

    # ---- agents -------------------------------------------------------------------------

    def start_agent(self, token: str, index: int) -> Agent:
        both = ",".join(f"{self.vpc_side(r)}:{GRPC_PORT}" for r in REPLICAS)
        agent = production_agent(
            both,
            AGENT,
            token,
            self.base / f"agent-{index}",
            env={"PG_PASSWORD": TARGET_PASSWORD},
        )
        agent = dataclasses.replace(agent, wrap=self.net["vpc"].wrap)
        agent.start()
        if index < len(self.agents):
            self.agents[index] = agent
        else:
            self.agents.append(agent)
        return agent

    def kill_agent(self, index: int) -> None:
        agent = self.agents[index]
        assert agent.proc is not None
        os.kill(agent.proc.pid, signal.SIGKILL)
        agent.proc.wait()
        agent.proc = None

    def online(self) -> dict[str, str]:
        """Online instances of `vpc` and the replica id holding each."""
        return {a["instance"]: a["replica"] for a in self.listing() if a["status"] == "online"}

    def instance_of(self, index: int) -> str:
        """The instance id agent `index` enrolled as (from its data directory)."""
        stored = self.base / f"agent-{index}" / f"agent-{AGENT}.json"
        return str(json.loads(stored.read_text())["instance_id"])

    def place_agents(self, token: str) -> None:
        """Two instances, one held by each replica (an agent starts at a random address of its
        list: a second one that lands beside the first is restarted until it does not)."""
        self.join_token = token
        if not self.agents or not self.agents[0].running:
            first = self.start_agent(token, 0)
            wait("the first instance online", lambda: len(self.online()) >= 1, first.log_file)
        for _ in range(10):
            if len(self.agents) < 2 or not self.agents[1].running:
                second = self.start_agent(token, 1)
                wait("both instances online", lambda: len(self.online()) == 2, second.log_file)
            if len(set(self.online().values())) == 2:
                return
            self.agents[1].stop()
            wait("the second instance offline", lambda: len(self.online()) == 1)
        raise AssertionError("the second instance never connected to the other replica")

    def stop(self) -> None:
        for process in [*self.agents, *self.replicas.values()]:
            process.stop()
        self.haproxy.stop()


@dataclass
class Load:
    """Exec sessions through the balancer, back to back on `threads` threads; each tagged
    statement and when each session started and ended."""

    world: World
    threads: int = 2
    ok: list[tuple[float, float, str]] = field(default_factory=list)
    refused: list[tuple[float, float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(90)

    def _run(self) -> None:
        while not self._stop.is_set():
            tag = uuid.uuid4().hex[:10]
            began = time.monotonic()
            ran = self.world.exec(f"select '{tag}' as tag")
            ended = time.monotonic()
            if ran.returncode == 0:
                self.ok.append((began, ended, tag))
            else:
                self.refused.append((began, ended, ran.stderr.strip()[-300:]))

    def wait_ok(self, count: int, timeout: float = 30) -> None:
        target = len(self.ok) + count
        wait(f"{count} more sessions", lambda: len(self.ok) >= target, timeout=timeout)

    def recovered_after(self, moment: float, timeout: float = 30) -> float:
        """Seconds from `moment` until a session that *began* after it succeeded."""

        def first() -> float | None:
            after = [ended for began, ended, _ in self.ok if began > moment]
            return min(after) - moment if after else None

        wait("a new session succeeding", lambda: first() is not None, timeout=timeout)
        found = first()
        assert found is not None
        return found


def haproxy_config(world: World) -> str:
    """deploy/haproxy/gatehouse.cfg with this world's addresses: bound to the balancer's
    address, each server dialled from HAProxy's own source address (the trusted proxy)."""
    text = HAPROXY_CONFIG.read_text()
    for port in (GRPC_PORT, HTTP_PORT):
        text, count = re.subn(rf"bind :{port}\b", f"bind {world.balancer}:{port}", text)
        assert count == 1, f"no `bind :{port}` in {HAPROXY_CONFIG}"
    for replica, example in zip(REPLICAS, ("10.0.0.11", "10.0.0.12"), strict=True):

        def server(match: re.Match[str], replica: str = replica) -> str:
            return f"{match[1]}{world.cli_side(replica)}:{match[2]}{match[3]} " + (
                f"source {world.lb_source(replica)}"
            )

        text, count = re.subn(rf"(server \w+ ){re.escape(example)}:(\d+)(.*)", server, text)
        assert count == 2, f"no servers at {example} in {HAPROXY_CONFIG}"
    return text


@contextlib.contextmanager
def started(base: Path) -> Iterator[World]:
    """The namespaces, the store, the target, both replicas and HAProxy, the policy applied;
    no agent yet. Everything is stopped and the namespaces removed when the block ends."""
    with netns.network(PREFIX, LINKS) as net:
        servers: list[PostgresServer] = []
        world: World | None = None
        try:
            for replica in REPLICAS:  # HAProxy's own source address on each replica's link
                index = REPLICAS.index(replica)
                beside = net["cli"].addresses[index]
                net["cli"].add_address(beside, beside.rsplit(".", 1)[0] + ".3")
            with net["db"].entered():
                store = start_postgres(
                    base / "store",
                    roles={STORE_ROLE: STORE_PASSWORD},
                    databases={STORE_ROLE: STORE_ROLE},
                    log_statements=False,
                    listen=net["db"].addresses,
                )
                servers.append(store)
            with net["vpc"].entered():
                target = start_postgres(
                    base / "target", roles={"app": TARGET_PASSWORD}, databases={"app": "app"}
                )
                servers.append(target)
            haproxy = Haproxy(base / "haproxy.cfg", net["cli"].wrap, base / "haproxy.log")
            world = World(net, base, store, target, haproxy)
            haproxy.config.write_text(haproxy_config(world))
            checked = haproxy.check()
            assert checked.returncode == 0, checked.stdout + checked.stderr
            for replica in REPLICAS:
                world.start_replica(replica)
            haproxy.start()
            policy = base / "gatehouse.yaml"
            policy.write_text(POLICY.format(port=target.port))
            wait(
                "the balancer answering",
                lambda: world.cli("admin", "agents", "list").returncode == 0,
            )
            applied = world.cli("admin", "apply", "-f", str(policy))
            assert applied.returncode == 0, applied.stderr
            yield world
        finally:
            if world is not None:
                world.stop()
            for server in servers:
                server.stop()


def create_pool(world: World, uses: int = 2) -> str:
    """`admin agents create vpc --uses N` through the balancer: the join token."""
    created = world.cli("admin", "agents", "create", AGENT, "--uses", str(uses), "-o", "json")
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["join_token"])


def reconcile(world: World, key_file: Path) -> dict[str, int]:
    """The trail against the target's own log: the chain verifies online (through the
    balancer) and offline with the neutral verifier and the one public key both replicas
    sign with, seq is dense, and every statement the target ran (its whole log: only the
    gateway's session user logs in there) has its `db.query` event, at least as often as it
    ran. Returns counts for the report."""
    keys = {r: world.cli("audit", "public-key", via=r).stdout for r in REPLICAS}
    assert keys["a"] == keys["b"] and keys["a"].startswith("-----BEGIN PUBLIC KEY"), keys
    key_file.write_text(keys["a"])
    signed = world.cli("audit", "checkpoint", via="b")  # the tail, signed by the other replica
    assert signed.returncode == 0, signed.stderr
    verified = world.cli("audit", "verify", timeout=120)
    assert verified.returncode == 0, verified.stderr + verified.stdout
    events = world.export()
    trail = key_file.with_suffix(".ndjson")
    # As `audit export` writes it: each line its canonical body with `hash` last, byte for byte.
    trail.write_text(
        "".join(
            export_line(canonical({k: v for k, v in e.items() if k != "hash"}).decode(), e["hash"])
            + "\n"
            for e in events
        )
    )
    offline = world.cli("audit", "verify", "--file", str(trail), "--key", str(key_file))
    assert offline.returncode == 0, offline.stderr + offline.stdout
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(events) + 1)), "seq is not dense"
    recorded: dict[str, int] = {}
    for event in events:
        if event["type"] == "db.query":
            statement = event["request"]["statement"]
            recorded[statement] = recorded.get(statement, 0) + 1
    logged: dict[str, int] = {}
    for statement in world.target.statement_log():
        logged[statement] = logged.get(statement, 0) + 1
    missing = {s: n for s, n in logged.items() if recorded.get(s, 0) < n}
    assert not missing, f"statements the target ran without their db.query event: {missing}"
    signers = {e["checkpoint"]["key_id"] for e in events if e["type"] == "audit.checkpoint"}
    return {
        "events": len(events),
        "statements": sum(logged.values()),
        "checkpoints": sum(e["type"] == "audit.checkpoint" for e in events),
        "signing_keys": len(signers),
    }
