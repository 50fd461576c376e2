"""Across real network boundaries on one machine: three network namespaces.

* `cp`: the control plane, listening on every address, TLS on both listeners.
* `vpc`: an agent, a throwaway PostgreSQL and sshd listening on the namespace's own loopback
  (unreachable from anywhere else); the agent dials out to the control plane.
* `cli`: the CLI (exec, connect) and a SIEM reader (curl over HTTPS).

`cp` is joined to `vpc` (10.231.1.0/24) and to `cli` (10.231.2.0/24); `vpc` and `cli` cannot
reach each other. The namespaces go when the module ends, also when a test fails.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from controlplane.tls.ca import CertificateAuthority
from devenv import netns
from devenv.postgres import PostgresServer, start_postgres
from devenv.processes import tail
from devenv.sshd import Sshd, start_sshd
from devenv.stack import Process, gatehouse
from tests.conftest import require

PG_PASSWORD = "vpc-pg-password"
AGENT = "vpc-agent"
GRPC_PORT, HTTP_PORT, CONNECT_PORT = 8443, 8080, 15432

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
  - name: web-1
    type: ssh
    agent: {agent}
    target: {{host: 127.0.0.1, port: {ssh_port}, user: {user}, known_hosts: '{known_hosts}'}}
    secret: {{private_key: 'file:{key}'}}
"""


@pytest.fixture(autouse=True)
def _namespaces_available() -> None:
    why = netns.available()
    require(why is None, f"{why}")


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

    def curl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.net["cli"].run(["curl", "-sS", *args], timeout=30)

    def export(self) -> list[dict[str, Any]]:
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


def _wait(what: str, check: Any, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen:\n{tail(log)}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("network")
    with netns.network("ghtls", [("cp", "vpc"), ("cp", "cli")]) as net:
        processes: list[Process] = []
        servers: list[Any] = []
        try:
            yield _start(net, base, processes, servers)
        finally:
            for process in reversed(processes):
                process.stop()
            for server in servers:
                server.stop()


def _start(net: netns.Network, base: Path, processes: list[Process], servers: list[Any]) -> World:
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

    _wait("the control plane answering over HTTPS from the cli namespace", healthy, cp.log_file)
    created = world.cli("admin", "agents", "create", AGENT)
    assert created.returncode == 0, created.stderr
    agent = Process(
        args=[
            "agent",
            "run",
            "--controlplane",
            f"{world.cp_for_vpc}:{GRPC_PORT}",
            "--token",
            created.stdout.strip(),
            "--name",
            AGENT,
            "--ca-file",
            str(ca),
            "--data-dir",
            str(base / "agent"),
        ],
        log_file=base / "agent.log",
        env={"PG_PASSWORD": PG_PASSWORD},
        wrap=net["vpc"].wrap,
    )
    agent.start()
    processes.append(agent)
    world.agent = agent

    def online() -> bool:
        assert agent.running, tail(agent.log_file)
        listed = world.cli("admin", "agents", "list", "-o", "json")
        return listed.returncode == 0 and any(
            a["name"] == AGENT and a["status"] == "online" for a in json.loads(listed.stdout)
        )

    _wait("the agent coming online", online, agent.log_file)
    policy = base / "gatehouse.yaml"
    policy.write_text(
        POLICY.format(
            agent=AGENT,
            port=pg.port,
            ssh_port=sshd.port,
            user=sshd.user,
            known_hosts=sshd.host_key_line,
            key=sshd.client_key,
        )
    )
    applied = world.cli("admin", "apply", "-f", str(policy))
    assert applied.returncode == 0, applied.stderr
    return world


def test_the_networks_are_really_separate(world: World) -> None:
    # The VPC's PostgreSQL is on its own loopback: the cli namespace (and this host) cannot
    # reach it, nor the agent's namespace at all.
    probe = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 2)"
    for host, port in (("127.0.0.1", world.pg.port), (world.net["vpc"].addresses[0], 22)):
        got = world.net["cli"].run(["python3", "-c", probe, host, str(port)])
        assert got.returncode != 0, f"{host}:{port} reachable from the cli namespace"


def test_exec_to_the_vpcs_postgres_through_tls(world: World) -> None:
    ran = world.cli("exec", "pg", "-c", "select 'from the cli netns' as how, inet_server_addr()")
    assert ran.returncode == 0, ran.stderr
    assert "from the cli netns" in ran.stdout
    assert "127.0.0.1" in ran.stdout  # the agent reached the target on the VPC's loopback
    # What reached the target, in its own log:
    assert any("from the cli netns" in s for s in world.pg.statement_log())
    events = [e for e in world.export() if "from the cli netns" in json.dumps(e)]
    assert events, "the query's event is in the export pulled over HTTPS"
    assert {e["source"]["ip"] for e in events} == {world.cli_ip}


def test_the_agent_is_recorded_from_the_vpcs_address(world: World) -> None:
    connects = [e for e in world.export() if e["type"] == "agent.connect"]
    assert connects
    vpc = world.net["vpc"].addresses[0]
    assert all(e["agent"]["peer"].startswith(f"ipv4:{vpc}:") for e in connects), connects


def test_exec_over_ssh_in_the_vpc(world: World) -> None:
    ran = world.cli("exec", "web-1", "--", "echo hello from $(hostname) vpc")
    assert ran.returncode == 0, ran.stderr
    assert "vpc" in ran.stdout
    events = [e for e in world.export() if "hello from" in json.dumps(e)]
    assert events and {e["source"]["ip"] for e in events} == {world.cli_ip}


def test_connect_to_the_vpcs_postgres(world: World) -> None:
    listener = Process(
        args=["connect", "pg", "--port", str(CONNECT_PORT)],
        log_file=world.base / "connect.log",
        env=world.cli_env(),
        wrap=world.net["cli"].wrap,
    )
    listener.start()
    try:
        with world.net["cli"].entered():

            def listening() -> bool:
                assert listener.running, tail(listener.log_file)
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", CONNECT_PORT)) == 0

            _wait("gatehouse connect listening", listening, listener.log_file)
            dsn = f"host=127.0.0.1 port={CONNECT_PORT} dbname=pg user=anyone sslmode=disable"
            with psycopg.connect(dsn, connect_timeout=20) as conn:
                row = conn.execute("select 'connected across netns' as how").fetchone()
        assert row == ("connected across netns",)
    finally:
        listener.stop()
    assert any("connected across netns" in s for s in world.pg.statement_log())
    events = [e for e in world.export() if "connected across netns" in json.dumps(e)]
    assert events and {e["source"]["ip"] for e in events} == {world.cli_ip}


def test_plaintext_and_untrusting_clients_are_refused(world: World) -> None:
    # gRPC in plaintext: the HTTP/2 preface is not a TLS ClientHello; the connection is closed.
    with (
        world.net["cli"].entered(),
        socket.create_connection((world.cp_for_cli, GRPC_PORT), timeout=5) as sock,
    ):
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        try:
            answer = sock.recv(1024)
        except ConnectionResetError:  # closed with our bytes unread: a reset
            answer = b""
        assert answer == b"", "nothing is served to a plaintext gRPC client"
    plain = world.curl(f"http://{world.cp_for_cli}:{HTTP_PORT}/v1/audit/events?after=0")
    assert plain.stdout.startswith("this listener speaks TLS only")
    # No CA file: the system's trust store does not know this CA.
    refused = world.cli("admin", "agents", "list", GATEHOUSE_CA_FILE="")
    assert refused.returncode != 0
    assert "TLS with the control plane" in refused.stderr
    # curl without --cacert too
    assert world.curl(f"https://{world.cp_for_cli}:{HTTP_PORT}/healthz").returncode != 0


def test_a_renewed_server_certificate_is_served_without_restart(world: World) -> None:
    ca_file = world.cp_data / "ca.pem"

    def served() -> x509.Certificate:
        with world.net["cli"].entered():
            context = ssl.create_default_context(cafile=ca_file)
            with (
                socket.create_connection((world.cp_for_cli, GRPC_PORT), timeout=5) as raw,
                context.wrap_socket(raw, server_hostname=world.cp_for_cli) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    before = served()
    pid = world.cp.proc.pid if world.cp.proc else None
    ca = CertificateAuthority.load_or_create(world.cp_data)
    chain, key = ca.issue_server(["localhost"], [*world.net["cp"].addresses, "127.0.0.1", "::1"])
    renewed = x509.load_pem_x509_certificate(chain)
    (world.cp_data / "server.key").write_bytes(key)
    (world.cp_data / "server.pem").write_bytes(chain)
    _wait(
        "the renewed certificate being served",
        lambda: served().serial_number == renewed.serial_number,
        world.cp.log_file,
        timeout=15,
    )
    assert before.serial_number != renewed.serial_number
    assert world.cp.running and world.cp.proc is not None and world.cp.proc.pid == pid
    again = world.cli("exec", "pg", "-c", "select 'after renewal' as how")
    assert again.returncode == 0, again.stderr
    assert "after renewal" in again.stdout


def test_namespaces_are_removed_afterwards() -> None:
    """The context manager's promise, checked on a network of its own that fails inside."""
    with pytest.raises(RuntimeError), netns.network("ghgone", [("a", "b")]) as net:
        names = [n.name for n in net.namespaces.values()]
        sleeper = subprocess.Popen([*net["a"].wrap, "sleep", "300"])  # left running inside
        raise RuntimeError("a failing test")
    assert sleeper.wait(timeout=10) != 0  # stopped by the cleanup
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert not any(name in listed for name in names)
