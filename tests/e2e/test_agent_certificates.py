"""Agents in production mode: a TLS control plane (no --dev), pinned join tokens, mTLS with
short-lived certificates, renewal under a running session, revocation at once."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509

from agent import enrollment
from controlplane.tls.ca import CertificateAuthority
from devenv.postgres import PostgresServer
from devenv.production import ProductionControlPlane, production_agent, start_production_agent
from devenv.stack import GATEHOUSE, gatehouse
from gatehouse.v1 import agent_pb2, agent_pb2_grpc
from tests.e2e.conftest import PG_PASSWORD, POLICY
from wire.jointoken import spki_pin

LIFETIME = 20  # seconds: agents renew at ~13 s


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProductionControlPlane]:
    base = tmp_path_factory.mktemp("production")
    started = ProductionControlPlane.create_production(base / "cp", cert_lifetime=f"{LIFETIME}s")
    started.start_and_wait()
    yield started
    started.stop()


def cli(cp: ProductionControlPlane, *args: str, timeout: float = 60) -> Any:
    return gatehouse(list(args), env=cp.cli_env, timeout=timeout)


def events(cp: ProductionControlPlane, kind: str, agent: str) -> list[dict[str, Any]]:
    exported = cli(cp, "audit", "export", "--after", "0")
    assert exported.returncode == 0, exported.stderr
    found = [json.loads(line) for line in exported.stdout.split("\n") if line]
    return [e for e in found if e["type"] == kind and e.get("agent", {}).get("name") == agent]


def apply(cp: ProductionControlPlane, tmp_path: Path, agent: str, pg: PostgresServer) -> None:
    policy = POLICY.format(agent=agent, port=pg.port).replace("name: pg", f"name: pg-{agent}")
    (tmp_path / "gatehouse.yaml").write_text(policy)
    applied = cli(cp, "admin", "apply", "-f", str(tmp_path / "gatehouse.yaml"))
    assert applied.returncode == 0, applied.stderr


def stored(data_dir: Path, name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((data_dir / f"agent-{name}.json").read_text())
    return document


def run_agent_once(cp: ProductionControlPlane, name: str, token: str, data_dir: Path) -> Any:
    """An agent run that is expected to be refused: it exits on its own."""
    args = production_agent(cp.address, name, token, data_dir).args
    return gatehouse(args, timeout=40)


def test_a_pinned_token_enrolls_over_mtls_and_an_exec_runs_through_the_agent(
    cp: ProductionControlPlane, pg: PostgresServer, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-1")
    pin = spki_pin(x509.load_pem_x509_certificate(cp.ca_file.read_bytes()))
    assert info["ca_pin"] == pin
    assert str(info["join_token"]).endswith("." + pin.removeprefix("sha256:"))
    data = tmp_path / "agent"
    agent = start_production_agent(
        cp, "prod-1", str(info["join_token"]), data, env={"PG_PASSWORD": PG_PASSWORD}
    )
    try:
        apply(cp, tmp_path, "prod-1", pg)
        marker = f"through-mtls-{uuid.uuid4().hex[:8]}"
        result = cli(cp, "exec", "pg-prod-1", "-c", f"select '{marker}' as marker")
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout
        pg.wait_for_statement(marker)

        credential = stored(data, "prod-1")
        assert credential["credential"] == ""  # no bearer secret on the agent's disk
        assert "BEGIN CERTIFICATE" in credential["certificate"]
        assert (data / "agent-prod-1.json").stat().st_mode & 0o777 == 0o600
        assert credential["roots"].encode() == cp.ca_file.read_bytes()  # the pinned CA
        listed = cp.agents()["prod-1"]
        assert listed["cert_serial"] == enrollment.serial(credential["certificate"].encode())
        (enrolled,) = events(cp, "agent.enroll", "prod-1")
        assert enrolled["agent"]["hostname"] == socket.gethostname()
        assert enrolled["agent"]["address"] == "127.0.0.1"
        assert enrolled["join"]["uses_left"] == 0
    finally:
        agent.stop()


def test_a_token_pinned_to_another_ca_is_refused_naming_both_fingerprints(
    cp: ProductionControlPlane, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-2")
    other = CertificateAuthority.load_or_create(tmp_path / "other-ca")
    secret = str(info["join_token"]).partition(".")[0]
    forged = f"{secret}.{other.pin.removeprefix('sha256:')}"
    refused = run_agent_once(cp, "prod-2", forged, tmp_path / "agent")
    assert refused.returncode == 1
    assert other.pin in refused.stderr  # what the token pins
    assert str(info["ca_pin"]) in refused.stderr  # what the control plane presented
    assert "Refusing to enroll" in refused.stderr
    assert cp.agents()["prod-2"]["status"] == "pending"  # the secret never left the agent
    assert events(cp, "agent.enroll", "prod-2") == []


def test_expired_and_used_up_tokens_are_refused_with_the_reason(
    cp: ProductionControlPlane, tmp_path: Path
) -> None:
    brief = cp.create_agent("prod-3", ttl="1s")
    time.sleep(1.5)
    expired = run_agent_once(cp, "prod-3", str(brief["join_token"]), tmp_path / "a3")
    assert expired.returncode == 1
    assert "this join token expired at" in expired.stderr

    once = cp.create_agent("prod-4")
    first = start_production_agent(cp, "prod-4", str(once["join_token"]), tmp_path / "a4")
    first.stop()
    again = run_agent_once(cp, "prod-4", str(once["join_token"]), tmp_path / "a4-elsewhere")
    assert again.returncode == 1
    assert "already used" in again.stderr and "no uses left" in again.stderr
    assert len(events(cp, "agent.enroll", "prod-4")) == 1
    # The refusals are in the trail too, as failed authentications with a join token.
    exported = cli(cp, "audit", "export", "--after", "0")
    failed = [json.loads(line) for line in exported.stdout.split("\n") if line]
    reasons = [e["reason"] for e in failed if e["type"] == "auth.fail"]
    assert any("this join token expired at" in r for r in reasons), reasons
    assert any("no uses left" in r for r in reasons), reasons
    assert all(
        e["credential"] == "join_token"
        for e in failed
        if e["type"] == "auth.fail" and "join token" in e["reason"]
    )


def test_a_reusable_token_rejoins_without_the_data_dir(
    cp: ProductionControlPlane, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-5", uses=2, ttl="24h")
    token, data = str(info["join_token"]), tmp_path / "pod"
    first = start_production_agent(cp, "prod-5", token, data)
    first_serial = stored(data, "prod-5")["certificate"]
    first.stop()
    shutil.rmtree(data)  # a pod restarted without a volume
    second = start_production_agent(cp, "prod-5", token, data)
    try:
        assert stored(data, "prod-5")["certificate"] != first_serial
    finally:
        second.stop()
    third = run_agent_once(cp, "prod-5", token, tmp_path / "pod-3")
    assert third.returncode == 1 and "no uses left" in third.stderr
    uses = [e["join"]["uses_left"] for e in events(cp, "agent.enroll", "prod-5")]
    assert uses == [1, 0]


def test_a_revoked_agent_is_cut_off_and_its_certificate_refused_before_it_expires(
    cp: ProductionControlPlane, pg: PostgresServer, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-6")
    data = tmp_path / "agent"
    agent = start_production_agent(
        cp, "prod-6", str(info["join_token"]), data, env={"PG_PASSWORD": PG_PASSWORD}
    )
    try:
        apply(cp, tmp_path, "prod-6", pg)
        marker = f"long-{uuid.uuid4().hex[:8]}"
        running = subprocess.Popen(
            [*GATEHOUSE, "exec", "pg-prod-6", "-c", f"select pg_sleep(40), '{marker}'"],
            env={**os.environ, **cp.cli_env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        pg.wait_for_statement(marker, timeout=20)
        credential = stored(data, "prod-6")
        started = time.monotonic()
        revoked = cli(cp, "admin", "agents", "revoke", "prod-6")
        assert revoked.returncode == 0, revoked.stderr
        # The certificate has not expired yet: the control plane refuses it anyway.
        assert enrollment.not_after(credential["certificate"].encode()) > time.time()
        refused = renew_with(cp, credential)
        assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "revoked" in (refused.details() or "")
        # Its control stream is cut: the agent exits.
        assert agent.proc is not None
        assert agent.proc.wait(timeout=20) == 1
        assert "revoked" in agent.log()
        # The session it was serving ends too, long before its statement would.
        out, _ = running.communicate(timeout=20)
        assert time.monotonic() - started < 20
        assert running.returncode != 0
        assert marker not in out
    finally:
        agent.stop()


def renew_with(
    cp: ProductionControlPlane, credential: dict[str, Any], csr: bytes | None = None
) -> grpc.RpcError:
    """Call Renew with the agent's certificate and key; the error the control plane gives."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=cp.ca_file.read_bytes(),
        private_key=credential["key"].encode(),
        certificate_chain=credential["certificate"].encode(),
    )
    with grpc.secure_channel(cp.address, creds) as channel:
        stub = agent_pb2_grpc.AgentServiceStub(channel)
        csr = csr or enrollment.csr_pem(enrollment.new_key(), "prod-6")
        with pytest.raises(grpc.RpcError) as refused:
            stub.Renew(agent_pb2.RenewRequest(csr=csr), timeout=10)
    return refused.value


def test_the_certificate_is_renewed_while_a_session_runs(
    cp: ProductionControlPlane, pg: PostgresServer, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-7")
    data = tmp_path / "agent"
    agent = start_production_agent(
        cp, "prod-7", str(info["join_token"]), data, env={"PG_PASSWORD": PG_PASSWORD}
    )
    try:
        apply(cp, tmp_path, "prod-7", pg)
        enrolled_serial = enrollment.serial(stored(data, "prod-7")["certificate"].encode())
        # Spans the renewal at ~2/3 of the 20 s lifetime, and the old certificate's expiry.
        marker = f"survived-{uuid.uuid4().hex[:8]}"
        result = cli(
            cp, "exec", "pg-prod-7", "-c", f"select pg_sleep(22), '{marker}' as m", timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert marker in result.stdout
        assert "certificate renewed" in agent.log()
        listed = cp.agents()["prod-7"]
        assert listed["status"] == "online"
        assert listed["cert_serial"] != enrolled_serial
        assert events(cp, "agent.renew", "prod-7")
        after = cli(cp, "exec", "pg-prod-7", "-c", "select 'after renewal' as m")
        assert after.returncode == 0, after.stderr
        assert "after renewal" in after.stdout
    finally:
        agent.stop()


def test_an_enrollment_the_trail_cannot_record_grants_nothing_until_it_can(
    cp: ProductionControlPlane, tmp_path: Path
) -> None:
    """The store refuses agent.enroll (a fault of the store, made by a trigger): the agent gets
    no certificate, its join token keeps its one use, and it enrolls once the store recovers."""
    info = cp.create_agent("prod-8")
    refuse(cp, "agent.enroll", True)
    data = tmp_path / "agent"
    agent = production_agent(cp.address, "prod-8", str(info["join_token"]), data)
    agent.start()
    try:
        refusal = "the enrollment could not be recorded in the audit trail, so no credential"
        deadline = time.monotonic() + 30
        while agent.log().count(refusal) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert agent.log().count(refusal) >= 2, agent.log()  # refused, and refused again
        assert not (data / "agent-prod-8.json").exists()  # nothing was granted
        assert cp.agents()["prod-8"]["status"] == "pending"
        assert events(cp, "agent.enroll", "prod-8") == []
        refuse(cp, "agent.enroll", False)
        cp.wait_agent("prod-8")  # the same one-use token still works: no use was spent
        (enrolled,) = events(cp, "agent.enroll", "prod-8")
        assert enrolled["join"]["uses_left"] == 0
        assert enrolled["certificate"]["serial"] == cp.agents()["prod-8"]["cert_serial"]
    finally:
        agent.stop()


def test_a_refused_renewal_is_a_failed_authentication(
    cp: ProductionControlPlane, tmp_path: Path
) -> None:
    info = cp.create_agent("prod-9")
    data = tmp_path / "agent"
    agent = start_production_agent(cp, "prod-9", str(info["join_token"]), data)
    try:
        credential = stored(data, "prod-9")
        refused = renew_with(cp, credential, csr=b"not a certificate request")
        assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a PEM CSR" in (refused.details() or "")
    finally:
        agent.stop()
    exported = cli(cp, "audit", "export", "--after", "0", "--types", "auth.fail")
    failed = [json.loads(line) for line in exported.stdout.split("\n") if line]
    assert [e["credential"] for e in failed if "not a PEM CSR" in e["reason"]] == [
        "agent_certificate"
    ]
    assert events(cp, "agent.renew", "prod-9") == []


def refuse(cp: ProductionControlPlane, kind: str, on: bool) -> None:
    """Make the control plane's store refuse events of `kind` (or take them again)."""
    db = sqlite3.connect(cp.data_dir / "gatehouse.db", isolation_level=None)
    try:
        if on:
            db.execute(
                f"create trigger refuse_{kind.replace('.', '_')} before insert on audit_events "
                f"when new.type = '{kind}' begin select raise(abort, 'audit disk is full'); end"
            )
        else:
            db.execute(f"drop trigger refuse_{kind.replace('.', '_')}")
    finally:
        db.close()
