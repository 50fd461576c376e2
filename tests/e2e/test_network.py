"""Across real network boundaries on one machine: a control plane, a VPC and a CLI, each in a
network namespace of its own (tests/e2e/networld.py draws the map).

Through TLS the CLI reaches the VPC's PostgreSQL and sshd and a SIEM pulls the trail over
HTTPS, every event naming the caller's real address. Refused across the same boundaries: a
plaintext or untrusting client, and agents in the VPC with a token pinned to another CA, a
used-up or expired token, or a revoked certificate, each seen by the operator (the agent's exit
and message), in the trail (`auth.fail`, agent events, from the VPC's address) and at the
target (no statement reaches it). One world for the whole module: the namespaces and servers
start once (~3 s).
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from cryptography import x509

from agent import enrollment
from controlplane.tls.ca import CertificateAuthority
from devenv import netns
from devenv.processes import tail
from devenv.stack import Process
from tests.e2e.networld import AGENT, GRPC_PORT, HTTP_PORT, PREFIX, World, started, wait
from wire.jointoken import JoinToken

CONNECT_PORT = 15432
pytestmark = pytest.mark.usefixtures("namespaces_available")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with started(tmp_path_factory.mktemp("network")) as built:
        yield built


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


def test_the_agent_trusts_the_pin_and_is_recorded_from_the_vpcs_address(world: World) -> None:
    # It was given no file from the control plane: the CA it keeps is the one it found in
    # the chain presented across the network, by the pin in its join token.
    assert "--ca-file" not in world.agent.args
    stored = json.loads((world.base / "agent" / f"agent-{AGENT}.json").read_text())
    assert stored["roots"].encode() == (world.cp_data / "ca.pem").read_bytes()
    connects = [e for e in world.export() if e["type"] == "agent.connect"]
    assert connects
    assert all(e["agent"]["peer"].startswith(f"ipv4:{world.vpc_ip}:") for e in connects), connects


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

            wait("gatehouse connect listening", listening, listener.log_file)
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
    wait(
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
    with pytest.raises(RuntimeError), netns.network(f"{PREFIX}gone", [("a", "b")]) as net:
        names = [n.name for n in net.namespaces.values()]
        sleeper = subprocess.Popen([*net["a"].wrap, "sleep", "300"])  # left running inside
        raise RuntimeError("a failing test")
    assert sleeper.wait(timeout=10) != 0  # stopped by the cleanup
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=False
    ).stdout
    assert not any(name in listed for name in names)


# ---- agents in the VPC that must be refused ------------------------------------------------
# Every refusal below comes from the VPC's address. The control plane records the first
# failure of a source in a window and each new reason at once (up to 5, see
# controlplane/auth/failures.py); these tests give it 4 distinct reasons from that source.


Trail = list[dict[str, Any]]


def _of(trail: Trail, kind: str, agent: str) -> Trail:
    """The events of `kind` about `agent`."""
    return [e for e in trail if e["type"] == kind and e.get("agent", {}).get("name") == agent]


def _refusals(world: World, trail: Trail, credential: str, reason: str) -> Trail:
    """`auth.fail` events with `credential`, from the VPC, whose reason contains `reason`."""
    return [
        e
        for e in trail
        if e["type"] == "auth.fail"
        and e["credential"] == credential
        and reason in e["reason"]
        and e["source"]["ip"] == world.vpc_ip
    ]


def _nothing_reaches_the_target_through(world: World, name: str) -> None:
    """An exec through the connection agent `name` serves is refused, and PostgreSQL never
    sees its statement."""
    marker = f"through-{name}-{uuid.uuid4().hex[:8]}"
    ran = world.cli("exec", f"pg-{name}", "-c", f"select '{marker}'")
    assert ran.returncode == 1, ran.stdout
    assert f"is served by agent '{name}', which is" in ran.stderr
    assert marker not in ran.stdout
    assert not any(marker in s for s in world.pg.statement_log())


def test_an_agent_whose_token_pins_another_ca_refuses_to_enroll(world: World) -> None:
    name = "vpc-foreign"
    created = world.create_agent(name)
    other = CertificateAuthority.load_or_create(world.base / "other-ca")
    secret = str(created["join_token"]).partition(".")[0]
    forged = str(JoinToken(secret, other.pin))  # a genuine secret, another CA's pin
    data = world.base / name
    refused = world.refused_agent(name, forged, data)
    assert refused.returncode == 1, refused.stderr
    # The operator is told both fingerprints, what the agent dialled and why it stopped.
    assert other.pin in refused.stderr  # what the token pins
    assert created["ca_pin"] in refused.stderr  # what the control plane presented
    assert f"{world.cp_for_vpc}:{GRPC_PORT}" in refused.stderr
    assert "Refusing to enroll" in refused.stderr
    # The secret never left the agent: nothing was enrolled, spent or stored.
    assert world.agents()[name]["status"] == "pending"
    assert _of(world.export(), "agent.enroll", name) == []
    assert not (data / f"agent-{name}.json").exists()
    _nothing_reaches_the_target_through(world, name)


def test_a_used_up_join_token_is_refused_and_the_enrolled_agent_keeps_its_place(
    world: World,
) -> None:
    name = "vpc-once"
    token = str(world.create_agent(name, uses=1)["join_token"])
    first = world.start_agent(name, token, world.base / f"{name}-1")
    try:
        enrolled = world.agents()[name]
        # A second pod without the first one's data dir tries the same token.
        second = world.base / f"{name}-2"
        refused = world.refused_agent(name, token, second)
        assert refused.returncode == 1, refused.stderr
        assert "this join token was already used" in refused.stderr
        assert "has no uses left; revoke and re-create the agent" in refused.stderr
        assert not (second / f"agent-{name}.json").exists()
        # A spent token cannot push the enrolled instance out.
        assert first.running, tail(first.log_file)
        after = world.agents()[name]
        assert after["status"] == "online"
        assert after["cert_serial"] == enrolled["cert_serial"]
    finally:
        first.stop()
    trail = world.export()
    (enroll,) = _of(trail, "agent.enroll", name)
    assert enroll["agent"]["address"] == world.vpc_ip
    assert enroll["join"]["uses_left"] == 0
    assert _refusals(world, trail, "join_token", "no uses left"), trail


def test_an_expired_join_token_is_refused(world: World) -> None:
    name = "vpc-expired"
    created = world.create_agent(name, ttl="1s")  # the shortest --ttl there is
    expires = datetime.fromisoformat(str(created["expires"])).timestamp()
    wait("the join token's expiry", lambda: time.time() > expires, world.cp.log_file, 10)
    data = world.base / name
    refused = world.refused_agent(name, str(created["join_token"]), data)
    assert refused.returncode == 1, refused.stderr
    assert "this join token expired at" in refused.stderr
    assert f"`gatehouse admin agents create {name} --ttl" in refused.stderr  # what to do
    assert not (data / f"agent-{name}.json").exists()
    assert world.agents()[name]["status"] == "pending"
    trail = world.export()
    assert _of(trail, "agent.enroll", name) == []
    assert _refusals(world, trail, "join_token", "this join token expired at"), trail
    _nothing_reaches_the_target_through(world, name)


def test_a_revoked_agent_is_cut_off_and_cannot_come_back(world: World) -> None:
    name = "vpc-revoked"
    token = str(world.create_agent(name)["join_token"])
    data = world.base / name
    agent = world.start_agent(name, token, data)
    copied = world.base / f"{name}-copy"  # its credential, as anyone who read its disk has it
    try:
        shutil.copytree(data, copied)
        marker = f"cut-{uuid.uuid4().hex[:8]}"
        sql = f"select pg_sleep(60), '{marker}'"
        with world.cli_running("exec", f"pg-{name}", "-c", sql) as running:
            wait(
                "the long statement reaching PostgreSQL",
                lambda: any(marker in s for s in world.pg.statement_log()),
                agent.log_file,
                30,
            )
            started_at = time.monotonic()
            revoked = world.cli("admin", "agents", "revoke", name)
            assert revoked.returncode == 0, revoked.stderr
            # The agent's stream is cut: it exits, saying why and what brings it back.
            assert agent.proc is not None
            assert agent.proc.wait(timeout=20) == 1
            assert f"agent '{name}' was revoked" in agent.log()
            assert f"`gatehouse admin agents create {name}`" in agent.log()
            # The session it served ends at once, not when its statement would.
            out, err = running.communicate(timeout=20)
            assert time.monotonic() - started_at < 20
        assert running.returncode != 0, out
        assert marker not in out
        # Told why, once its running statement's result is recorded (ADR 0011).
        assert f"session ended: agent '{name}' (instance" in err and "was revoked" in err
        assert "57P01" in err
    finally:
        agent.stop()
    # The refused credential is gone from its disk; restarted, the agent is refused again.
    assert not (data / f"agent-{name}.json").exists()
    restarted = world.refused_agent(name, token, data)
    assert restarted.returncode == 1, restarted.stderr
    assert "unknown or revoked join token" in restarted.stderr
    assert "gatehouse admin agents create" in restarted.stderr
    # The copied certificate has not expired, and is refused anyway.
    stolen = json.loads((copied / f"agent-{name}.json").read_text())["certificate"]
    assert enrollment.not_after(stolen.encode()) > time.time()
    replayed = world.refused_agent(name, token, copied)
    assert replayed.returncode == 1, replayed.stderr
    assert "this agent certificate is unknown, replaced or revoked" in replayed.stderr
    assert "enroll the agent again with a new join token" in replayed.stderr
    # The trail: one connection, cut by the revocation; both returns refused from the VPC.
    assert world.agents()[name]["status"] == "revoked"
    trail = world.export()
    changes = [e["change"] for e in trail if e["type"] == "admin.change"]
    assert {"action": "agent.revoke", "agent": name} in changes
    assert len(_of(trail, "agent.connect", name)) == 1
    (cut,) = _of(trail, "agent.disconnect", name)
    assert cut["reason"] == "the agent was revoked"
    (query,) = [e for e in trail if e["type"] == "db.query" and marker in e["request"]["statement"]]
    (result,) = [e for e in trail if e["type"] == "db.result" and e["ref"] == query["seq"]]
    assert result["result"]["error"] == "unknown"
    (end,) = [
        e for e in trail if e["type"] == "session.end" and e["session_id"] == query["session_id"]
    ]
    assert end["reason"] == "agent_revoked" and result["seq"] < end["seq"]
    assert cut["agent"]["peer"].startswith(f"ipv4:{world.vpc_ip}:")
    assert _refusals(world, trail, "join_token", "unknown or revoked join token"), trail
    assert _refusals(world, trail, "agent_certificate", "unknown, replaced or revoked"), trail
    _nothing_reaches_the_target_through(world, name)
