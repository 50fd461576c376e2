"""Checking the store against a witness: each signed checkpoint also left the store (to a file
or a URL the control plane pushes to), so a store rewound by someone who can write to it (newest
events deleted, head moved back) is caught by `audit verify --witness`. Pure: the control
plane's publisher (controlplane.audit.witness) writes what `witness_line` gives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

WITNESS_TYPE = "gatehouse.audit.checkpoint"


def witness_line(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What a witness keeps of a checkpoint: enough to check the store and its signature."""
    return {
        "type": WITNESS_TYPE,
        "event_seq": checkpoint["event_seq"],
        "seq": checkpoint["seq"],
        "hash": checkpoint["hash"],
        "key_id": checkpoint["key_id"],
        "signature": checkpoint["signature"],
        "time": checkpoint.get("time", ""),
    }


@dataclass(frozen=True, slots=True)
class WitnessEntry:
    line: int
    event_seq: int
    seq: int
    hash: str
    document: dict[str, Any]


def read_witness(lines: Iterable[str]) -> list[WitnessEntry]:
    """The checkpoints of a witness file; ValueError naming the first line that is not one."""
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError:
            raise ValueError(f"witness line {number} is not JSON") from None
        if not isinstance(document, dict):
            raise ValueError(f"witness line {number} is not a JSON object")
        event_seq, seq, hash_ = (document.get(k) for k in ("event_seq", "seq", "hash"))
        if (
            not isinstance(event_seq, int)
            or not isinstance(seq, int)
            or not isinstance(hash_, str)
            or isinstance(event_seq, bool)
        ):
            raise ValueError(f"witness line {number} is not a checkpoint (event_seq, seq, hash)")
        entries.append(WitnessEntry(number, event_seq, seq, hash_, document))
    return entries


@dataclass(frozen=True, slots=True)
class WitnessReport:
    witnessed: int  # checkpoints in the witness
    matched: int  # found in the store, identical
    pruned: int  # before the store's start: no longer checkable
    newest: int  # event_seq of the newest witnessed checkpoint (0: none)
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_witness(
    entries: Iterable[WitnessEntry],
    *,
    start_seq: int,
    head_seq: int,
    stored: Mapping[int, Mapping[str, Any] | None],
    signature_problem: Any = None,
) -> WitnessReport:
    """Compare the store with what a witness saw.

    `stored` maps each witnessed event_seq that the store holds to that event's `checkpoint`
    object (None when the event there is not a checkpoint). Every witnessed checkpoint after
    the store's start must be there, identical; and the head must not be behind the newest one.
    `signature_problem(document)`, when given, says why a witnessed signature does not hold.
    """
    entries = list(entries)
    matched = pruned = 0
    newest = max((e.event_seq for e in entries), default=0)
    problem: str | None = None
    if newest > head_seq:
        witnessed = next(e for e in entries if e.event_seq == newest)
        problem = (
            f"the store ends at seq {head_seq}, but the witness holds a checkpoint at seq "
            f"{newest} (vouching for seq {witnessed.seq}, time "
            f"{witnessed.document.get('time') or 'unknown'}): events after seq {head_seq} "
            "were removed and the chain head rewound"
        )
    for entry in entries:
        if problem is not None:
            break
        if signature_problem is not None:
            why = signature_problem(entry.document)
            if why is not None:
                problem = f"witness line {entry.line} (seq {entry.event_seq}): {why}"
                break
        if entry.event_seq <= start_seq:
            pruned += 1
            continue
        found = stored.get(entry.event_seq)
        if found is None:
            problem = (
                f"the witness holds a checkpoint at seq {entry.event_seq}, but the store's "
                f"event {entry.event_seq} is not that checkpoint: the trail was rewritten"
            )
        elif (found.get("seq"), found.get("hash")) != (entry.seq, entry.hash):
            problem = (
                f"the checkpoint at seq {entry.event_seq} vouches for seq {found.get('seq')} "
                f"hash {found.get('hash')} in the store, but for seq {entry.seq} hash "
                f"{entry.hash} in the witness: the trail was rewritten"
            )
        else:
            matched += 1
    return WitnessReport(len(entries), matched, pruned, newest, problem)
