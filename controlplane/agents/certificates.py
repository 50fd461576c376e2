"""What the control plane needs to give agents client certificates, and to recognise them.

An agent in production holds a short-lived certificate signed by the control plane's CA for a
key it made itself; the store keeps the certificate's SHA-256 (of its DER), so the control plane
recognises an agent by the certificate the TLS handshake verified, and a revoked agent's
certificate stops working at its next call even before it expires.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

DEFAULT_LIFETIME = timedelta(hours=24)
DEFAULT_JOIN_TTL = timedelta(hours=1)
MAX_JOIN_TTL = timedelta(days=30)
MAX_JOIN_USES = 10_000


class Signer(Protocol):
    """The CA (controlplane.tls.ca.CertificateAuthority) as the registry uses it."""

    @property
    def cert_pem(self) -> bytes: ...

    def sign_csr(
        self, csr_pem: bytes, common_name: str, lifetime: timedelta, *, client: bool = True
    ) -> bytes: ...


@dataclass(frozen=True)
class AgentCertificates:
    """The CA that signs agents' certificates, how long they live, and the pin tokens carry
    (None when the control plane serves a certificate from a public CA: agents then use the
    system's trust store)."""

    ca: Signer
    lifetime: timedelta = DEFAULT_LIFETIME
    pin: str | None = None


@dataclass(frozen=True, slots=True)
class Issued:
    pem: bytes
    fingerprint: str
    serial: str
    not_after: datetime


def describe(pem: bytes) -> Issued:
    cert = x509.load_pem_x509_certificate(pem)
    return Issued(
        pem=pem,
        fingerprint=fingerprint(cert.public_bytes(serialization.Encoding.DER)),
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
    )


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def peer_fingerprint(context: Any) -> str | None:
    """SHA-256 of the client certificate the TLS handshake verified, None without one.

    gRPC puts the verified peer certificate (PEM) in the call's auth context; a plaintext
    (--dev) call or a TLS client that sent no certificate has none.
    """
    try:
        auth = context.auth_context()
    except Exception:  # a context without TLS
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


def now() -> datetime:
    return datetime.now(UTC)
