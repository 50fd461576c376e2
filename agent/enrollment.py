"""Trusting the control plane before the agent has any file from it, and the agent's own key.

A join token carries the pin of the control plane's CA (SHA-256 of its SubjectPublicKeyInfo).
The agent reads the certificate chain the control plane presents, without trusting it yet,
keeps the certificate in it whose key matches the pin, and from then on verifies the control
plane against that CA only (gRPC checks the chain and the name on every connection). Reading
the chain proves nothing by itself; the pin is what makes the found CA trustworthy. With no
pin, the system's CAs are the trust root (a control plane with a public certificate).

The agent makes its own ECDSA P-256 key: the private key never leaves its data dir, the
control plane only ever sees a CSR and signs a short-lived certificate for it.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_DER = 2  # _ssl.ENCODING_DER: the value `get_unverified_chain` certificates take for DER


class PinMismatch(Exception):
    """The control plane's chain has no CA with the pinned key: refuse, naming both."""


def spki_pin(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the control plane address must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def presented_chain(address: str, timeout: float = 10.0) -> list[x509.Certificate]:
    """The certificates the control plane sends in its TLS handshake, unverified."""
    host, port = split_address(address)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # nothing is trusted from here but by the pin
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        chain = _unverified_chain(tls)
    return [x509.load_der_x509_certificate(der) for der in chain]


def _unverified_chain(tls: ssl.SSLSocket) -> list[bytes]:
    """Python 3.13 names this `SSLSocket.get_unverified_chain`; 3.10-3.12 have it only on the
    underlying `_ssl` object. The leaf alone, should neither exist."""
    public = getattr(tls, "get_unverified_chain", None)
    if public is not None:
        return [c.public_bytes(_DER) for c in public()]
    inner = getattr(tls, "_sslobj", None)
    method = getattr(inner, "get_unverified_chain", None)
    if method is not None:
        return [c.public_bytes(_DER) for c in method()]
    leaf = tls.getpeercert(binary_form=True)
    return [leaf] if leaf else []


def pinned_root(address: str, pin: str, timeout: float = 10.0) -> bytes:
    """PEM of the CA in the control plane's chain whose key has `pin`; PinMismatch if none."""
    chain = presented_chain(address, timeout)
    for cert in chain:
        if spki_pin(cert) == pin:
            return cert.public_bytes(serialization.Encoding.PEM)
    found = ", ".join(f"{spki_pin(c)} ({c.subject.rfc4514_string()})" for c in chain) or "none"
    raise PinMismatch(
        f"the control plane at {address} is not the one the join token names: the token pins "
        f"CA {pin}, the certificates it presented have {found}. Refusing to enroll (a wrong "
        "address, a proxy in the way, or a token from another control plane)"
    )


def check_ca_file(pem: bytes, pin: str, path: str) -> None:
    """A --ca-file given with a pinned token must hold the pinned CA: both name the control
    plane, and when they disagree one of them is wrong."""
    certs = x509.load_pem_x509_certificates(pem)
    if any(spki_pin(c) == pin for c in certs):
        return
    found = ", ".join(spki_pin(c) for c in certs) or "none"
    raise PinMismatch(
        f"{path} does not hold the CA the join token pins: the token pins {pin}, the file has "
        f"{found}. Refusing to enroll"
    )


def system_roots() -> bytes | None:
    """The system's CA bundle, or None for gRPC's own bundled roots."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_bytes()
    return None


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR naming the agent; the control plane decides the certificate's name anyway."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def not_after(cert_pem: bytes) -> float:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc.timestamp()


def serial(cert_pem: bytes) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem).serial_number, "x")
