"""Production mode on one host: TLS on both listeners, its own CA in the data dir, the CLI, an
agent and a SIEM reader through TLS; a plaintext or mis-trusting client is refused; a renewed
certificate file is served without a restart."""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from controlplane.tls.ca import CertificateAuthority
from devenv.postgres import PostgresServer
from devenv.processes import tail
from devenv.stack import ControlPlane, gatehouse
from tests.e2e.conftest import Stack, start_stack


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("tls"), pg, tls=True)
    yield started
    started.stop()


def served_certificate(host: str, port: int, ca: Path | None = None) -> x509.Certificate:
    context = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_get(url: str, ca: Path, token: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return response.status, response.read()


def test_first_start_makes_the_ca_and_admin_token_private(tls_stack: Stack) -> None:
    data = tls_stack.controlplane.data_dir
    for name, mode in (("ca.key", 0o600), ("admin.token", 0o600), ("ca.pem", 0o644)):
        assert stat.S_IMODE((data / name).stat().st_mode) == mode, name
    pin = CertificateAuthority.load_or_create(data).pin
    assert f"CA pin {pin}" in tls_stack.controlplane.log()


def test_exec_and_the_export_through_tls(tls_stack: Stack) -> None:
    ran = tls_stack.cli("exec", "pg", "-c", "select 'through tls' as how")
    assert ran.returncode == 0, ran.stderr
    assert "through tls" in ran.stdout
    cp = tls_stack.controlplane
    status, body = https_get(
        f"https://127.0.0.1:{cp.http_port}/v1/audit/events?after=0", cp.ca_file, cp.token
    )
    assert status == 200
    events = [json.loads(line) for line in body.decode().splitlines()]
    queries = [e for e in events if "through tls" in json.dumps(e)]
    assert queries, "the query's event is in the export"
    assert {e["source"]["ip"] for e in queries} == {"127.0.0.1"}
    # curl, as a SIEM's script would
    curl = subprocess.run(
        [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(cp.ca_file),
            "-H",
            f"Authorization: Bearer {cp.token}",
            f"https://localhost:{cp.http_port}/v1/audit/events?after=0",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert curl.returncode == 0, curl.stderr
    assert "through tls" in curl.stdout


def test_the_http_listener_records_the_callers_address(tls_stack: Stack) -> None:
    cp = tls_stack.controlplane
    url = f"https://127.0.0.1:{cp.http_port}/v1/audit/events?after=0"
    with pytest.raises(urllib.error.HTTPError) as refused:
        https_get(url, cp.ca_file, "ghu_not-a-real-token")
    assert refused.value.code == 401
    _, body = https_get(url, cp.ca_file, cp.token)
    fails = [json.loads(line) for line in body.decode().splitlines()]
    fails = [e for e in fails if e["type"] == "auth.fail"]
    assert fails and {e["source"]["ip"] for e in fails} == {"127.0.0.1"}


def test_plaintext_clients_are_refused(tls_stack: Stack) -> None:
    cp = tls_stack.controlplane
    plain = tls_stack.cli("admin", "agents", "list", GATEHOUSE_CA_FILE="")
    assert plain.returncode != 0
    assert "serves TLS: set GATEHOUSE_CA_FILE" in plain.stderr
    with socket.create_connection(("127.0.0.1", cp.http_port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"use https://" in answer
    assert "refused a plaintext connection from 127.0.0.1" in cp.log()


def test_a_client_trusting_another_ca_is_refused(tls_stack: Stack, tmp_path: Path) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    result = tls_stack.cli(
        "admin", "agents", "list", GATEHOUSE_CA_FILE=str(tmp_path / "other" / "ca.pem")
    )
    assert result.returncode != 0
    assert "TLS with the control plane" in result.stderr
    assert other.pin not in tls_stack.controlplane.log()


def test_the_self_issued_certificate_names_the_listen_address(tls_stack: Stack) -> None:
    cp = tls_stack.controlplane
    cert = served_certificate("127.0.0.1", cp.grpc_port, cp.ca_file)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert cert.not_valid_after_utc > cert.not_valid_before_utc


def test_a_renewed_certificate_file_is_served_without_restart(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "operator-ca")
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"

    def issue() -> x509.Certificate:
        chain, key = ca.issue_server(["localhost"], ["127.0.0.1"], days=1)
        key_file.write_bytes(key)
        cert_file.write_bytes(chain)
        return x509.load_pem_x509_certificate(chain)

    first = issue()
    cp = ControlPlane.create(
        tmp_path / "cp",
        tls=True,
        extra=["--tls-cert", str(cert_file), "--tls-key", str(key_file)],
    )
    cp.start()
    try:
        operator_ca = tmp_path / "operator-ca" / "ca.pem"
        deadline = time.monotonic() + 30
        while True:
            try:
                served = served_certificate("127.0.0.1", cp.http_port, operator_ca)
                break
            except OSError:
                assert cp.running, tail(cp.log_file)
                assert time.monotonic() < deadline, tail(cp.log_file)
                time.sleep(0.2)
        assert served.serial_number == first.serial_number
        pid = cp.proc.pid if cp.proc else None

        second = issue()
        assert _served_soon(cp, operator_ca, second.serial_number), tail(cp.log_file)
        # gRPC too: the CLI trusting the operator's CA reaches it with the new certificate
        listed = gatehouse(
            ["admin", "agents", "list"],
            env={
                "GATEHOUSE_CONTROLPLANE": f"127.0.0.1:{cp.grpc_port}",
                "GATEHOUSE_TOKEN": cp.token,
                "GATEHOUSE_CA_FILE": str(operator_ca),
            },
        )
        assert listed.returncode == 0, listed.stderr
        assert served_certificate("127.0.0.1", cp.grpc_port, operator_ca).serial_number == (
            second.serial_number
        )

        # A broken file keeps the previous certificate in service.
        cert_file.write_bytes(b"not a certificate")
        time.sleep(1.5)
        assert served_certificate("127.0.0.1", cp.http_port, operator_ca).serial_number == (
            second.serial_number
        )
        assert "does not load" in cp.log()
        assert cp.running and cp.proc is not None and cp.proc.pid == pid
    finally:
        cp.stop()


def _served_soon(cp: ControlPlane, ca: Path, serial: int) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if served_certificate("127.0.0.1", cp.http_port, ca).serial_number == serial:
            return True
        time.sleep(0.2)
    return False


def test_mcp_is_served_on_the_https_listener_and_its_challenge_says_https(
    tls_stack: Stack,
) -> None:
    from mcp import ClientSession

    from tests.e2e.mcpclient import call, over_http

    cp = tls_stack.controlplane
    url = f"https://127.0.0.1:{cp.http_port}/mcp"
    request = urllib.request.Request(url, method="POST")
    context = ssl.create_default_context(cafile=cp.ca_file)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10, context=context)
    assert refused.value.code == 401
    challenge = refused.value.headers["WWW-Authenticate"]
    assert challenge == (
        f'Bearer resource_metadata="https://127.0.0.1:{cp.http_port}'
        '/.well-known/oauth-protected-resource/mcp"'
    )

    async def work(session: ClientSession) -> tuple[bool, Any]:
        return await call(session, "query", connection="pg", sql="select 'over tls' as t")

    error, answer = over_http(url, cp.token, work, ca=str(cp.ca_file))
    assert error is False and answer["rows"] == [["over tls"]]
