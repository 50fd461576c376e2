"""The password algorithms of MySQL's and MariaDB's authentication plugins, both sides.

Each function is the published algorithm: ``mysql_native_password`` (SHA-1, MySQL's
"Secure Password Authentication"), ``caching_sha2_password`` (its SHA-256 fast path, and the
full path's RSA-OAEP encryption of the password XOR the nonce) and MariaDB's ``client_ed25519``
(an Ed25519 signature of the nonce with a key derived from SHA-512 of the password, done with
libsodium's scalar operations through PyNaCl).
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl import bindings

from wire.mysql.constants import SCRAMBLE_LENGTH

__all__ = [
    "caching_sha2_scramble",
    "caching_sha2_verify",
    "ed25519_public_key",
    "ed25519_sign",
    "ed25519_verify",
    "native_scramble",
    "rsa_decrypt_password",
    "rsa_encrypt_password",
]


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def native_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA1(password) XOR SHA1(nonce + SHA1(SHA1(password))); empty for no password."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password).digest()
    stage2 = hashlib.sha1(stage1).digest()
    return _xor(stage1, hashlib.sha1(nonce[:SCRAMBLE_LENGTH] + stage2).digest())


def caching_sha2_scramble(password: bytes, nonce: bytes) -> bytes:
    """SHA256(password) XOR SHA256(SHA256(SHA256(password)) + nonce): the fast path's proof."""
    if not password:
        return b""
    p1 = hashlib.sha256(password).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:SCRAMBLE_LENGTH]).digest())


def caching_sha2_verify(stored: bytes, nonce: bytes, scramble: bytes) -> bool:
    """The server's check of a fast-path scramble against its cached SHA256(SHA256(password))."""
    if len(scramble) != 32:
        return False
    p1 = _xor(scramble, hashlib.sha256(stored + nonce[:SCRAMBLE_LENGTH]).digest())
    return hmac.compare_digest(hashlib.sha256(p1).digest(), stored)


def rsa_encrypt_password(password: bytes, nonce: bytes, public_key_pem: bytes) -> bytes:
    """The full path without TLS: (password + NUL) XOR the nonce, RSA-OAEP (SHA-1) encrypted."""
    key = serialization.load_pem_public_key(public_key_pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the server's public key is not an RSA key")
    salt = nonce[:SCRAMBLE_LENGTH]
    plain = bytes(b ^ salt[i % len(salt)] for i, b in enumerate(password + b"\x00"))
    return key.encrypt(plain, _OAEP)


def rsa_decrypt_password(encrypted: bytes, nonce: bytes, private_key: rsa.RSAPrivateKey) -> bytes:
    """The server's side of ``rsa_encrypt_password``: the password, without its NUL."""
    plain = private_key.decrypt(encrypted, _OAEP)
    salt = nonce[:SCRAMBLE_LENGTH]
    return bytes(b ^ salt[i % len(salt)] for i, b in enumerate(plain)).rstrip(b"\x00")


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)


def _clamp(scalar: bytes) -> bytes:
    out = bytearray(scalar)
    out[0] &= 248
    out[31] = (out[31] & 127) | 64
    return bytes(out)


def ed25519_public_key(password: bytes) -> bytes:
    """The public key MariaDB stores for a password (``ed25519_password()``, before base64)."""
    secret = _clamp(hashlib.sha512(password).digest()[:32])
    return bytes(bindings.crypto_scalarmult_ed25519_base_noclamp(secret))


def ed25519_sign(password: bytes, nonce: bytes) -> bytes:
    """RFC 8032 signing of ``nonce``, with SHA-512(password) in place of the hashed seed."""
    h = hashlib.sha512(password).digest()
    secret = _clamp(h[:32])
    r = bindings.crypto_core_ed25519_scalar_reduce(hashlib.sha512(h[32:] + nonce).digest())
    big_r = bindings.crypto_scalarmult_ed25519_base_noclamp(r)
    public = bindings.crypto_scalarmult_ed25519_base_noclamp(secret)
    k = bindings.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + public + nonce).digest())
    s = bindings.crypto_core_ed25519_scalar_add(
        bindings.crypto_core_ed25519_scalar_mul(k, secret), r
    )
    return bytes(big_r + s)


def ed25519_verify(public_key: bytes, nonce: bytes, signature: bytes) -> bool:
    """A standard Ed25519 verification: what the server does with the stored public key."""
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, nonce)
    except (InvalidSignature, ValueError):
        return False
    return True
