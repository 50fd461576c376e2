"""The control plane's CA: made once with a private key, reloaded as the same CA, and what it
signs verifies against it (and only against it)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.errors import FailedPrecondition, InvalidArgument
from controlplane.tls.ca import CertificateAuthority
from wire.jointoken import spki_pin


def _csr(common_name: str = "asked-for") -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM), key


def _pin_of(public: ec.EllipticCurvePublicKey) -> str:
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _chain(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def _verify(leaf: x509.Certificate, ca: CertificateAuthority, name: str | None) -> None:
    from cryptography.x509.verification import PolicyBuilder, Store

    store = Store([x509.load_pem_x509_certificate(ca.cert_pem)])
    builder = PolicyBuilder().store(store)
    if name is None:  # the web PKI client profile wants a SAN; gRPC's TLS does not
        leaf.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    else:
        builder.build_server_verifier(x509.DNSName(name)).verify(leaf, [])


def test_made_once_with_a_private_key_then_reloaded(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "d")
    assert stat.S_IMODE((tmp_path / "d" / "ca.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d" / "ca.pem").stat().st_mode) == 0o644
    assert (tmp_path / "d" / "ca.pem").read_bytes() == ca.cert_pem
    again = CertificateAuthority.load_or_create(tmp_path / "d")
    assert again.cert_pem == ca.cert_pem and again.pin == ca.pin
    other = CertificateAuthority.load_or_create(tmp_path / "e")
    assert other.pin != ca.pin


def test_pin_is_the_sha256_of_the_spki(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ca.pin == "sha256:" + hashlib.sha256(spki).hexdigest() == spki_pin(cert)


def test_a_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(FailedPrecondition, match="chmod 600"):
        CertificateAuthority.load_or_create(tmp_path)


def test_a_half_ca_is_refused_not_replaced(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(FailedPrecondition, match="missing"):
        CertificateAuthority.load_or_create(tmp_path)
    assert (tmp_path / "ca.pem").read_bytes() == ca.cert_pem


def test_server_certificate_names_and_chain(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    chain_pem, key_pem = ca.issue_server(["gw.example.com", "localhost"], ["10.0.0.1", "::1"])
    leaf, root = _chain(chain_pem)
    assert root.public_bytes(serialization.Encoding.PEM) == ca.cert_pem
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["gw.example.com", "localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert datetime.timedelta(days=90) <= life <= datetime.timedelta(days=90, minutes=6)
    key = serialization.load_pem_private_key(key_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert spki_pin(leaf) == _pin_of(key.public_key())
    _verify(leaf, ca, "gw.example.com")


def test_client_certificate_takes_the_given_name_not_the_csrs(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    csr, key = _csr("admin")
    cert = x509.load_pem_x509_certificate(
        ca.sign_csr(csr, "agent:vpc-1", datetime.timedelta(minutes=10))
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "agent:vpc-1"
    assert spki_pin(cert) == _pin_of(key.public_key())
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= datetime.timedelta(minutes=16)
    _verify(cert, ca, None)
    other = CertificateAuthority.load_or_create(tmp_path / "other")
    with pytest.raises(Exception):  # noqa: B017 - any verification failure
        _verify(cert, other, None)


def test_bad_csrs_are_refused(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path)
    with pytest.raises(InvalidArgument, match="not a PEM CSR"):
        ca.sign_csr(b"hello", "x", datetime.timedelta(minutes=1))
    csr, _ = _csr()
    with pytest.raises(InvalidArgument, match="lifetime"):
        ca.sign_csr(csr, "x", datetime.timedelta(days=1000))
