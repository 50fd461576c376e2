"""Three network namespaces with a production control plane, a VPC and a CLI, for test_network.

* `cp`: the control plane, listening on every address, TLS on both listeners.
* `vpc`: agents, a throwaway PostgreSQL and sshd listening on the namespace's own loopback
  (unreachable from anywhere else); agents dial out to the control plane and trust it by the
  pin their join token carries, with no file from it.
* `cli`: the CLI (exec, connect, admin) and a SIEM reader (curl over HTTPS).

`cp` is joined to `vpc` (10.231.1.0/24) and to `cli` (10.231.2.0/24); `vpc` and `cli` cannot
reach each other. `started()` removes the namespaces, and everything running in them, when its
block ends, also when a test fails. Namespace names start with `netns`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv import netns
from devenv.postgres import PostgresServer, start_postgres
from devenv.processes import tail
from devenv.production import production_agent
from devenv.sshd import Sshd, start_sshd
from devenv.stack import Agent, Process, gatehouse, gatehouse_running

PREFIX = "netns"
PG_PASSWORD = "vpc-pg-password"
AGENT = "vpc-agent"
GRPC_PORT, HTTP_PORT = 8443, 8080
# Agents the tests enroll (or fail to); each serves a connection `pg-NAME` to the VPC's
# PostgreSQL, so a test can show that nothing reaches the target through a refused agent.
EXTRA_AGENTS = ("vpc-foreign", "vpc-expired", "vpc-revoked")

PG_CONNECTION = """\
  - name: {name}
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""
SSH_CONNECTION = """\
  - name: web-1
    type: ssh
    agent: {agent}
    target: {{host: 127.0.0.1, port: {ssh_port}, user: {user}, known_hosts: '{known_hosts}'}}
    secret: {{private_key: 'file:{key}'}}
"""


def wait(what: str, check: Callable[[], bool], log: Path, timeout: float = 60) -> None:
    """Poll `check` until it holds; fail naming `what` with the end of `log`."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen:\n{tail(log)}")
        time.sleep(0.2)


@dataclass
class World:
    net: netns.Network
    base: Path
    cp_data: Path
    cp: Process
    agent: Process
    pg: PostgresServer
    sshd: Sshd

    @property
    def cp_for_cli(self) -> str:
        return self.net["cp"].addresses[1]  # the cp end of the cp<->cli link

    @property
    def cp_for_vpc(self) -> str:
        return self.net["cp"].addresses[0]

    @property
    def cli_ip(self) -> str:
        return self.net["cli"].addresses[0]

    @property
    def vpc_ip(self) -> str:
        return self.net["vpc"].addresses[0]

    @property
    def token(self) -> str:
        return (self.cp_data / "admin.token").read_text().strip()

    def cli_env(self, **extra: str) -> dict[str, str]:
        env = {
            "GATEHOUSE_CONTROLPLANE": f"{self.cp_for_cli}:{GRPC_PORT}",
            "GATEHOUSE_CA_FILE": str(self.cp_data / "ca.pem"),
            "GATEHOUSE_TOKEN": self.token,
        }
        env.update(extra)
        return {k: v for k, v in env.items() if v}

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return gatehouse(
            list(args), env=self.cli_env(**env), timeout=timeout, wrap=self.net["cli"].wrap
        )

    @contextlib.contextmanager
    def cli_running(self, *args: str) -> Iterator[subprocess.Popen[str]]:
        """A CLI command left running in the cli namespace; killed if it still runs after."""
        with gatehouse_running(args, env=self.cli_env(), wrap=self.net["cli"].wrap) as command:
            yield command

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.net["cli"].run(["curl", "-sS", *args], timeout=30)

    def export(self) -> list[dict[str, Any]]:
        """The whole trail, pulled over HTTPS from the cli namespace as a SIEM would."""
        got = self.curl(
            "--fail",
            "--cacert",
            str(self.cp_data / "ca.pem"),
            "-H",
            f"Authorization: Bearer {self.token}",
            f"https://{self.cp_for_cli}:{HTTP_PORT}/v1/audit/events?after=0",
        )
        assert got.returncode == 0, got.stderr
        return [json.loads(line) for line in got.stdout.split("\n") if line]

    # ---- agents in the VPC ----------------------------------------------------------------

    def create_agent(self, name: str, *, uses: int = 1, ttl: str = "1h") -> dict[str, Any]:
        """`admin agents create -o json` from the cli namespace: join token, pin, expiry."""
        created = self.cli(
            "admin", "agents", "create", name, "--uses", str(uses), "--ttl", ttl, "-o", "json"
        )
        assert created.returncode == 0, created.stderr
        document: dict[str, Any] = json.loads(created.stdout)
        return document

    def agents(self) -> dict[str, dict[str, Any]]:
        listed = self.cli("admin", "agents", "list", "-o", "json")
        assert listed.returncode == 0, listed.stderr
        return {a["name"]: a for a in json.loads(listed.stdout)}

    def vpc_agent(self, name: str, token: str, data_dir: Path) -> Agent:
        """`agent run` in the VPC namespace, trusting the control plane by the token's pin."""
        agent = production_agent(
            f"{self.cp_for_vpc}:{GRPC_PORT}",
            name,
            token,
            data_dir,
            env={"PG_PASSWORD": PG_PASSWORD},
        )
        return dataclasses.replace(agent, wrap=self.net["vpc"].wrap)

    def start_agent(self, name: str, token: str, data_dir: Path) -> Agent:
        """A VPC agent, once the control plane lists it online."""
        agent = self.vpc_agent(name, token, data_dir)
        agent.start()
        try:
            self.wait_online(agent)
        except BaseException:
            agent.stop()
            raise
        return agent

    def refused_agent(
        self, name: str, token: str, data_dir: Path
    ) -> subprocess.CompletedProcess[str]:
        """A VPC agent expected to be refused: it must exit on its own, with what it said."""
        agent = self.vpc_agent(name, token, data_dir)
        return gatehouse(agent.args, env=agent.env, timeout=30, wrap=agent.wrap)

    def wait_online(self, agent: Agent, timeout: float = 60) -> None:
        def online() -> bool:
            assert agent.running, tail(agent.log_file)
            return self.agents().get(agent.name, {}).get("status") == "online"

        wait(f"agent {agent.name} coming online", online, agent.log_file, timeout)


@contextlib.contextmanager
def started(base: Path) -> Iterator[World]:
    """The three namespaces, the VPC's targets, the control plane and one online agent that
    serves `pg` and `web-1`; all gone when the block ends."""
    with netns.network(PREFIX, [("cp", "vpc"), ("cp", "cli")]) as net:
        processes: list[Process] = []
        servers: list[PostgresServer | Sshd] = []
        try:
            yield _start(net, base, processes, servers)
        finally:
            for process in reversed(processes):
                process.stop()
            for server in servers:
                server.stop()


def _start(
    net: netns.Network,
    base: Path,
    processes: list[Process],
    servers: list[PostgresServer | Sshd],
) -> World:
    with net["vpc"].entered():  # the targets listen on the VPC's own loopback
        pg = start_postgres(base / "pg", roles={"app": PG_PASSWORD}, databases={"app": "app"})
        servers.append(pg)
        sshd = start_sshd(base / "sshd")
        servers.append(sshd)
    cp_data = base / "cp"
    cp = Process(
        args=[
            "controlplane",
            "serve",
            "--data-dir",
            str(cp_data),
            "--grpc-listen",
            f"0.0.0.0:{GRPC_PORT}",
            "--http-listen",
            f"0.0.0.0:{HTTP_PORT}",
            "--public-addr",
            ",".join(net["cp"].addresses),
        ],
        log_file=base / "controlplane.log",
        wrap=net["cp"].wrap,
    )
    cp.start()
    processes.append(cp)
    ca = cp_data / "ca.pem"
    world = World(net, base, cp_data, cp, cp, pg, sshd)

    def healthy() -> bool:
        assert cp.running, tail(cp.log_file)
        if not (ca.exists() and (cp_data / "admin.token").exists()):
            return False
        got = world.curl(
            "--fail", "--cacert", str(ca), f"https://{world.cp_for_cli}:{HTTP_PORT}/healthz"
        )
        return got.returncode == 0

    wait("the control plane answering over HTTPS from the cli namespace", healthy, cp.log_file)
    created = world.create_agent(AGENT)
    agent = world.vpc_agent(AGENT, created["join_token"], base / "agent")
    agent.start()
    processes.append(agent)
    world.agent = agent
    world.wait_online(agent)
    policy = base / "gatehouse.yaml"
    connections = [PG_CONNECTION.format(name="pg", agent=AGENT, port=pg.port)]
    connections.append(
        SSH_CONNECTION.format(
            agent=AGENT,
            ssh_port=sshd.port,
            user=sshd.user,
            known_hosts=sshd.host_key_line,
            key=sshd.client_key,
        )
    )
    connections += [
        PG_CONNECTION.format(name=f"pg-{name}", agent=name, port=pg.port) for name in EXTRA_AGENTS
    ]
    policy.write_text("connections:\n" + "".join(connections))
    applied = world.cli("admin", "apply", "-f", str(policy))
    assert applied.returncode == 0, applied.stderr
    return world
