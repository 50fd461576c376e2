"""Appending to the chain: each draft gets the next seq, its link and its signed checkpoint,
and its row goes in, inside a write transaction that holds the chain-head lock.

The writer (writer.py) calls `append_on` on its own driver connection, once per group commit;
`append_events` does the same inside a caller's ORM session (a credential stored with its
event, a prune record). Both serialise on the head row, so seq is dense across replicas.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import Dialect
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlmodel import Session

from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.errors import AuditUnavailable, InvalidEvent
from controlplane.audit.events import Draft, draft
from controlplane.store.models import AnchorRow, ChainHeadRow, EventRow
from trail.canonical import canonical
from trail.chain import link_hash
from trail.signatures import CHECKPOINT_TYPE, keyring
from trail.verify import anchor_start

EVENTS = EventRow.__table__  # type: ignore[attr-defined]
HEAD = ChainHeadRow.__table__  # type: ignore[attr-defined]
ANCHORS = AnchorRow.__table__  # type: ignore[attr-defined]

_APPENDED = "gatehouse.appended"  # Session.info: events `append_events` added in it


def appended_in(session: Session) -> int:
    """Events `append_events` appended in `session` (what `transact` counts)."""
    return int(session.info.get(_APPENDED, 0))


def append_events(
    session: Session,
    drafts: Sequence[Draft],
    *,
    signer: SigningKey | None = None,
    checkpoint_every: int = 0,
) -> list[int]:
    """Give each draft the next seq and its link in the chain, and insert it.

    The head row is locked (`FOR UPDATE` on PostgreSQL, the write lock on SQLite) for the
    whole transaction, so seq values become visible in commit order with no gaps. A draft of
    type `audit.checkpoint` gets its signed `checkpoint` here, from the chain as it stands
    before it; with `signer` and `checkpoint_every`, one is added when the batch takes seq past
    a multiple of `checkpoint_every` (decided from the locked head, so replicas agree). Returns
    the seqs of `drafts`.
    """
    connection = session.connection()
    cursor = connection.connection.cursor()  # the driver's, inside the session's transaction
    try:
        outcome = append_on(cursor, connection.dialect, drafts, signer, checkpoint_every)
    finally:
        cursor.close()
    session.info[_APPENDED] = appended_in(session) + outcome.appended
    seqs = []
    for seq in outcome.results:
        if isinstance(seq, InvalidEvent):
            raise seq
        seqs.append(seq)
    return seqs


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one append did: per draft its seq or why it was refused, and the checkpoints."""

    results: list[int | InvalidEvent]
    checkpoints: list[dict[str, Any]]
    appended: int
    ends_signed: bool  # the last event appended is a checkpoint
    durable: bool = True  # its commit waited for the disk (the writer sets it)
    head: tuple[int, str] | None = None  # the chain head it left (None: it appended nothing)
    #: The last event it appended, (seq, hash), continuous with the floor or not (None: none).
    tail: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class _Sql:
    """The append's three statements in the driver's own placeholders, and how `time` is bound.

    Written out once per dialect and run on the driver's cursor: building, caching and binding
    Core constructs cost more per group commit than the commit itself, and per-row parameter
    processing was a fifth of the writer's time at large batches. `time` is bound as the
    column type would bind it (`_bind_time`), so it is stored exactly as before.
    """

    head: str
    insert: str
    move: str
    hash_at: str  # the hash of one stored event, by seq
    anchor_from: str  # the newest prune anchor at or past a seq
    bind_time: Callable[[Any], Any] | None
    copy: str | None  # PostgreSQL: the rows go in with COPY (see `_insert`)


@functools.lru_cache(maxsize=32)
def _sql(dialect: Dialect) -> _Sql:
    if dialect.paramstyle == "qmark":
        mark = "?"
    elif dialect.paramstyle in ("format", "pyformat"):
        mark = "%s"
    else:  # pragma: no cover - only sqlite3 and psycopg are supported (store_url)
        raise RuntimeError(f"unsupported paramstyle {dialect.paramstyle!r}")
    lock = "" if dialect.name == "sqlite" else " FOR UPDATE"  # SQLite: BEGIN IMMEDIATE locks
    columns = ("seq", "id", "time", "type", "session_id", "body", "hash")
    time_type = EVENTS.c.time.type
    postgres = dialect.name == "postgresql"
    return _Sql(
        head=f"SELECT seq, hash FROM {HEAD.name} WHERE id = 1{lock}",
        insert=f"INSERT INTO {EVENTS.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join([mark] * len(columns))})",
        move=f"UPDATE {HEAD.name} SET seq = {mark}, hash = {mark} WHERE id = 1",
        hash_at=f"SELECT hash FROM {EVENTS.name} WHERE seq = {mark}",
        anchor_from=f"SELECT seq, hash, key_id, signature FROM {ANCHORS.name} "
        f"WHERE seq >= {mark} ORDER BY seq DESC LIMIT 1",
        bind_time=_bind_time(time_type.dialect_impl(dialect).bind_processor(dialect), dialect),
        copy=f"COPY {EVENTS.name} ({', '.join(columns)}) FROM STDIN" if postgres else None,
    )


def _bind_time(
    processor: Callable[[Any], Any] | None, dialect: Dialect
) -> Callable[[Any], Any] | None:
    """On SQLite, `sqlite_time` instead of the column's two bind processors (a tenth of
    the append's time per event), once it is seen to write the same text."""
    if dialect.name != "sqlite" or processor is None:
        return processor
    probe = datetime(987, 6, 5, 4, 3, 2, 0, tzinfo=timezone(timedelta(hours=-7)))
    if all(sqlite_time(m) == processor(m) for m in (probe, probe.replace(microsecond=10))):
        return sqlite_time
    return processor  # pragma: no cover - SQLAlchemy changed how it stores DATETIME


def sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy stores on SQLite for an aware `UTCDateTime`: the UTC moment as
    `YYYY-MM-DD HH:MM:SS.ffffff`. A naive one is refused, as the column type refuses it."""
    if moment.tzinfo is not UTC:  # drafts are made in UTC: this is the rare case
        if moment.utcoffset() is None:
            raise ValueError("an audit event's time must be aware")
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]


def append_on(
    cursor: DBAPICursor,
    dialect: Dialect,
    drafts: Sequence[Draft],
    signer: SigningKey | None,
    checkpoint_every: int,
    floor: tuple[int, str] | None = None,
    first: Callable[[tuple[int, str]], Sequence[Draft]] | None = None,
) -> Outcome:
    """`append_events` on a driver cursor inside a write transaction (the writer's path).

    `floor`, the head this process last committed, is checked first (`_check_floor`).
    `first`, given the head as read under its lock, returns events to append ahead of
    `drafts` (the writer's relaxed commits the store lost); their results come first.
    """
    sql = _sql(dialect)
    cursor.execute(sql.head)
    head = cursor.fetchone()
    if head is None:
        raise RuntimeError("the audit chain head row is missing: the store is not migrated")
    head_seq, head_hash = head
    if first is not None:
        ahead = first((head_seq, head_hash))
        if ahead:
            drafts = [*ahead, *drafts]
    if floor is not None:
        signs = any(item.type == CHECKPOINT_TYPE for item in drafts) or (
            checkpoint_every > 0
            and (head_seq + len(drafts)) // checkpoint_every > head_seq // checkpoint_every
        )
        # A head ahead of the floor (another replica's events) is vouched for only by a check.
        continuous = _check_floor(cursor, sql, floor, (head_seq, head_hash), signs, signer)
    else:
        continuous = True
    seq, prev = head_seq, head_hash
    rows: list[tuple[object, ...]] = []
    results: list[int | InvalidEvent] = []
    checkpoints: list[dict[str, Any]] = []
    last_type = ""
    for item in drafts:
        try:
            seq, prev = _append(rows, item, seq, prev, signer, sql.bind_time, checkpoints)
        except InvalidEvent as exc:
            results.append(exc)  # only this event fails; seq and the chain skip it
            continue
        results.append(seq)
        last_type = item.type
    every = checkpoint_every
    if (
        signer is not None
        and every > 0
        and rows
        and last_type != CHECKPOINT_TYPE
        and seq // every > head_seq // every
    ):
        interval = draft(CHECKPOINT_TYPE, reason="interval")
        seq, prev = _append(rows, interval, seq, prev, signer, sql.bind_time, checkpoints)
        last_type = CHECKPOINT_TYPE
    if rows:
        _insert(cursor, sql, rows)
        cursor.execute(sql.move, (seq, prev))
    return Outcome(
        results,
        checkpoints,
        len(rows),
        last_type == CHECKPOINT_TYPE,
        head=(seq, prev) if rows and continuous else None,
        tail=(seq, prev) if rows else None,
    )


def stored_hash(cursor: DBAPICursor, dialect: Dialect, seq: int) -> str | None:
    """The hash of the event stored at `seq`, or None when there is none."""
    cursor.execute(_sql(dialect).hash_at, (seq,))
    row = cursor.fetchone()
    return None if row is None else str(row[0])


def _check_floor(
    cursor: DBAPICursor,
    sql: _Sql,
    floor: tuple[int, str],
    head: tuple[int, str],
    signs: bool,
    signer: SigningKey | None,
) -> bool:
    """Refuse to extend, and above all to sign, a chain whose head moved back.

    `floor` is a head this process committed. The head only moves forward (other replicas
    append too), so a head behind it, or at it with another hash, was rewound by someone who
    can write to the store; the key would otherwise sign the rewritten chain. A head ahead of
    it is checked before a checkpoint is signed: the event at `floor` must still have its hash
    (one lookup), or be gone under a prune anchor at or past it that `signer` signed (only a
    prune removes events; a prefix deleted by hand leaves none). Returns whether
    the head continues from `floor` as far as this process can tell (at it, or checked), i.e.
    whether the head this append leaves may become the new floor.
    """
    seq, hash_ = floor
    if head == floor:
        return True
    moved = head[0] <= seq
    if not moved and signs:
        cursor.execute(sql.hash_at, (seq,))
        row = cursor.fetchone()
        moved = row[0] != hash_ if row is not None else not _pruned_from(cursor, sql, seq, signer)
    if moved:
        raise AuditUnavailable(
            f"the audit chain head is at seq {head[0]}, but this control plane committed (or "
            f"its witness saw) seq {seq} with hash {hash_[:16]}…, which the store no longer "
            "holds: the trail was rewound or rewritten in the store; nothing is appended or "
            "signed on top of it"
        )
    return signs


def _pruned_from(cursor: DBAPICursor, sql: _Sql, seq: int, signer: SigningKey | None) -> bool:
    """Whether a prune anchor at or past `seq` holds: its signature is `signer`'s."""
    cursor.execute(sql.anchor_from, (seq,))
    anchor = cursor.fetchone()
    if anchor is None or signer is None:
        return False
    document = dict(zip(("seq", "hash", "key_id", "signature"), anchor, strict=True))
    try:
        anchor_start(keyring([signer.public]), document)
    except ValueError:
        return False
    return True


def _insert(cursor: DBAPICursor, sql: _Sql, rows: list[tuple[object, ...]]) -> None:
    """Insert the batch's rows: executemany on SQLite (one prepared statement, in C), COPY on
    PostgreSQL, where psycopg's pipelined executemany cost ~30 µs a row in Python against
    ~20 µs for COPY's rows (same triggers and constraints; one statement, one round trip)."""
    if sql.copy is None:
        cursor.executemany(sql.insert, rows)
        return
    import psycopg  # only with a PostgreSQL store

    if not isinstance(cursor, psycopg.Cursor):  # pragma: no cover - psycopg 3 is the driver
        raise RuntimeError(f"unexpected PostgreSQL cursor {type(cursor).__name__}")
    with cursor.copy(sql.copy) as copy:
        for row in rows:
            copy.write_row(row)


def _append(
    rows: list[tuple[object, ...]],
    item: Draft,
    seq: int,
    prev: str,
    signer: SigningKey | None,
    bind_time: Callable[[Any], Any] | None,
    checkpoints: list[dict[str, Any]],
) -> tuple[int, str]:
    """Link one draft after (seq, prev) and add its row; InvalidEvent leaves both unchanged."""
    body = dict(item.body)
    if item.type == CHECKPOINT_TYPE:
        # Only the writer says what a checkpoint vouches for: the event just before it.
        if signer is None:
            raise AuditUnavailable("no audit signing key: a checkpoint cannot be signed")
        body["checkpoint"] = signer.checkpoint(seq, prev)
    body["seq"] = seq + 1
    body["prev_hash"] = prev
    try:
        raw = canonical(body)
    except Exception as exc:  # rfc8785's errors, TypeError, ValueError, UnicodeEncodeError
        detail = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")[:200]
        raise InvalidEvent(
            f"the {item.type} event has no canonical JSON form and was not recorded: {detail}"
        ) from None
    seq += 1
    prev = link_hash(prev, raw)
    stamp = item.time if bind_time is None else bind_time(item.time)
    rows.append((seq, body["id"], stamp, item.type, item.session_id, raw.decode(), prev))
    if item.type == CHECKPOINT_TYPE:
        checkpoints.append(dict(body["checkpoint"], event_seq=seq, time=body.get("time", "")))
    return seq, prev
