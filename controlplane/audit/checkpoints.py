"""Signed checkpoints and prune anchors: the control plane's Ed25519 key, the exact bytes it
signs, and the verifier that walks a trail (from the store or from an export file) checking
the chain, every signature, and where the walk may start.

A hash chain alone cannot show that its tail was cut, or that a copy which starts after seq 1
was not made up from an arbitrary `prev_hash`. A signature over `(seq, hash)` that a SIEM keeps
closes both gaps (docs/decisions/0005). The signed texts are C2SP-style notes, one value a line:

    checkpoint: "gatehouse-audit/v1\\n<seq>\\n<hash>\\n"         (the chain at seq had this hash)
    anchor:     "gatehouse-audit-anchor/v1\\n<seq>\\n<hash>\\n"  (events up to seq were pruned)

`seq` is decimal, `hash` the 64 lowercase hex digits of the event's hash, the signature is
standard base64 with padding, and `key_id` is the first 16 hex digits of SHA-256 of the raw
32-byte public key. The two texts differ in their first line so that a checkpoint's signature
can never pass as an anchor (which would let someone who can write to the store drop a prefix).

The CLI imports this module to verify; `cryptography` is imported only when a key is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controlplane.audit.chain import GENESIS_HASH, canonical, check_content, sequence_problem
from controlplane.errors import InvalidArgument

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

log = logging.getLogger(__name__)

CHECKPOINT_TYPE = "audit.checkpoint"
PRUNE_TYPE = "audit.prune"
CHECKPOINT_ORIGIN = "gatehouse-audit/v1"
ANCHOR_ORIGIN = "gatehouse-audit-anchor/v1"
KEY_FILE_NAME = "audit-signing.key"
ALGORITHM = "ed25519"
DEFAULT_CHECKPOINT_EVERY = 1000
KEY_FILE_ENV = "GATEHOUSE_AUDIT_KEY_FILE"
CHECKPOINT_EVERY_ENV = "GATEHOUSE_CHECKPOINT_EVERY"


class SigningKeyError(InvalidArgument):
    """A key file or key that cannot be used; the message says which and why."""


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


def load_public_key(data: bytes, source: str) -> Ed25519PublicKey:
    """A PEM public key (as `gatehouse audit public-key` prints it), which must be Ed25519."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        public = load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{source} is not a PEM public key: {exc}") from None
    if not isinstance(public, Ed25519PublicKey):
        raise SigningKeyError(f"{source} holds a {type(public).__name__}, not an Ed25519 key")
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


def parse_cutoff(text: str) -> datetime:
    """`--before`: a date (midnight UTC) or an RFC 3339 time; naive times are UTC."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return datetime(day.year, day.month, day.day, tzinfo=UTC)
        moment = datetime.fromisoformat(value)
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except (ValueError, OverflowError):
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise ValueError(
            f"{shown!r} is not a date or time: write e.g. 2026-01-31 or 2026-01-31T12:00:00Z"
        ) from None


# ---- verification ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Where a walk begins: the last event before the first one to check, and who vouches."""

    seq: int
    hash: str
    vouched_by: str = ""  # "" while nothing has vouched for it

    @classmethod
    def genesis(cls) -> Start:
        return cls(0, GENESIS_HASH, "the genesis hash")


def anchor_start(keys: Mapping[str, Ed25519PublicKey], anchor: Mapping[str, Any]) -> Start:
    """The start an anchor from the store gives, after checking its signature.

    Raises ValueError naming the problem when the anchor does not verify.
    """
    seq, hash_ = anchor.get("seq"), anchor.get("hash")
    if not isinstance(seq, int) or not isinstance(hash_, str):
        raise ValueError("the prune anchor has no seq and hash")
    problem = signature_problem(keys, anchor, anchor_note(seq, hash_))
    if problem is not None:
        raise ValueError(f"the prune anchor at seq {seq} does not hold: {problem}")
    return Start(seq, hash_, f"the prune anchor at seq {seq}")


@dataclass(frozen=True, slots=True)
class Break:
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class TrailReport:
    checked: int
    first_seq: int  # 0: no events
    last_seq: int
    last_hash: str
    start: Start | None
    checkpoints: int  # signatures verified
    signed_through: int  # last seq a verified checkpoint vouches for (0: none)
    broken: Break | None
    unvouched: str | None  # why the start could not be trusted, if it could not
    last_checkpoint: int = 0  # seq of the last verified checkpoint event (0: none)
    unsigned: int = 0  # events after it: no signature vouches for them yet
    unsigned_since: str | None = None  # time of the oldest of them

    @property
    def ok(self) -> bool:
        return self.broken is None and self.unvouched is None


@dataclass(frozen=True, slots=True)
class TailAllowance:
    """`--allow-unsigned-tail`: how many events, or how old, an unsigned tail may be."""

    events: int | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> TailAllowance:
        """`N` events or a duration (`90s`, `5m`, `1h`, `2d`); ValueError otherwise."""
        from controlplane.audit.settings import parse_duration

        value = text.strip()
        if value.isdigit() and value.isascii():
            return cls(events=int(value))
        try:
            moment = parse_duration(value, "--allow-unsigned-tail")
        except ValueError:
            raise ValueError(
                f"--allow-unsigned-tail takes a number of events (e.g. 100) or a duration "
                f"(e.g. 5m), not {text!r}"
            ) from None
        return cls(seconds=moment.total_seconds())

    def describe(self) -> str:
        if self.events is not None:
            return f"{self.events} events"
        return f"{self.seconds:g} seconds"


def tail_problem(
    report: TrailReport, keys: Iterable[str], allowance: TailAllowance | None, now: datetime
) -> str | None:
    """Why the trail is not vouched for by a checkpoint signed with `keys` up to its end, or None.

    A checkpoint vouches for every event up to it (and itself: its signature). Events after the
    last one are an unsigned tail: accepted only as `allowance` allows (a count, or an age of
    the oldest of them). A trail with events and no verified checkpoint is all tail.
    """
    if not report.unsigned:
        return None
    kids = ", ".join(sorted(keys)) or "none"
    if not report.last_checkpoint:
        where = (
            f"no checkpoint signed by key {kids} vouches for any of its {report.unsigned} "
            f"events (seq {report.first_seq}..{report.last_seq})"
        )
    else:
        where = (
            f"{report.unsigned} events after the checkpoint at seq {report.last_checkpoint} "
            f"(seq {report.last_checkpoint + 1}..{report.last_seq}) are not signed by key {kids}"
        )
    if allowance is not None:
        if allowance.events is not None and report.unsigned <= allowance.events:
            return None
        if allowance.seconds is not None and report.unsigned_since:
            try:
                oldest = datetime.fromisoformat(report.unsigned_since.replace("Z", "+00:00"))
            except ValueError:
                oldest = None
            if oldest is not None and (now - oldest).total_seconds() <= allowance.seconds:
                return None
        return f"{where}, more than --allow-unsigned-tail {allowance.describe()} allows"
    return (
        f"{where}; sign them (`gatehouse audit checkpoint`) or accept a recent unsigned tail "
        "with --allow-unsigned-tail N|DURATION"
    )


class TrailVerifier:
    """Walks events in order: the chain links (chain.py), every checkpoint's signature and its
    (seq, hash) against the chain, every prune record's anchor signature, and whether the
    start is vouched for.

    Start rules: the store's walk starts at genesis or at its newest prune anchor (signature
    checked first). A file's walk starts from its first event: at genesis when that is seq 1;
    otherwise from `(seq - 1, prev_hash)`, which counts only when a verified checkpoint later
    in the file is reached by the chain from it, or an `audit.prune` event in the file carries
    a verified anchor naming exactly that point. A file nothing vouches for is not verified.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey], start: Start | None = None) -> None:
        self._keys = keys
        self._start = start
        self._vouched_by = start.vouched_by if start is not None else ""
        self._prev: tuple[int, str] | None = (start.seq, start.hash) if start else None
        self._first = 0
        self._checked = 0
        self._checkpoints = 0
        self._signed_through = 0
        self._broken: Break | None = None
        self._just_signed = False
        self._last_checkpoint = 0
        self._unsigned = 0
        self._unsigned_since: str | None = None

    @property
    def broken(self) -> Break | None:
        return self._broken

    def add_stored(self, seq: int, body: str, stored_hash: str) -> bool:
        """One stored event (canonical body without hash). False once the trail is broken."""
        if self._broken is not None:
            return False
        event = _loads(body)
        prev = self._begin(seq, event or {})
        problem = sequence_problem(seq, prev[0])
        if problem is None and event is None:
            problem = "the stored body is not a JSON object"
        if problem is None and event is not None:
            raw = body.encode("utf-8")
            if canonical(event) != raw:
                problem = "the stored body is not in canonical form: it was edited"
            else:
                problem = check_content(seq, event, raw, stored_hash, prev[1])
            if problem is None:
                problem = self._special(seq, event, prev)
        return self._advance(seq, stored_hash, problem, event)

    def add_line(self, number: int, line: str) -> bool:
        """One line of an export file: the stored body plus "hash". Blank lines are skipped."""
        if self._broken is not None:
            return False
        if not line.strip():
            return True
        parsed = _parse_line(line)
        expected = self._prev[0] + 1 if self._prev is not None else 1
        if isinstance(parsed, str):
            return self._advance(expected, "", f"line {number}: {parsed}")
        seq, event, stored_hash = parsed
        prev = self._begin(seq, event)
        problem = sequence_problem(seq, prev[0])
        if problem is None:
            raw = canonical(event)
            problem = check_content(seq, event, raw, stored_hash, prev[1])
        if problem is None:
            problem = self._special(seq, event, prev)
        return self._advance(seq, stored_hash, problem, event)

    def report(self) -> TrailReport:
        prev = self._prev or (0, GENESIS_HASH)
        unvouched = None
        if self._broken is None and self._checked and not self._vouched_by:
            unvouched = (
                f"the trail starts at seq {self._first} and nothing in it vouches for that "
                f"event's prev_hash: no signed checkpoint follows it and no prune anchor names "
                f"seq {self._first - 1}. Export from seq 1 or from a checkpoint, or include a "
                "later checkpoint (`gatehouse audit checkpoint`)"
            )
        start = self._start
        if start is not None and start.vouched_by != self._vouched_by:
            start = Start(start.seq, start.hash, self._vouched_by)
        return TrailReport(
            checked=self._checked,
            first_seq=self._first,
            last_seq=prev[0],
            last_hash=prev[1],
            start=start,
            checkpoints=self._checkpoints,
            signed_through=self._signed_through,
            broken=self._broken,
            unvouched=unvouched,
            last_checkpoint=self._last_checkpoint,
            unsigned=self._unsigned,
            unsigned_since=self._unsigned_since,
        )

    # -- the walk --

    def _begin(self, seq: int, event: Mapping[str, Any]) -> tuple[int, str]:
        if self._prev is not None:
            return self._prev
        # A file: its first event says where it starts.
        if seq == 1:
            self._start = Start.genesis()
            self._vouched_by = self._start.vouched_by
        else:
            prev_hash = event.get("prev_hash")
            self._start = Start(seq - 1, prev_hash if isinstance(prev_hash, str) else "")
        self._prev = (self._start.seq, self._start.hash)
        return self._prev

    def _advance(
        self,
        seq: int,
        stored_hash: str,
        problem: str | None,
        event: Mapping[str, Any] | None = None,
    ) -> bool:
        if problem is not None:
            self._broken = Break(seq, problem)
            return False
        if not self._first:
            self._first = seq
        self._checked += 1
        self._prev = (seq, stored_hash)
        if self._just_signed:  # a verified checkpoint vouches for everything up to itself
            self._just_signed = False
            self._last_checkpoint, self._unsigned, self._unsigned_since = seq, 0, None
        else:
            self._unsigned += 1
            if self._unsigned == 1:
                moment = event.get("time") if event is not None else None
                self._unsigned_since = moment if isinstance(moment, str) else None
        return True

    def _special(self, seq: int, event: Mapping[str, Any], prev: tuple[int, str]) -> str | None:
        kind = event.get("type")
        if kind == CHECKPOINT_TYPE:
            return self._checkpoint(seq, event.get("checkpoint"), prev)
        if kind == PRUNE_TYPE:
            prune = event.get("prune")
            return self._anchor(prune.get("anchor") if isinstance(prune, dict) else None)
        return None

    def _checkpoint(self, seq: int, checkpoint: Any, prev: tuple[int, str]) -> str | None:
        if not isinstance(checkpoint, dict):
            return "the checkpoint event carries no checkpoint"
        vouched = (checkpoint.get("seq"), checkpoint.get("hash"))
        if vouched != prev:
            return (
                f"the checkpoint vouches for seq {vouched[0]!r} with hash {vouched[1]!r}, but the "
                f"event before it is seq {prev[0]} with hash {prev[1]}"
            )
        problem = signature_problem(self._keys, checkpoint, checkpoint_note(*prev))
        if problem is not None:
            return f"the checkpoint does not hold: {problem}"
        self._checkpoints += 1
        self._signed_through = prev[0]
        self._just_signed = True
        if not self._vouched_by:
            self._vouched_by = f"the checkpoint at seq {seq}"
        return None

    def _anchor(self, anchor: Any) -> str | None:
        if not isinstance(anchor, dict):
            return "the prune record carries no anchor"
        seq, hash_ = anchor.get("seq"), anchor.get("hash")
        if not isinstance(seq, int) or not isinstance(hash_, str):
            return "the prune record's anchor has no seq and hash"
        problem = signature_problem(self._keys, anchor, anchor_note(seq, hash_))
        if problem is not None:
            return f"the prune anchor for seq {seq} does not hold: {problem}"
        start = self._start
        if start is not None and seq == start.seq:
            if hash_ != start.hash:
                return (
                    f"the prune anchor vouches for seq {seq} with hash {hash_}, but the trail "
                    f"starts from hash {start.hash}"
                )
            if not self._vouched_by:
                self._vouched_by = f"the prune anchor at seq {seq}"
        return None


def _loads(body: str) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _parse_line(line: str) -> tuple[int, dict[str, Any], str] | str:
    """(seq, body without hash, hash) of an export line, or what is wrong with it."""
    event = _loads(line)
    if event is None:
        return "not a JSON object"
    stored_hash = event.pop("hash", None)
    seq = event.get("seq")
    if not isinstance(stored_hash, str) or not isinstance(seq, int) or isinstance(seq, bool):
        return "not an exported event (it needs an integer seq and a hash)"
    return seq, event, stored_hash
