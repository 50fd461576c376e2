"""The control plane's audit signing key: loaded or made at start, it signs checkpoints and
prune anchors. What it signs (the notes), key ids and every check of a signature live in the
neutral package `trail` (trail.signatures, trail.verify), which `audit verify` uses too.
"""

from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.errors import InvalidArgument
from trail.signatures import anchor_note, checkpoint_note, key_id, public_pem

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

log = logging.getLogger(__name__)

KEY_FILE_NAME = "audit-signing.key"
DEFAULT_CHECKPOINT_EVERY = 1000
KEY_FILE_ENV = "GATEHOUSE_AUDIT_KEY_FILE"
CHECKPOINT_EVERY_ENV = "GATEHOUSE_CHECKPOINT_EVERY"


class SigningKeyError(InvalidArgument):
    """A key file or key that cannot be used; the message says which and why."""


class SigningKey:
    """The control plane's audit key. Signs checkpoints and anchors; never leaves the process."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def generate(cls) -> SigningKey:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    def sign(self, note: bytes) -> str:
        return base64.b64encode(self._private.sign(note)).decode("ascii")

    def checkpoint(self, seq: int, hash_: str) -> dict[str, Any]:
        """The `checkpoint` object of an audit.checkpoint event vouching for (seq, hash)."""
        signature = self.sign(checkpoint_note(seq, hash_))
        return {"seq": seq, "hash": hash_, "key_id": self.key_id, "signature": signature}

    def anchor(self, seq: int, hash_: str) -> dict[str, Any]:
        signature = self.sign(anchor_note(seq, hash_))
        return {"seq": seq, "hash": hash_, "key_id": self.key_id, "signature": signature}

    def public_pem(self) -> str:
        return public_pem(self.public)

    def private_pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def load_signing_key(default_path: Path, key_file: Path | None) -> SigningKey:
    """The key named by `key_file` (GATEHOUSE_AUDIT_KEY_FILE), which must exist; otherwise the
    one at `default_path` in the data dir, generated there (PEM, mode 0600) on first start.

    Several replicas on one PostgreSQL store should share one key through `key_file`, so that
    every checkpoint verifies with the one public key a verifier holds.
    """
    if key_file is not None:
        try:
            data = key_file.expanduser().read_bytes()
        except OSError as exc:
            raise SigningKeyError(
                f"cannot read the audit signing key {key_file} ({KEY_FILE_ENV}): {exc.strerror}"
            ) from None
        return _parse_private(data, key_file)
    try:
        data = default_path.read_bytes()
    except FileNotFoundError:
        key = SigningKey.generate()
        try:
            fd = os.open(default_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: use theirs
            return _parse_private(default_path.read_bytes(), default_path)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.private_pem())
            handle.flush()
            os.fsync(handle.fileno())
        log.info("generated the audit signing key %s (key id %s)", default_path, key.key_id)
        return key
    return _parse_private(data, default_path)


def _parse_private(data: bytes, path: Path) -> SigningKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"{path} is not an unencrypted PEM private key (PKCS#8): {exc}; "
            "generate one with `openssl genpkey -algorithm ed25519`"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise SigningKeyError(
            f"{path} holds a {type(private).__name__}; the audit key must be Ed25519"
        )
    try:
        mode = path.stat().st_mode & 0o077
    except OSError:
        mode = 0
    if mode:
        log.warning("the audit signing key %s is readable by others: chmod 600 it", path)
    return SigningKey(private)
