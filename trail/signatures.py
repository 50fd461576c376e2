"""Checkpoint and anchor signatures: the exact bytes the control plane's Ed25519 key signs,
key ids, and the check of a signature against the public keys a verifier holds.

A hash chain alone cannot show that its tail was cut, or that a copy which starts after seq 1
was not made up from an arbitrary `prev_hash`. A signature over `(seq, hash)` that a SIEM keeps
closes both gaps (docs/decisions/0005). The signed texts are C2SP-style notes, one value a line:

    checkpoint: "gatehouse-audit/v1\\n<seq>\\n<hash>\\n"         (the chain at seq had this hash)
    anchor:     "gatehouse-audit-anchor/v1\\n<seq>\\n<hash>\\n"  (events up to seq were pruned)

`seq` is decimal, `hash` the 64 lowercase hex digits of the event's hash, the signature is
standard base64 with padding, and `key_id` is the first 16 hex digits of SHA-256 of the raw
32-byte public key. The two texts differ in their first line so that a checkpoint's signature
can never pass as an anchor (which would let someone who can write to the store drop a prefix).
The private key and signing stay in the control plane (controlplane.audit.checkpoints).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

CHECKPOINT_TYPE = "audit.checkpoint"
PRUNE_TYPE = "audit.prune"
CHECKPOINT_ORIGIN = "gatehouse-audit/v1"
ANCHOR_ORIGIN = "gatehouse-audit-anchor/v1"
ALGORITHM = "ed25519"


class PublicKeyError(ValueError):
    """A public key that cannot be used to verify; the message says which and why."""


def checkpoint_note(seq: int, hash_: str) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return f"{CHECKPOINT_ORIGIN}\n{seq}\n{hash_}\n".encode("ascii")


def anchor_note(seq: int, hash_: str) -> bytes:
    """The bytes a prune anchor's signature covers."""
    return f"{ANCHOR_ORIGIN}\n{seq}\n{hash_}\n".encode("ascii")


def key_id(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_pem(public: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    """A PEM public key (as `gatehouse audit public-key` prints it), which must be Ed25519."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        public = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise PublicKeyError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise PublicKeyError(f"{source} holds a {type(public).__name__}, not an Ed25519 key")
    return public


def keyring(keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id: a verifier may hold several (the current one and rotated ones)."""
    return {key_id(k): k for k in keys}


def signature_problem(
    keys: Mapping[str, Ed25519PublicKey], signed: Mapping[str, Any], note: bytes
) -> str | None:
    """Why `signed` (with key_id and signature) does not vouch for `note`, or None."""
    from cryptography.exceptions import InvalidSignature

    kid, signature = signed.get("key_id"), signed.get("signature")
    if not isinstance(kid, str) or not isinstance(signature, str):
        return "it carries no key_id and signature"
    public = keys.get(kid)
    if public is None:
        known = ", ".join(sorted(keys)) or "none"
        return f"it is signed by key {kid}, not by a key given to verify with ({known})"
    try:
        public.verify(base64.b64decode(signature, validate=True), note)
    except (InvalidSignature, binascii.Error, ValueError):
        return f"the signature does not verify with key {kid}: it was forged or altered"
    return None
