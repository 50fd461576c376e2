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

import contextlib
import ipaddress
import select
import socket
import ssl
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from wire.jointoken import spki_pin


class PinMismatch(Exception):
    """The control plane's chain has no CA with the pinned key: refuse, naming both."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"the control plane address must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


def presented_chain(address: str, timeout: float = 10.0) -> list[x509.Certificate]:
    """The certificates the control plane sends in its TLS handshake, unverified.

    pyOpenSSL, because the standard library shows the whole presented chain only from
    Python 3.13 on (`SSLSocket.get_unverified_chain`); before it, only the leaf.
    """
    host, port = split_address(address)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_verify(SSL.VERIFY_NONE)  # nothing is trusted from here but by the pin
    context.set_alpn_protos([b"h2"])
    with socket.create_connection((host, port), timeout=timeout) as raw:
        raw.setblocking(False)  # the handshake below waits with select, bounded by `timeout`
        tls = SSL.Connection(context, raw)
        if not _is_ip(host):
            tls.set_tlsext_host_name(host.encode("idna"))
        tls.set_connect_state()
        deadline = time.monotonic() + timeout
        while True:
            try:
                tls.do_handshake()
                break
            except (SSL.WantReadError, SSL.WantWriteError) as want:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no TLS handshake from {address} in {timeout} s") from None
                reading = isinstance(want, SSL.WantReadError)
                select.select([raw] if reading else [], [] if reading else [raw], [], remaining)
        chain = tls.get_peer_cert_chain(as_cryptography=True) or []
        with contextlib.suppress(SSL.Error, OSError):
            tls.shutdown()
    return list(chain)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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
