"""The control plane's own certificate authority, kept in its data dir.

One ECDSA P-256 key (every gRPC/BoringSSL and OpenSSL client speaks it) signs the control plane's
server certificate when no operator certificate is given, and agents' short-lived client
certificates. Clients trust it by file (`ca.pem`) or by pin: the SHA-256 of the CA certificate's
SubjectPublicKeyInfo, as kubeadm's discovery hash, so a join token can carry it.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.errors import FailedPrecondition, InvalidArgument
from wire.atomicfile import write_atomic
from wire.jointoken import spki_pin

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
CA_LIFETIME = datetime.timedelta(days=3650)
# Certificates are dated this far back: a peer whose clock is a little behind still accepts them.
BACKDATE = datetime.timedelta(minutes=5)
MAX_LEAF_LIFETIME = datetime.timedelta(days=397)  # the CA/Browser Forum's ceiling


class CertificateAuthority:
    """A CA key and its self-signed certificate; `load_or_create` is the way to get one."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self._cert = cert
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> CertificateAuthority:
        """The CA in `data_dir` (`ca.pem` 0644, `ca.key` 0600), made on first call."""
        cert_path, key_path = data_dir / CA_CERT_FILE, data_dir / CA_KEY_FILE
        if key_path.exists() or cert_path.exists():
            return cls._load(cert_path, key_path)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca = cls._create()
        try:
            write_atomic(key_path, _key_pem(ca._key), 0o600, exclusive=True)
        except FileExistsError:  # another process made it first: use theirs
            return cls._load(cert_path, key_path)
        write_atomic(cert_path, ca.cert_pem, 0o644, exclusive=True)
        return ca

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> CertificateAuthority:
        try:
            key_pem, cert_pem = key_path.read_bytes(), cert_path.read_bytes()
        except FileNotFoundError as exc:
            raise FailedPrecondition(
                f"the CA is incomplete: {exc.filename} is missing (restore it from backup, or "
                f"remove both {cert_path.name} and {key_path.name} to make a new CA, "
                "which every agent and client must then trust again)"
            ) from None
        if key_path.stat().st_mode & 0o077:
            raise FailedPrecondition(
                f"{key_path} is readable by others: chmod 600 it (it signs every certificate "
                "the control plane trusts)"
            )
        key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise FailedPrecondition(f"{key_path} is not an ECDSA key")
        if key.public_key() != cert.public_key():
            raise FailedPrecondition(f"{key_path} is not the key of {cert_path}")
        return cls(key, cert)

    @classmethod
    def _create(cls) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        # A random suffix: two control planes' CAs never share a name (chain building picks
        # issuers by name).
        name = _name(f"Gatehouse CA {secrets.token_hex(4)}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self._cert_pem

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    @property
    def pin(self) -> str:
        return spki_pin(self._cert)

    def issue_server(
        self, dns_names: list[str], ips: list[str], days: int = 90
    ) -> tuple[bytes, bytes]:
        """A new key and a server certificate for these names; (chain PEM, key PEM)."""
        if not dns_names and not ips:
            raise InvalidArgument("a server certificate needs at least one DNS name or IP")
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(dns_names)]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in dict.fromkeys(ips)]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(
            (dns_names or ips)[0],
            key.public_key(),
            datetime.timedelta(days=days),
            ExtendedKeyUsageOID.SERVER_AUTH,
        )
        cert = cert.add_extension(x509.SubjectAlternativeName(names), critical=False)
        signed = cert.sign(self._key, hashes.SHA256())
        chain = signed.public_bytes(serialization.Encoding.PEM) + self._cert_pem
        return chain, _key_pem(key)

    def sign_csr(self, csr_pem: bytes, common_name: str, lifetime: datetime.timedelta) -> bytes:
        """An agent's client certificate for the CSR's key, named `common_name` (the CSR's own
        subject and extensions are ignored: the caller decides who this is). PEM, leaf only.

        Only client certificates are signed for a CSR (there is no way to ask for another): the
        control plane's own server certificate comes from `issue_server`, with its key made
        here, so no key from outside ever stands behind a serverAuth certificate."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError:
            raise InvalidArgument("the certificate request is not a PEM CSR") from None
        if not csr.is_signature_valid:
            raise InvalidArgument("the certificate request's signature does not verify")
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.key_size < 256:
            raise InvalidArgument("the certificate request's key must be ECDSA P-256 or larger")
        if not datetime.timedelta(seconds=1) <= lifetime <= MAX_LEAF_LIFETIME:
            raise InvalidArgument(f"a certificate lifetime must be from 1s to {MAX_LEAF_LIFETIME}")
        builder = self._leaf(common_name, public, lifetime, ExtendedKeyUsageOID.CLIENT_AUTH)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def _leaf(
        self,
        common_name: str,
        public: ec.EllipticCurvePublicKey,
        lifetime: datetime.timedelta,
        usage: x509.ObjectIdentifier,
    ) -> x509.CertificateBuilder:
        now = _now()
        not_after = min(now + lifetime, self._cert.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), False
            )
        )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
