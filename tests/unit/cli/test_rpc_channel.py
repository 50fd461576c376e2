"""Which channel the CLI opens: plaintext only to loopback without a CA file, TLS otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import pytest

from cli import rpc
from cli.errors import CliError


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    calls: list[tuple[str, Any]] = []
    monkeypatch.setattr(
        grpc.aio, "insecure_channel", lambda address, **_: calls.append(("plain", None))
    )
    monkeypatch.setattr(
        grpc.aio, "secure_channel", lambda address, creds, **_: calls.append(("tls", creds))
    )
    monkeypatch.delenv("GATEHOUSE_CA_FILE", raising=False)
    return calls


@pytest.mark.parametrize(
    ("address", "ca", "kind"),
    [
        ("127.0.0.1:8443", False, "plain"),
        ("[::1]:8443", False, "plain"),
        ("localhost:8443", False, "plain"),
        ("127.0.0.1:8443", True, "tls"),  # a production control plane on this host
        ("gw.example.com:8443", False, "tls"),  # system trust
        ("10.0.0.5:8443", True, "tls"),
    ],
)
def test_channel_kind(
    address: str,
    ca: bool,
    kind: str,
    opened: list[tuple[str, Any]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if ca:
        (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
        monkeypatch.setenv("GATEHOUSE_CA_FILE", str(tmp_path / "ca.pem"))
    rpc.channel(address)
    assert [k for k, _ in opened] == [kind]


def test_a_missing_ca_file_is_a_usage_error(
    opened: list[tuple[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GATEHOUSE_CA_FILE", str(tmp_path / "nope.pem"))
    with pytest.raises(CliError, match="GATEHOUSE_CA_FILE"):
        rpc.channel("gw.example.com:8443")
    assert opened == []
