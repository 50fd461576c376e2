"""The listeners' certificate: self-issued and renewed early, or the operator's files re-read
when they change (a broken replacement keeps the previous one)."""

from __future__ import annotations

import datetime
import time
from pathlib import Path

import pytest
from cryptography import x509

from controlplane.errors import InvalidArgument
from controlplane.tls import server as tls_server
from controlplane.tls.ca import CertificateAuthority
from controlplane.tls.server import ALPN_GRPC, ServerTls, split_names


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_names_always_include_loopback_and_skip_the_wildcard_address() -> None:
    given = ["GW.example.com:8443", "0.0.0.0", "[2001:db8::1]:8443", "10.0.0.5", "", "fd00::5"]
    dns, ips = split_names(given)
    assert dns == ["gw.example.com", "localhost"]
    assert ips == ["2001:db8::1", "10.0.0.5", "fd00::5", "127.0.0.1", "::1"]


def test_self_issued_is_kept_then_renewed_when_close_to_expiry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = ServerTls.configure(tmp_path, None, None, ["gw.example.com"])
    serial = _serial(tmp_path / "server.pem")
    assert first.self_issued
    ServerTls.configure(tmp_path, None, None, ["gw.example.com"])
    assert _serial(tmp_path / "server.pem") == serial, "a valid certificate is reused"
    # Another public name: a new certificate that names it.
    ServerTls.configure(tmp_path, None, None, ["gw.example.com", "gw2.example.com"])
    assert _serial(tmp_path / "server.pem") != serial
    # Close to expiry: renewed by the running process at its next look, and served.
    tls = ServerTls.configure(tmp_path, None, None, ["gw.example.com"])
    before = _serial(tmp_path / "server.pem")
    monkeypatch.setattr(tls_server, "RENEW_WHEN_LEFT", datetime.timedelta(days=365))
    monkeypatch.setattr(tls_server, "CHECK_EVERY", 0.0)
    tls.context(ALPN_GRPC)
    assert _serial(tmp_path / "server.pem") != before
    assert tls.reloads == 1


def test_operator_files_are_reloaded_and_a_broken_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tls_server, "CHECK_EVERY", 0.0)
    ca = CertificateAuthority.load_or_create(tmp_path / "op")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    chain, pem = ca.issue_server(["gw.example.com"], [])
    cert.write_bytes(chain)
    key.write_bytes(pem)
    tls = ServerTls.configure(tmp_path / "d", cert, key, [])
    old = tls.context(ALPN_GRPC)
    assert tls.context(ALPN_GRPC) is old, "unchanged files: the same context"
    time.sleep(0.01)
    chain, pem = ca.issue_server(["gw.example.com"], [])
    key.write_bytes(pem)
    cert.write_bytes(chain)
    new = tls.context(ALPN_GRPC)
    assert new is not old and tls.reloads == 1
    # A certificate whose key does not match: the previous context stays in service.
    other_chain, _ = ca.issue_server(["gw.example.com"], [])
    cert.write_bytes(other_chain)
    assert tls.context(ALPN_GRPC) is new
    assert tls.reloads == 1


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="go together"):
        ServerTls.configure(tmp_path, tmp_path / "c", None, [])
    (tmp_path / "c").write_text("nonsense")
    (tmp_path / "k").write_text("nonsense")
    with pytest.raises(InvalidArgument, match="cannot use the TLS certificate"):
        ServerTls.configure(tmp_path, tmp_path / "c", tmp_path / "k", [])
