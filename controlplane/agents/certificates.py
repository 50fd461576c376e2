"""What the control plane needs to give agents client certificates, and to recognise them.

An agent in production holds a short-lived certificate signed by the control plane's CA for a
key it made itself; the store keeps the certificate's SHA-256 (of its DER), so the control plane
recognises an agent by the certificate the TLS handshake verified, and a revoked agent's
certificate stops working at its next call even before it expires.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
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

    def sign_csr(self, csr_pem: bytes, common_name: str, lifetime: timedelta) -> bytes: ...


def grpc_peer_certificate(context: Any) -> x509.Certificate | None:
    """The client certificate gRPC's own TLS verified, from the call's auth context."""
    try:
        auth = context.auth_context()
    except Exception:  # a context without TLS
        return None
    pems = auth.get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None


@dataclass(frozen=True)
class AgentCertificates:
    """The CA that signs agents' certificates, how long they live, the pin tokens carry
    (None when the control plane serves a certificate from a public CA: agents then use the
    system's trust store), and where a call's verified client certificate is found (gRPC's
    auth context, or the TLS front's record of the connection)."""

    ca: Signer
    lifetime: timedelta = DEFAULT_LIFETIME
    pin: str | None = None
    peer_certificate: Callable[[Any], x509.Certificate | None] = grpc_peer_certificate

    def peer_fingerprint(self, context: Any) -> str | None:
        """SHA-256 of the verified client certificate of this call, None without one."""
        cert = self.peer_certificate(context)
        if cert is None:
            return None
        return fingerprint(cert.public_bytes(serialization.Encoding.DER))


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
