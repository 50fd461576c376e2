"""Where a starting writer resumes: not behind what its file witnesses saw (ADR 0012).

A running writer refuses to extend or sign a chain whose head moved back behind a head it
committed (append._check_floor), but a restart forgot that head: the newest events could be
dropped and others written in their place while the control plane was down, and the next
checkpoint signed the rewrite. The newest checkpoint in a file witness is such a head, kept
outside the store. At start the store must still hold it, unchanged, or the control plane does
not start; the writer then continues from it as from a head it committed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from sqlmodel import Session, col, select

from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.retention import anchor_document
from controlplane.errors import DataLoss
from controlplane.store.database import Database
from controlplane.store.models import AnchorRow, ChainHeadRow, EventRow
from trail.signatures import CHECKPOINT_TYPE, keyring
from trail.verify import anchor_start
from trail.witness import WitnessEntry, check_witness, read_witness

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)

TAIL_BYTES = 64 * 1024
"""How much of a witness file's end is read: a few hundred checkpoints, however old the file."""


def newest_in_file(path: str) -> WitnessEntry | None:
    """The newest checkpoint among a file witness's last complete lines (None: no file, or no
    checkpoint there). A line a crash cut short, or one that is not a checkpoint, is passed
    over: `audit verify --witness` reports those."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(max(0, size - TAIL_BYTES))
            tail = handle.read()
    except FileNotFoundError:
        return None
    lines = tail.split(b"\n")[:-1]  # what follows the last newline was not fully written
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first may be the end of a line
    entries: list[WitnessEntry] = []
    for line in lines:
        try:
            entries.extend(read_witness([line.decode("utf-8")]))
        except (ValueError, UnicodeDecodeError):
            continue
    return max(entries, key=lambda e: e.event_seq, default=None)


def _problem(
    session: Session, entry: WitnessEntry, keys: Mapping[str, Ed25519PublicKey]
) -> str | None:
    """What the store holds against the witnessed checkpoint (None: it holds it unchanged).

    Where the stored trail starts is its newest prune anchor, signed by `keys`, as for `audit
    verify`; not its first event: deleting every event through the checkpoint is no prune. The
    anchor is read last: a prune another replica commits meanwhile is then seen."""
    head = session.get(ChainHeadRow, 1)
    head_seq = head.seq if head is not None else 0
    stored: dict[int, dict[str, object] | None] = {}
    row = session.get(EventRow, entry.event_seq)
    if row is not None:
        try:
            body = json.loads(row.body)
        except ValueError:  # written by hand: not the checkpoint
            body = None
        if isinstance(body, dict) and body.get("type") == CHECKPOINT_TYPE:
            found = body.get("checkpoint")
        else:
            found = None
        stored[entry.event_seq] = found if isinstance(found, dict) else None
    vouched = session.get(EventRow, entry.seq)
    query = select(AnchorRow).order_by(col(AnchorRow.seq).desc()).limit(1)
    anchor = session.exec(query).first()
    start_seq = anchor.seq if anchor is not None else 0
    if anchor is not None and start_seq >= entry.event_seq:  # the anchor says it was pruned
        try:
            anchor_start(keys, anchor_document(anchor))
        except ValueError as exc:
            return str(exc)
    report = check_witness([entry], start_seq=start_seq, head_seq=head_seq, stored=stored)
    if report.problem is not None:
        return report.problem
    if entry.seq > start_seq and (vouched is None or vouched.hash != entry.hash):
        return (
            f"the checkpoint at seq {entry.event_seq} vouches for hash {entry.hash} at seq "
            f"{entry.seq}, but the store's event {entry.seq} has "
            f"{'been deleted' if vouched is None else f'hash {vouched.hash}'}: the trail was "
            "rewritten"
        )
    return None


async def witnessed_floor(
    db: Database, targets: Iterable[str], signer: SigningKey
) -> tuple[int, str] | None:
    """The (seq, hash) the newest checkpoint in the file witnesses vouches for, once the store
    is found to hold it; None without a file witness that holds one. Raises DataLoss when the
    store does not: started on it, this control plane would sign the rewound chain. `signer`'s
    key must have signed a prune anchor that accounts for a checkpoint no longer stored."""
    newest: tuple[str, WitnessEntry] | None = None
    for target in targets:
        if target.startswith(("http://", "https://")):
            continue  # a URL is written to, not read back
        entry = newest_in_file(target)
        if entry is not None and (newest is None or entry.event_seq > newest[1].event_seq):
            newest = (target, entry)
    if newest is None:
        return None
    target, entry = newest
    keys = keyring([signer.public])
    problem = await db.read(lambda session: _problem(session, entry, keys))
    if problem is not None:
        raise DataLoss(
            f"the audit store does not hold what witness {target} saw: {problem}. Not "
            "starting: new events would extend, and checkpoints sign, the rewritten trail. "
            "Find out who changed the store; if it was restored from a backup on purpose, "
            "keep that witness file as evidence and start with a new one"
        )
    log.info(
        "the audit store holds the newest checkpoint witness %s saw (seq %d): resuming above it",
        target,
        entry.event_seq,
    )
    return entry.seq, entry.hash
