"""The one verifier of a trail, from the store or from an export file: the chain, every
checkpoint's signature and what it vouches for, every prune anchor, and where the walk may
start. `gatehouse audit verify` runs it on what it pulled, trusting nothing the server says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from trail.canonical import canonical, loads
from trail.chain import (
    GENESIS_HASH,
    check_content,
    export_line,
    sequence_problem,
    unescaped_export_line,
)
from trail.signatures import (
    CHECKPOINT_TYPE,
    PRUNE_TYPE,
    anchor_note,
    checkpoint_note,
    signature_problem,
)
from trail.times import parse_duration

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


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
            if oldest is not None and oldest.tzinfo is None:
                oldest = None  # the trail writes UTC with "Z": a naive time is not its own
            # The time is the tail's own and unsigned: one ahead of this clock by more than
            # the allowance (skew) is no evidence of a recent tail, or a forged tail dated
            # years ahead would pass every later verify.
            age = (now - oldest).total_seconds() if oldest is not None else None
            if age is not None and -allowance.seconds <= age <= allowance.seconds:
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
            if _canonical(event) != raw:
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
            raw = _canonical(event)
            if raw is None:
                problem = f"line {number} has no canonical form: it was edited"
            else:
                problem = check_content(seq, event, raw, stored_hash, prev[1])
            # The line must be the export of exactly the bytes its hash covers: one that differs
            # (a duplicate key, spacing, an escape) could show a SIEM's parser other values than
            # the ones verified here.
            body = raw.decode() if raw is not None else ""
            exported = {export_line(body, stored_hash), unescaped_export_line(body, stored_hash)}
            if problem is None and line.rstrip("\r\n") not in exported:
                problem = (
                    f"line {number} is not the export of its event byte for byte (duplicate "
                    "keys, spacing, escapes or key order differ): it was edited"
                )
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
    """The JSON object `body` holds, as RFC 8785 reads it (trail.canonical.loads), or None: also
    for NaN or Infinity (never canonical) and for nesting too deep to read."""
    try:
        value = loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _canonical(event: Mapping[str, Any]) -> bytes | None:
    """The canonical bytes of `event`, or None when it has none (an integer beyond 2**53, a
    float that is not finite, a lone surrogate, nesting too deep): such an event was edited."""
    try:
        return canonical(event)
    except (ValueError, TypeError, RecursionError, UnicodeError):
        return None


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
