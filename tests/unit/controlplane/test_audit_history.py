"""History cannot be erased or forged: timed checkpoints, witnesses outside the store, how far
signatures reach, and a prune that keeps recent history and needs a second admin."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from controlplane.audit import resume, retention
from controlplane.audit import witness as publishing
from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.events import draft
from controlplane.audit.retention import (
    PruneRequestRecord,
    SelfApproval,
    approve_prune,
    request_prune,
)
from controlplane.audit.witness import WitnessPublisher
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.auth.identity import ADMIN, Identity
from controlplane.errors import DataLoss, FailedPrecondition, InvalidArgument, NotFound
from controlplane.store.database import Database
from tests.tampering import rewind, tampering
from trail import witness
from trail.canonical import canonical
from trail.chain import GENESIS_HASH, export_line, link_hash
from trail.signatures import (
    CHECKPOINT_TYPE,
    PRUNE_TYPE,
    checkpoint_note,
    keyring,
    signature_problem,
)
from trail.verify import TailAllowance, TrailReport, TrailVerifier, tail_problem
from trail.witness import check_witness, read_witness

ALICE = Identity("alice", role=ADMIN)
BOB = Identity("bob", role=ADMIN)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


def stored(db_path: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(s), str(b), str(h)) for s, b, h in rows]


def kinds(db_path: Path) -> list[str]:
    return [json.loads(body)["type"] for _, body, _ in stored(db_path)]


# ---- checkpoints every T seconds -----------------------------------------------------------


async def test_a_checkpoint_is_signed_after_t_seconds_with_new_events_only(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    writer = AuditWriter(db, checkpoint_every=1000, checkpoint_interval=0.2)
    writer.start(key)
    try:
        for n in range(3):
            await writer.commit(draft("test.event", n=n))
        await asyncio.sleep(0.6)
        assert kinds(db_path) == ["test.event"] * 3 + [CHECKPOINT_TYPE]
        await asyncio.sleep(0.5)  # idle: no checkpoint of a checkpoint
        assert len(stored(db_path)) == 4
        await writer.commit(draft("test.event", n=4))
        await asyncio.sleep(0.5)
        assert kinds(db_path)[-2:] == ["test.event", CHECKPOINT_TYPE]
    finally:
        await writer.close()


async def test_events_an_earlier_process_left_unsigned_are_signed_after_a_restart(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    first = AuditWriter(db)
    first.start(key)
    await first.commit(draft("test.event", n=1))
    await first.close()
    second = AuditWriter(db, checkpoint_interval=0.2)
    second.start(key)
    try:
        await asyncio.sleep(0.6)
    finally:
        await second.close()
    assert kinds(db_path) == ["test.event", CHECKPOINT_TYPE]


# ---- witnesses -----------------------------------------------------------------------------


async def witnessed_run(db: Database, key: SigningKey, path: Path) -> None:
    """A writer with a file witness: 1-5, checkpoint 6, 7-10, checkpoint 11, 12-14; stopped."""
    publisher = WitnessPublisher([str(path)])
    writer = AuditWriter(db, checkpoint_every=5)
    writer.add_checkpoint_sink(publisher.offer)
    publisher.start()
    writer.start(key)
    try:
        for n in range(12):
            await writer.commit(draft("test.event", n=n))
        await publisher.drain()
    finally:
        await writer.close()
        await publisher.close()


async def test_a_file_witness_catches_a_store_rewound_after_its_checkpoint(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path
) -> None:
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    entries = read_witness(path.read_text().splitlines())
    assert [e.event_seq for e in entries] == [6, 11]
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    keys = keyring([key.public])

    def checked(start: int = 0) -> witness.WitnessReport:
        rows = stored(db_path)
        found = {
            seq: json.loads(body).get("checkpoint")
            for seq, body, _ in rows
            if seq in {e.event_seq for e in entries}
        }
        return check_witness(
            entries,
            start_seq=start,
            head_seq=rows[-1][0],
            stored=found,
            signature_problem=lambda d: signature_problem(
                keys, d, checkpoint_note(d["seq"], d["hash"])
            ),
        )

    assert checked().ok and checked().matched == 2
    # A witness line whose signature does not hold is named, not trusted.
    forged = dict(entries[0].document, signature=entries[1].document["signature"])
    bad = check_witness(
        [witness.WitnessEntry(1, 6, forged["seq"], forged["hash"], forged)],
        start_seq=0,
        head_seq=14,
        stored={},
        signature_problem=lambda d: signature_problem(
            keys, d, checkpoint_note(d["seq"], d["hash"])
        ),
    )
    assert bad.problem is not None and "witness line 1 (seq 6)" in bad.problem
    assert "forged or altered" in bad.problem
    # A pruned witnessed checkpoint is not held against the store.
    assert (checked(start=6).pruned, checked(start=6).matched) == (1, 1)
    rewind(db_path, 9)  # drop seq 10..14, the newest checkpoint with them
    report = checked()
    assert not report.ok
    assert report.problem is not None
    assert "the store ends at seq 9" in report.problem
    assert "checkpoint at seq 11" in report.problem
    assert "rewound" in report.problem


def forge_after(db_path: Path, keep: int, statements: list[str]) -> None:
    """Rewind to `keep` as `rewind` does, then append forged events chained from it and move
    the head to the last: a rewritten history the chain alone cannot tell from the real one."""
    rewind(db_path, keep)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        (prev,) = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (keep,)).fetchone()
        conn.execute("BEGIN")
        seq = keep
        for n, statement in enumerate(statements):
            seq += 1
            event = {"id": f"forged-{n}", "time": "2026-01-01T00:00:00.000000Z"}
            event |= {"type": "test.event", "seq": seq, "prev_hash": prev, "n": statement}
            raw = canonical(event)
            prev = link_hash(prev, raw)
            conn.execute(
                "INSERT INTO audit_events (seq, id, time, type, body, hash) "
                "VALUES (?, ?, '2026-01-01 00:00:00.000000', 'test.event', ?, ?)",
                (seq, f"forged-{n}", raw.decode(), prev),
            )
        conn.execute("UPDATE audit_chain_head SET seq = ?, hash = ? WHERE id = 1", (seq, prev))
        conn.execute("COMMIT")
    finally:
        conn.close()


@pytest.mark.parametrize("forged", [0, 3, 8])
async def test_a_running_writer_refuses_to_extend_or_sign_a_rewound_chain(
    db: Database, db_path: Path, key: SigningKey, forged: int
) -> None:
    """Someone who can write to the store but holds no key rewinds it (and maybe writes other
    events in place of the dropped ones): the control plane must not sign what they wrote."""
    writer = AuditWriter(db, checkpoint_every=5)
    writer.start(key)
    try:
        for n in range(12):  # 1-5, checkpoint 6, 7-10, checkpoint 11, 12-14
            await writer.commit(draft("test.event", n=n))
        forge_after(db_path, 9, [f"forged {i}" for i in range(forged)])
        before = stored(db_path)
        with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
            await writer.checkpoint(ALICE)
        assert stored(db_path) == before  # nothing signed
        if 9 + forged <= 14:  # the head is not ahead of what this process committed
            with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
                await writer.commit(draft("test.event", n=99))
            assert stored(db_path) == before  # nothing appended
        else:  # it may be another replica's: events go on, but no signature covers them
            await writer.commit(draft("test.event", n=99))
            with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
                await writer.checkpoint(ALICE)
            assert CHECKPOINT_TYPE not in kinds(db_path)[9:]
    finally:
        await writer.close()


@pytest.mark.parametrize("pruned", [False, True])
async def test_a_running_writer_signs_past_a_floor_only_a_signed_prune_removed(
    db: Database, db_path: Path, key: SigningKey, pruned: bool
) -> None:
    """The event at the floor gone is a prune only with an anchor at or past it: deleting the
    trail through the floor (events forged after it) must not get the rewrite signed, and then
    witnessed as if it were the trail."""
    writer = AuditWriter(db, checkpoint_every=5)
    writer.start(key)
    try:
        for n in range(12):  # 1-5, checkpoint 6, 7-10, checkpoint 11, 12-14: the floor is 14
            await writer.commit(draft("test.event", n=n))
        if pruned:
            now, zero = datetime.now(UTC), timedelta(0)
            await writer.transact(lambda s: retention.prune(s, now, ALICE, key, min_retention=zero))
            await writer.checkpoint(ALICE)
            assert kinds(db_path) == [PRUNE_TYPE, CHECKPOINT_TYPE]
            return
        forge_after(db_path, 14, ["forged 0", "forged 1"])
        with tampering(db_path) as conn:
            conn.execute("DELETE FROM audit_events WHERE seq <= 14")
        before = stored(db_path)
        with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
            await writer.checkpoint(ALICE)
        assert stored(db_path) == before
    finally:
        await writer.close()


@pytest.mark.parametrize("forged", [0, 3, 8])
async def test_a_restarted_writer_does_not_start_on_a_chain_rewound_behind_its_witness(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path, forged: int
) -> None:
    """The running writer's floor is gone after a restart: the rewrite is made while the
    control plane is down. The newest witnessed checkpoint (seq 11) takes its place."""
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    assert await resume.witnessed_floor(db, [str(path)], key) == (10, stored(db_path)[9][2])
    forge_after(db_path, 9, [f"forged {i}" for i in range(forged)])
    with pytest.raises(DataLoss) as refused:
        await resume.witnessed_floor(db, ["https://witness.example/x", str(path)], key)
    message = str(refused.value)
    assert f"does not hold what witness {path} saw" in message
    if forged < 2:  # the head is behind the witnessed checkpoint
        assert f"the store ends at seq {9 + forged}" in message
    else:  # at seq 11 is a forged event, not the checkpoint
        assert "checkpoint at seq 11" in message and "rewritten" in message
    assert "start with a new one" in message


async def test_a_restarted_writer_does_not_start_when_what_the_checkpoint_vouches_for_changed(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path
) -> None:
    """The checkpoint row kept as it was, the event it vouches for (seq 10) rewritten."""
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    with tampering(db_path) as conn:
        conn.execute("UPDATE audit_events SET hash = ? WHERE seq = 10", ("0" * 64,))
    with pytest.raises(DataLoss, match="the store's event 10 has hash 0000"):
        await resume.witnessed_floor(db, [str(path)], key)


@pytest.mark.parametrize("body", ["not json", "[1]", '{"type": 1}'])
async def test_a_restarted_writer_names_a_witnessed_checkpoint_overwritten_with_garbage(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path, body: str
) -> None:
    """What is stored at the checkpoint's seq is read as the store's, not trusted to be JSON
    of an event: garbage there is a rewrite (DataLoss naming the witness), not a crash."""
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    with tampering(db_path) as conn:
        conn.execute("UPDATE audit_events SET body = ? WHERE seq = 11", (body,))
    with pytest.raises(DataLoss, match="checkpoint at seq 11"):
        await resume.witnessed_floor(db, [str(path)], key)


async def test_a_restarted_writer_refuses_to_sign_over_a_rewrite_its_witness_did_not_see(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path
) -> None:
    """A writer resumed above the witnessed checkpoint goes on as one that committed it: a
    rewrite made after it started (seq 10 and 11 replaced) is not signed."""
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    forge_after(db_path, 11, [])  # the checkpoint kept, 12-14 dropped: ahead of seq 10 still
    floor = await resume.witnessed_floor(db, [str(path)], key)
    assert floor == (10, stored(db_path)[9][2])
    forge_after(db_path, 9, ["forged 0", "forged 1", "forged 2"])  # 10 and 11 replaced
    writer = AuditWriter(db, checkpoint_every=5)
    writer.resume_above(floor)
    writer.start(key)
    try:
        before = stored(db_path)
        with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
            await writer.checkpoint(ALICE)
        assert stored(db_path) == before
    finally:
        await writer.close()


@pytest.mark.parametrize("anchor", [False, True])
async def test_a_restarted_writer_does_not_take_a_deleted_witnessed_checkpoint_for_a_pruned_one(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path, anchor: bool
) -> None:
    """Only a prune, which leaves an anchor signed by the key, removes a witnessed checkpoint
    from the store. Events deleted from the start through it (no anchor, or one written by
    hand) are a rewrite: the store's first event says nothing about where the trail starts."""
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    hash_ = stored(db_path)[10][2]
    with tampering(db_path) as conn:
        conn.execute("DELETE FROM audit_events WHERE seq <= 11")
        if anchor:  # written by hand: no key signed it
            conn.execute(
                "INSERT INTO audit_anchor (seq, hash, key_id, signature, first_seq, removed, "
                "pruned_at, pruned_by) VALUES (11, ?, ?, ?, 1, 11, '2026-01-01 00:00:00', 'x')",
                (hash_, key.key_id, SigningKey.generate().anchor(11, hash_)["signature"]),
            )
    expected = "prune anchor at seq 11 does not hold" if anchor else "checkpoint at seq 11"
    with pytest.raises(DataLoss, match=expected):
        await resume.witnessed_floor(db, [str(path)], key)


async def test_a_restarted_writer_resumes_above_a_witnessed_checkpoint_a_prune_removed(
    db: Database, db_path: Path, key: SigningKey, tmp_path: Path
) -> None:
    path = tmp_path / "witness.ndjson"
    await witnessed_run(db, key, path)
    vouched = stored(db_path)[9][2]
    writer = AuditWriter(db)
    writer.start(key)
    try:
        now = datetime.now(UTC)
        zero = timedelta(0)
        result = await writer.transact(
            lambda s: retention.prune(s, now, ALICE, key, min_retention=zero)
        )
    finally:
        await writer.close()
    assert result.through_seq == 14
    assert await resume.witnessed_floor(db, [str(path)], key) == (10, vouched)


def test_the_newest_witnessed_checkpoint_is_read_from_the_end_of_a_long_file(
    tmp_path: Path,
) -> None:
    """A file of years of checkpoints is not read whole; a last line a crash cut short, or a
    line that is no checkpoint, is passed over."""
    path = tmp_path / "witness.ndjson"
    line = {"type": "gatehouse.audit.checkpoint", "seq": 0, "hash": "h", "key_id": "k"}
    lines = [
        json.dumps(line | {"event_seq": n + 1, "seq": n, "hash": f"h{n}"}) for n in range(5000)
    ]
    path.write_text("\n".join(lines) + "\nnot json\n" + lines[-1][:30])
    assert path.stat().st_size > 4 * resume.TAIL_BYTES
    newest = resume.newest_in_file(str(path))
    assert newest is not None and (newest.event_seq, newest.seq, newest.hash) == (
        5000,
        4999,
        "h4999",
    )
    assert resume.newest_in_file(str(tmp_path / "none")) is None


async def test_relaxed_commits_lost_in_a_store_crash_are_not_a_rewind(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    """A relaxed commit (ADR 0026) may be lost when the store crashes: the head back at the
    last durable commit is what the store promised, and the writer goes on from it."""
    writer = AuditWriter(db, checkpoint_every=100)
    writer.start(key)
    try:
        for n in range(3):
            await writer.commit(draft("test.event", n=n))  # durable
        for n in range(2):
            await (await writer.submit(draft("db.result", ref=n)))  # relaxed
        rewind(db_path, 3)  # the crash lost the relaxed ones
        await writer.commit(draft("test.event", n=9))
        await writer.checkpoint(ALICE)
    finally:
        await writer.close()
    verifier = TrailVerifier(keyring([key.public]))
    for row in stored(db_path):
        assert verifier.add_stored(*row)
    assert verifier.report().ok and verifier.report().checkpoints == 1


async def test_the_head_moved_forward_by_another_writer_is_not_a_rewind(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    """Replicas share the store: a head ahead of this process's last commit is normal."""
    first, second = AuditWriter(db, checkpoint_every=5), AuditWriter(db, checkpoint_every=5)
    first.start(key)
    second.start(key)
    try:
        for n in range(4):
            await first.commit(draft("test.event", n=n))
            await second.commit(draft("test.event", n=n))
        await first.checkpoint(ALICE)
        await second.checkpoint(ALICE)
    finally:
        await first.close()
        await second.close()
    verifier = TrailVerifier(keyring([key.public]))
    for row in stored(db_path):
        assert verifier.add_stored(*row)
    assert verifier.report().ok


async def test_an_unreachable_url_witness_is_retried_counted_and_never_blocks(
    db: Database, db_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publishing, "ATTEMPTS", 2)
    publisher = WitnessPublisher(["http://127.0.0.1:9/witness"])
    writer = AuditWriter(db)
    writer.add_checkpoint_sink(publisher.offer)
    publisher.start()
    writer.start(key)
    try:
        await asyncio.wait_for(writer.checkpoint(ALICE), 2)  # not delayed by the witness
        await writer.commit(draft("test.event", n=1))
        await publisher.drain(timeout=5)
    finally:
        await writer.close()
        await publisher.close()
    assert (publisher.pushes, publisher.failures) == (0, 1)
    assert kinds(db_path) == [CHECKPOINT_TYPE, "test.event"]


def test_a_witness_must_be_an_absolute_path_or_an_http_url() -> None:
    for bad in ("relative.ndjson", "ftp://host/x", "file:///tmp/x", "/no/such/dir/w.ndjson"):
        with pytest.raises(InvalidArgument):
            WitnessPublisher([bad])


# ---- how far signatures reach --------------------------------------------------------------


def _hand_made(n: int) -> list[str]:
    """An export written by hand: seq 1..n, correctly chained, no signature."""
    lines, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event = {"id": f"e{seq}", "time": "2026-01-01T00:00:00.000000Z", "type": "db.query"}
        event |= {"seq": seq, "prev_hash": prev}
        raw = canonical(event)
        prev = link_hash(prev, raw)
        lines.append(export_line(raw.decode(), prev))
    return lines


def _verify(lines: list[str], key: SigningKey) -> TrailReport:
    verifier = TrailVerifier(keyring([key.public]))
    for number, line in enumerate(lines, start=1):
        assert verifier.add_line(number, line)
    return verifier.report()


def test_a_hand_made_unsigned_export_from_seq_1_is_not_vouched_for_by_the_key(
    key: SigningKey,
) -> None:
    report = _verify(_hand_made(2), key)
    assert report.ok  # the chain itself links
    assert (report.last_checkpoint, report.unsigned) == (0, 2)
    problem = tail_problem(report, [key.key_id], None, NOW)
    assert problem is not None
    assert f"no checkpoint signed by key {key.key_id} vouches for any of its 2 events" in problem
    # Only an explicit allowance accepts it, and only up to what it says.
    assert tail_problem(report, [key.key_id], TailAllowance.parse("2"), NOW) is None
    assert tail_problem(report, [key.key_id], TailAllowance.parse("1"), NOW) is not None


async def test_the_unsigned_tail_after_the_last_checkpoint_is_counted_and_aged(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    writer = AuditWriter(db)
    writer.start(key)
    try:
        for n in range(3):
            await writer.commit(draft("test.event", n=n))
        await writer.checkpoint(ALICE)
        for n in range(2):
            await writer.commit(draft("test.event", n=n))
    finally:
        await writer.close()
    verifier = TrailVerifier(keyring([key.public]))
    for row in stored(db_path):
        assert verifier.add_stored(*row)
    report = verifier.report()
    assert (report.signed_through, report.last_checkpoint, report.unsigned) == (3, 4, 2)
    now = datetime.now(UTC)
    problem = tail_problem(report, [key.key_id], None, now)
    assert problem is not None and "2 events after the checkpoint at seq 4 (seq 5..6)" in problem
    assert tail_problem(report, [key.key_id], TailAllowance.parse("5m"), now) is None
    later = now + timedelta(minutes=10)
    assert tail_problem(report, [key.key_id], TailAllowance.parse("5m"), later) is not None
    for bad in ("-1", "5 minutes", "1e3", "²"):
        with pytest.raises(ValueError, match="allow-unsigned-tail"):
            TailAllowance.parse(bad)


def test_an_unsigned_tail_dated_in_the_future_is_not_recent(key: SigningKey) -> None:
    """The age of an unsigned tail comes from its own, unsigned, `time`: a tail dated ahead
    of the verifier's clock by more than the allowance is not "recent" however long it waits
    (someone who forged it would date it years ahead to pass every later verify)."""
    report = _verify(_hand_made(2), key)  # dated 2026-01-01
    allowance = TailAllowance.parse("2m")
    year_before = datetime(2025, 1, 1, tzinfo=UTC)
    problem = tail_problem(report, [key.key_id], allowance, year_before)
    assert problem is not None and "more than --allow-unsigned-tail 120 seconds" in problem
    skew = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)  # one minute behind: clocks differ
    assert tail_problem(report, [key.key_id], allowance, skew) is None
    naive = dataclasses.replace(report, unsigned_since="2026-01-01T00:00:00")
    assert tail_problem(naive, [key.key_id], allowance, skew) is not None  # not a TypeError


# ---- prune: minimum retention and a second admin --------------------------------------------


@pytest.fixture
async def aged(db: Database, key: SigningKey) -> AsyncIterator[AuditWriter]:
    """A writer with 5 events from 100 days ago and 3 from now."""
    writer = AuditWriter(db)
    writer.start(key)
    old = datetime.now(UTC) - timedelta(days=100)
    for n in range(5):
        item = draft("test.event", n=n)
        item.time = old
        await writer.commit(item)
    for n in range(3):
        await writer.commit(draft("test.event", n=n))
    yield writer
    await writer.close()


async def test_prune_never_reaches_into_the_minimum_retention(aged: AuditWriter) -> None:
    too_recent = datetime.now(UTC) - timedelta(days=29)
    with pytest.raises(InvalidArgument, match="too recent: the minimum retention keeps"):
        await aged.transact(lambda s: request_prune(s, too_recent, ALICE))
    far_future = datetime(2099, 1, 1, tzinfo=UTC)
    with pytest.raises(InvalidArgument, match="last 30 days"):
        await aged.transact(lambda s: request_prune(s, far_future, ALICE))
    with pytest.raises(InvalidArgument, match="last 365 days"):
        longer = timedelta(days=365)
        cutoff = datetime.now(UTC) - timedelta(days=50)
        await aged.transact(lambda s: request_prune(s, cutoff, ALICE, min_retention=longer))


async def test_a_prune_keeps_every_event_after_the_first_young_one(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    """The `time` of an event is its writer's clock: a replica whose clock is far behind
    (booted without time, stepped back) dates a new event in the past. The prune removes the
    prefix that is all older than the cutoff, never up to the newest event dated before it,
    which would take the young events between with it, past the minimum retention."""
    writer = AuditWriter(db)
    writer.start(key)
    old = datetime.now(UTC) - timedelta(days=100)
    try:
        for n in range(3):
            item = draft("test.event", n=n)
            item.time = old
            await writer.commit(item)
        for n in range(3):
            await writer.commit(draft("test.event", n=n))  # seq 4..6: young
        skewed = draft("test.event", n=99)
        skewed.time = datetime(1970, 1, 1, tzinfo=UTC)  # seq 7: a clock far behind
        await writer.commit(skewed)
        cutoff = datetime.now(UTC) - timedelta(days=50)
        made = await writer.transact(lambda s: request_prune(s, cutoff, ALICE, key))
    finally:
        await writer.close()
    assert isinstance(made, PruneRequestRecord)
    assert (made.planned.first_seq, made.planned.through_seq, made.planned.removed) == (1, 3, 3)


async def test_a_prune_takes_a_second_admin_once_before_it_expires(
    aged: AuditWriter, db_path: Path, key: SigningKey
) -> None:
    cutoff = datetime.now(UTC) - timedelta(days=50)
    made = await aged.transact(lambda s: request_prune(s, cutoff, ALICE, key))
    assert isinstance(made, PruneRequestRecord)
    assert (made.planned.first_seq, made.planned.through_seq) == (1, 5)
    assert len(stored(db_path)) == 9  # nothing removed by asking
    request = json.loads(stored(db_path)[-1][1])
    assert request["type"] == "audit.prune_request" and request["id"] == made.id

    with pytest.raises(SelfApproval, match="another admin must approve it"):
        await aged.transact(lambda s: approve_prune(s, made.id, ALICE, key))
    delegated = Identity("alice", role=ADMIN, actor="robot")
    with pytest.raises(SelfApproval):
        await aged.transact(lambda s: approve_prune(s, made.id, delegated, key))
    with pytest.raises(NotFound):
        await aged.transact(lambda s: approve_prune(s, "no-such-id", BOB, key))
    assert len(stored(db_path)) == 9

    result, requester = await aged.transact(lambda s: approve_prune(s, made.id, BOB, key))
    assert (result.first_seq, result.through_seq, result.removed, requester) == (1, 5, 5, "alice")
    record = json.loads(stored(db_path)[-1][1])
    assert record["type"] == "audit.prune"
    assert record["user"]["sub"] == "bob"
    assert record["prune"] | {"anchor": None} == record["prune"] | {
        "request": made.id,
        "requested_by": "alice",
        "approved_by": "bob",
        "anchor": None,
    }
    with pytest.raises(FailedPrecondition, match="already approved"):
        await aged.transact(lambda s: approve_prune(s, made.id, Identity("carol"), key))


async def test_an_expired_prune_request_cannot_be_approved(
    aged: AuditWriter, db_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PRUNE_REQUEST_TTL", timedelta(seconds=-1))
    cutoff = datetime.now(UTC) - timedelta(days=50)
    made = await aged.transact(lambda s: request_prune(s, cutoff, ALICE, key))
    assert isinstance(made, PruneRequestRecord)
    with pytest.raises(FailedPrecondition, match="expired"):
        await aged.transact(lambda s: approve_prune(s, made.id, BOB, key))
    assert len(stored(db_path)) == 9


async def test_a_token_the_requester_minted_cannot_approve_their_request(
    aged: AuditWriter, db_path: Path, key: SigningKey
) -> None:
    change = {"action": "token.create", "token": "t1", "name": "ci", "role": "admin"}
    await aged.commit(draft("admin.change", identity=ALICE, change=change))
    cutoff = datetime.now(UTC) - timedelta(days=50)
    made = await aged.transact(lambda s: request_prune(s, cutoff, ALICE, key))
    assert isinstance(made, PruneRequestRecord)
    minted = Identity("token:ci", role=ADMIN)
    with pytest.raises(SelfApproval, match="token:ci is a token alice created"):
        await aged.transact(lambda s: approve_prune(s, made.id, minted, key))
    result, _ = await aged.transact(lambda s: approve_prune(s, made.id, BOB, key))
    assert result.removed == 5


async def test_a_token_minted_by_a_token_the_requester_minted_cannot_approve(
    aged: AuditWriter, db_path: Path, key: SigningKey
) -> None:
    """alice → token t1 → token t2: t2 acts for alice, however many tokens stand between."""
    first = {"action": "token.create", "token": "a", "name": "t1", "role": "admin"}
    await aged.commit(draft("admin.change", identity=ALICE, change=first))
    second = {"action": "token.create", "token": "b", "name": "t2", "role": "admin"}
    await aged.commit(
        draft("admin.change", identity=Identity("token:t1", role=ADMIN), change=second)
    )
    cutoff = datetime.now(UTC) - timedelta(days=50)
    made = await aged.transact(lambda s: request_prune(s, cutoff, ALICE, key))
    assert isinstance(made, PruneRequestRecord)
    with pytest.raises(SelfApproval, match="token:t2 is a token alice created"):
        await aged.transact(
            lambda s: approve_prune(s, made.id, Identity("token:t2", role=ADMIN), key)
        )
    result, _ = await aged.transact(lambda s: approve_prune(s, made.id, BOB, key))
    assert result.removed == 5


async def test_a_url_witness_gets_each_checkpoint_posted_and_retried(
    db: Database, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    monkeypatch.setattr(publishing, "ATTEMPTS", 3)
    received: list[dict[str, object]] = []
    calls = 0

    async def take(request: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        if calls == 1:
            return web.Response(status=503)  # the first attempt fails: it is retried
        received.append(await request.json())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/witness", take)
    async with TestServer(app) as server:
        publisher = WitnessPublisher([str(server.make_url("/witness"))])
        writer = AuditWriter(db)
        writer.add_checkpoint_sink(publisher.offer)
        publisher.start()
        writer.start(key)
        try:
            await writer.commit(draft("test.event", n=1))
            seq = await writer.checkpoint(ALICE)
            await publisher.drain(timeout=5)
        finally:
            await writer.close()
            await publisher.close()
    assert (publisher.pushes, publisher.failures, calls) == (1, 0, 2)
    (document,) = received
    assert document["type"] == "gatehouse.audit.checkpoint"
    assert (document["event_seq"], document["seq"], document["key_id"]) == (seq, 1, key.key_id)


@pytest.mark.parametrize(
    "text", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "x" * 10_000, "1e23"]
)
def test_a_hostile_cutoff_is_a_clear_error_not_a_crash(text: str) -> None:
    from trail.times import parse_cutoff

    with pytest.raises(ValueError, match="is not a date or time") as caught:
        parse_cutoff(text)
    assert len(str(caught.value)) < 200


@pytest.mark.parametrize("text", ["999999999999d", "5 minutes", "-1s", "1e9", ""])
def test_a_hostile_duration_is_a_clear_error(text: str) -> None:
    from trail.times import parse_duration

    with pytest.raises(ValueError, match="GATEHOUSE_X"):
        parse_duration(text, "GATEHOUSE_X")
