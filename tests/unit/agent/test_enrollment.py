"""The agent trusts the control plane by the pin its join token carries, and nothing else."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent import credentials, enrollment
from controlplane.tls.ca import CertificateAuthority
from wire.jointoken import spki_pin


class TlsServer:
    """A loopback TLS server presenting `chain` (leaf then CA), as the control plane does."""

    def __init__(self, chain: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(chain, key)
        self.context.set_alpn_protocols(["h2"])
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "cp")


@pytest.fixture
def server(tmp_path: Path, ca: CertificateAuthority) -> Iterator[TlsServer]:
    chain, key = ca.issue_server(["localhost"], ["127.0.0.1"])
    (tmp_path / "server.pem").write_bytes(chain)
    (tmp_path / "server.key").write_bytes(key)
    running = TlsServer(tmp_path / "server.pem", tmp_path / "server.key")
    yield running
    running.close()


def test_the_pinned_ca_is_found_in_the_presented_chain(
    server: TlsServer, ca: CertificateAuthority
) -> None:
    root = enrollment.pinned_root(server.address, ca.pin)
    assert root == ca.cert_pem
    assert spki_pin(x509.load_pem_x509_certificate(root)) == ca.pin


def test_a_chain_without_the_pinned_ca_is_refused_naming_both_fingerprints(
    server: TlsServer, ca: CertificateAuthority, tmp_path: Path
) -> None:
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(enrollment.PinMismatch) as refused:
        enrollment.pinned_root(server.address, other.pin)
    message = str(refused.value)
    assert other.pin in message  # what the token pins
    assert ca.pin in message  # what the control plane presented
    assert "Refusing to enroll" in message


def test_the_agents_key_and_certificate_are_kept_0600(tmp_path: Path) -> None:
    key = enrollment.new_key()
    stored = credentials.StoredCredential(
        "cp:8443", "edge", "id", "", certificate="x", key=enrollment.key_pem(key).decode()
    )
    path = credentials.save(tmp_path / "data", stored)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    loaded = credentials.load(tmp_path / "data", "edge", "cp:8443")
    assert loaded is not None and loaded.mtls and loaded.credential == ""


def test_the_csr_is_for_the_agents_own_key_and_names_it() -> None:
    key = enrollment.new_key()
    csr = x509.load_pem_x509_csr(enrollment.csr_pem(key, "edge"))
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.rfc4514_string() == "CN=edge"


def test_a_ca_file_must_hold_the_pinned_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    enrollment.check_ca_file(ca.cert_pem, ca.pin, "ca.pem")
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(enrollment.PinMismatch) as refused:
        enrollment.check_ca_file(other.cert_pem, ca.pin, "ca.pem")
    assert ca.pin in str(refused.value) and other.pin in str(refused.value)


async def test_an_unreachable_control_plane_is_retried_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import logging

    from agent.runner import Agent, AgentSettings
    from wire import jointoken

    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    token = jointoken.format_token("ghj_" + "A" * 43, "sha256:" + "ab" * 32)
    agent = Agent(AgentSettings(f"127.0.0.1:{port}", token, "edge", tmp_path / "data"))
    caplog.set_level(logging.WARNING, logger="agent.runner")
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(1.5)
    assert not task.done()  # still trying, not crashed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "cannot read the control plane's certificate chain" in caplog.text
