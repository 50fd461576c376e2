"""The join token's text form: made by the control plane, read by the agent.

`ghj_<secret>.<pin>`: the secret is 256 random bits (URL-safe base64, never a '.'), the only
part the control plane stores (as a hash) and the only part the agent sends. The pin is the
hex SHA-256 of the control plane CA's SubjectPublicKeyInfo, as kubeadm's discovery hash: it is
not secret, it tells the agent which CA to trust before it has any file from the control
plane. A control plane with a certificate from a public CA (or `--dev`) makes tokens without
a pin; the agent then trusts the system's CAs (or, with --dev, plaintext on loopback).

`spki_pin` computes the pin, here once: the control plane puts its CA's pin in the tokens it
makes, and the agent looks for the certificate with that pin in the chain it is shown.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

PREFIX = "ghj_"
PIN_SCHEME = "sha256:"
_SECRET = re.compile(r"^ghj_[A-Za-z0-9_-]{20,128}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


class BadJoinToken(ValueError):
    """The text is not a join token; the message says what is wrong, never the secret."""


@dataclass(frozen=True, slots=True)
class JoinToken:
    secret: str
    pin: str | None  # "sha256:<hex>" or None

    def __str__(self) -> str:
        return format_token(self.secret, self.pin)


def spki_pin(cert: x509.Certificate) -> str:
    """`sha256:<hex>` of the certificate's SubjectPublicKeyInfo (DER), as kubeadm's discovery
    hash: it names the key, so a CA certificate re-issued for the same key keeps its pin."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return PIN_SCHEME + hashlib.sha256(spki).hexdigest()


def format_token(secret: str, pin: str | None) -> str:
    if pin is None:
        return secret
    if not pin.startswith(PIN_SCHEME) or not _HEX.match(pin[len(PIN_SCHEME) :]):
        raise BadJoinToken(f"a CA pin is {PIN_SCHEME}<64 hex digits>, not {pin[:80]!r}")
    return f"{secret}.{pin[len(PIN_SCHEME) :]}"


def is_join_token(text: str) -> bool:
    return text.startswith(PREFIX)


def parse(text: str) -> JoinToken:
    """Split a join token into its secret and its CA pin (None when it carries none)."""
    text = text.strip()
    if not text.startswith(PREFIX):
        raise BadJoinToken(
            f"that is not a join token (join tokens start with {PREFIX!r}); "
            "create one with `gatehouse admin agents create NAME`"
        )
    secret, dot, pin = text.partition(".")
    if not _SECRET.match(secret):
        raise BadJoinToken("the join token is malformed: its secret part was cut or altered")
    if not dot:
        return JoinToken(secret, None)
    if not _HEX.match(pin.lower()):
        raise BadJoinToken(
            "the join token is malformed: after the '.' it carries the CA pin, 64 hex digits "
            "(was the token cut when it was copied?)"
        )
    return JoinToken(secret, PIN_SCHEME + pin.lower())
