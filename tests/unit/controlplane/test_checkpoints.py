"""Signed checkpoints and retention on a real SQLite store: checkpoints ride in the writer's
commits and verify; forged signatures, misplaced checkpoints and altered events are named;
a prune leaves a signed anchor that the remainder verifies from; and nothing but the prune can
delete an event."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from controlplane.audit.checkpoints import SigningKey, SigningKeyError, load_signing_key
from controlplane.audit.events import draft
from controlplane.audit.retention import latest_anchor, prune
from controlplane.audit.writer import AuditUnavailable, AuditWriter
from controlplane.auth.identity import ADMIN, Identity
from controlplane.store.database import Database
from trail.canonical import canonical
from trail.chain import GENESIS_HASH, export_line, link_hash, unescaped_export_line
from trail.signatures import CHECKPOINT_TYPE, PRUNE_TYPE, checkpoint_note, keyring
from trail.verify import Start, TrailReport, TrailVerifier, anchor_start

Row = tuple[int, str, str]
ADMIN_ID = Identity("root", role=ADMIN)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def keys(key: SigningKey) -> dict[str, Any]:
    return keyring([key.public])


@pytest.fixture
async def writer(db: Database, key: SigningKey) -> AsyncIterator[AuditWriter]:
    audit = AuditWriter(db, checkpoint_every=5)
    audit.start(key)
    yield audit
    await audit.close()


def stored(db_path: Path) -> list[Row]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(seq), str(body), str(hash_)) for seq, body, hash_ in rows]


def sql(db_path: Path, *statements: str) -> None:
    """Statements on one connection of their own, in one transaction, as a tool would."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        for statement in statements:
            conn.execute(statement)
        conn.execute("COMMIT")
    finally:
        conn.close()


def export(rows: list[Row]) -> list[str]:
    """The lines `gatehouse audit export` prints: the stored body plus "hash"."""
    lines = []
    for _, body, hash_ in rows:
        event = json.loads(body)
        event["hash"] = hash_
        lines.append(json.dumps(event, separators=(",", ":")))
    return lines


def verify_lines(lines: list[str], keys: dict[str, Any]) -> TrailReport:
    verifier = TrailVerifier(keys)
    for number, line in enumerate(lines, start=1):
        if not verifier.add_line(number, line):
            break
    return verifier.report()


def verify_rows(rows: list[Row], keys: dict[str, Any], **start: Any) -> TrailReport:
    verifier = TrailVerifier(keys, **start)
    for row in rows:
        if not verifier.add_stored(*row):
            break
    return verifier.report()


def rechain(rows: list[Row], index: int, change: dict[str, Any]) -> list[Row]:
    """What someone with write access to the store does to hide an edit: change one event and
    recompute every hash after it, so that the chain alone still links."""
    out = rows[:index]
    prev = rows[index - 1][2] if index else GENESIS_HASH
    for i, (seq, body, _) in enumerate(rows[index:]):
        event = json.loads(body)
        if i == 0:
            event.update(change)
        event["prev_hash"] = prev
        raw = canonical(event)
        prev = link_hash(prev, raw)
        out.append((seq, raw.decode(), prev))
    return out


async def commit_n(writer: AuditWriter, n: int, start: int = 0) -> list[int]:
    return [
        await writer.commit(draft("test.event", identity=Identity("alice"), n=i))
        for i in range(start, start + n)
    ]


def types(rows: list[Row]) -> list[str]:
    return [json.loads(body)["type"] for _, body, _ in rows]


# ---- checkpoints ---------------------------------------------------------------------------


async def test_a_signed_checkpoint_follows_every_n_events(
    writer: AuditWriter, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    seqs = await commit_n(writer, 12)

    rows = stored(db_path)
    checkpoints = [row for row in rows if json.loads(row[1])["type"] == CHECKPOINT_TYPE]
    assert [seq for seq, _, _ in checkpoints] == [6, 11]
    # The callers' events keep dense seqs around them: none was dropped or renumbered.
    assert seqs == [1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 13, 14]
    by_seq = {seq: hash_ for seq, _, hash_ in rows}
    for seq, body, _ in checkpoints:
        signed = json.loads(body)["checkpoint"]
        assert (signed["seq"], signed["hash"]) == (seq - 1, by_seq[seq - 1])
        assert signed["key_id"] == key.key_id
        # Verify with nothing but the published key and the documented note text.
        note = f"gatehouse-audit/v1\n{seq - 1}\n{by_seq[seq - 1]}\n".encode()
        assert note == checkpoint_note(seq - 1, by_seq[seq - 1])
        key.public.verify(base64.b64decode(signed["signature"]), note)

    report = verify_rows(rows, keys)
    assert report.ok
    assert (report.checked, report.checkpoints, report.signed_through) == (14, 2, 10)


async def test_concurrent_commits_all_land_and_checkpoints_sit_between_batches(
    db: Database, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    audit = AuditWriter(db, max_batch=7, checkpoint_every=10)
    audit.start(key)
    seqs = await asyncio.gather(
        *(audit.commit(draft("test.event", n=n)) for n in range(100)), return_exceptions=False
    )
    await audit.close()

    rows = stored(db_path)
    checkpoint_seqs = {seq for seq, body, _ in rows if json.loads(body)["type"] == CHECKPOINT_TYPE}
    assert len(set(seqs)) == 100
    assert sorted(set(seqs) | checkpoint_seqs) == list(range(1, len(rows) + 1))
    assert len(checkpoint_seqs) >= 9
    report = verify_rows(rows, keys)
    assert report.ok, report


async def test_a_requested_checkpoint_names_who_asked(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 2)

    seq = await writer.checkpoint(ADMIN_ID)

    assert seq == 3
    body = json.loads(stored(db_path)[-1][1])
    assert body["type"] == CHECKPOINT_TYPE
    assert body["reason"] == "requested"
    assert body["user"]["sub"] == "root"
    assert body["checkpoint"]["seq"] == 2
    assert verify_rows(stored(db_path), keys).checkpoints == 1


async def test_a_key_that_cannot_sign_fails_the_commit_closed(
    db: Database, db_path: Path, key: SigningKey
) -> None:
    class BrokenKey(SigningKey):
        def checkpoint(self, seq: int, hash_: str) -> dict[str, Any]:
            raise OSError("the HSM is unreachable")

    audit = AuditWriter(db, checkpoint_every=3)
    audit.start(BrokenKey(Ed25519PrivateKey.generate()))
    try:
        assert await audit.commit(draft("test.event", n=1)) == 1
        assert await audit.commit(draft("test.event", n=2)) == 2
        with pytest.raises(AuditUnavailable, match="HSM is unreachable"):
            await audit.commit(draft("test.event", n=3))  # seq 3 would need a checkpoint
    finally:
        await audit.close()
    assert [seq for seq, _, _ in stored(db_path)] == [1, 2]  # nothing half-written


async def test_a_writer_without_a_key_refuses_to_checkpoint(db: Database) -> None:
    audit = AuditWriter(db, checkpoint_every=3)
    audit.start()
    try:
        with pytest.raises(AuditUnavailable, match="no audit signing key"):
            await audit.checkpoint(ADMIN_ID)
        assert await audit.commit(draft("test.event", n=1)) == 1  # plain events still commit
    finally:
        await audit.close()


# ---- verification: what is named -----------------------------------------------------------


async def test_an_export_verifies_offline_and_names_an_altered_event(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 12)
    lines = export(stored(db_path))
    assert verify_lines(lines, keys).ok

    event = json.loads(lines[7])  # seq 8
    event["n"] = 999
    lines[7] = json.dumps(event)
    report = verify_lines(lines, keys)

    assert report.broken is not None
    assert report.broken.seq == 8
    assert "altered" in report.broken.reason


async def test_an_exported_line_with_a_duplicate_key_is_not_verified(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    """A parser that keeps the first of two equal keys (or all of them) would read another
    value than the verifier, whose json.loads keeps the last: the line must be the export of
    its hashed bytes exactly."""
    await commit_n(writer, 12)
    lines = [export_line(body, hash_) for _, body, hash_ in stored(db_path)]
    assert verify_lines(lines, keys).ok

    lines[7] = lines[7].replace('{"', '{"n":999,"', 1)  # seq 8 still carries its real "n" later
    report = verify_lines(lines, keys)

    assert report.broken is not None
    assert report.broken.seq == 8
    assert "byte for byte" in report.broken.reason


@pytest.mark.parametrize(
    "change",
    [
        lambda line: line.replace(",", ", ", 1),  # spacing
        lambda line: line.replace('"type"', '"\\u0074ype"', 1),  # an escape
        lambda line: line.replace('"hash":', '"hash" :', 1),
    ],
)
async def test_an_exported_line_reencoded_is_not_verified(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any], change: Any
) -> None:
    await commit_n(writer, 3)
    lines = [export_line(body, hash_) for _, body, hash_ in stored(db_path)]
    lines[1] = change(lines[1])

    report = verify_lines(lines, keys)

    assert report.broken is not None
    assert report.broken.seq == 2


async def test_a_unicode_line_break_in_an_event_keeps_its_export_one_line(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    """RFC 8785 leaves U+0085, U+2028 and U+2029 raw in a string; a SIEM reading NDJSON with
    str.splitlines cut such an event's line in two. The export escapes them; the line
    verifies, and so does a line written before the escapes. Another escape is still an edit."""
    statement = "select 1 -- \u2028 -- \u2029 -- \u0085"
    await writer.commit(draft("db.query", request={"statement": statement}))
    await commit_n(writer, 2)
    rows = stored(db_path)
    lines = [export_line(body, hash_) for _, body, hash_ in rows]
    exported = "\n".join(lines) + "\n"
    assert len(exported.splitlines()) == len(rows)
    assert json.loads(exported.splitlines()[0])["request"]["statement"] == statement
    assert verify_lines(lines, keys).ok
    assert verify_lines([unescaped_export_line(b, h) for _, b, h in rows], keys).ok
    lines[0] = lines[0].replace('"type"', '"\\u0074ype"', 1)
    report = verify_lines(lines, keys)
    assert report.broken is not None and report.broken.seq == 1


@pytest.mark.parametrize("value", [1e16, 2.0**53, 1e20, 12345678901234567890.0, -1e18])
async def test_an_integral_float_beyond_2_53_verifies(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any], value: float
) -> None:
    """RFC 8785 writes such a float as an integer literal (1e20: 100000000000000000000); read
    back as a Python int it has no RFC 8785 form. JSON numbers are doubles to JCS, so the
    verifier reads them so: the event verifies, stored and exported, and is not "edited"."""
    await writer.commit(draft("test.event", x=value, n=[value]))
    await commit_n(writer, 5)
    rows = stored(db_path)
    assert verify_rows(rows, keys).ok
    lines = [export_line(body, hash_) for _, body, hash_ in rows]
    report = verify_lines(lines, keys)
    assert report.ok and report.checked == len(rows)
    # An integer the writer never writes (beyond 2**53, not a double's) is still an edit.
    body = f'{{"prev_hash":"{GENESIS_HASH}","seq":1,"x":9007199254740993}}'
    report = verify_rows([(1, body, link_hash(GENESIS_HASH, body.encode()))], keys)
    assert report.broken is not None and "canonical" in report.broken.reason


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e400", "9007199254740993"])
def test_a_value_with_no_canonical_form_is_reported_not_raised(
    keys: dict[str, Any], value: str
) -> None:
    body = f'{{"prev_hash":"{GENESIS_HASH}","seq":1,"x":{value}}}'
    stored_ = TrailVerifier(keys)
    assert not stored_.add_stored(1, body, "0" * 64)
    assert stored_.broken is not None and stored_.broken.seq == 1
    exported = TrailVerifier(keys)
    assert not exported.add_line(1, export_line(body, "0" * 64))
    assert exported.broken is not None and exported.broken.seq == 1


async def test_a_forged_checkpoint_signature_is_named(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 12)
    rows = stored(db_path)
    forged = json.loads(rows[10][1])["checkpoint"]  # the checkpoint at seq 11
    other = SigningKey.generate().checkpoint(forged["seq"], forged["hash"])
    forged["signature"] = other["signature"]  # someone else's key, our key id

    report = verify_rows(rechain(rows, 10, {"checkpoint": forged}), keys)

    assert report.broken is not None
    assert report.broken.seq == 11
    assert "signature does not verify" in report.broken.reason
    assert report.checkpoints == 1  # the one at seq 6 held


async def test_a_checkpoint_signed_by_an_unknown_key_is_named(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 6)
    rows = stored(db_path)
    signed = json.loads(rows[5][1])["checkpoint"]
    impostor = SigningKey.generate().checkpoint(signed["seq"], signed["hash"])

    report = verify_rows(rechain(rows, 5, {"checkpoint": impostor}), keys)

    assert report.broken is not None
    assert report.broken.seq == 6
    assert "not by a key given to verify with" in report.broken.reason


async def test_a_checkpoint_that_vouches_for_another_point_is_named(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 12)
    rows = stored(db_path)
    replayed = json.loads(rows[5][1])["checkpoint"]  # a genuine signature, for seq 5

    report = verify_rows(rechain(rows, 10, {"checkpoint": replayed}), keys)

    assert report.broken is not None
    assert report.broken.seq == 11
    assert "vouches for seq 5" in report.broken.reason
    assert "the event before it is seq 10" in report.broken.reason


async def test_a_rechained_edit_is_caught_by_the_next_checkpoint(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 12)
    rows = stored(db_path)

    report = verify_rows(rechain(rows, 7, {"n": 999}), keys)  # seq 8; hashes recomputed

    assert report.broken is not None
    assert report.broken.seq == 11  # the chain links, but the signed hash at seq 10 differs
    assert "vouches for seq 10" in report.broken.reason


async def test_an_export_that_starts_later_is_vouched_for_by_a_checkpoint_after_it(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    await commit_n(writer, 12)
    lines = export(stored(db_path))

    later = verify_lines(lines[2:], keys)  # `export --after 2`
    assert later.ok
    assert later.start is not None
    assert later.start.seq == 2
    assert later.start.vouched_by == "the checkpoint at seq 6"

    tail = verify_lines(lines[11:], keys)  # seq 12..14: no checkpoint after the start
    assert tail.broken is None
    assert not tail.ok
    assert tail.unvouched is not None
    assert "starts at seq 12" in tail.unvouched


async def test_a_made_up_prefix_is_not_vouched_for(
    writer: AuditWriter, db_path: Path, keys: dict[str, Any]
) -> None:
    """A self-consistent chain from an invented prev_hash runs into the signed hash."""
    await commit_n(writer, 12)
    rows = stored(db_path)
    invented = "f" * 64
    start = rechain([(1, "", invented), *rows[1:]], 1, {"n": -1})[1:]

    report = verify_lines(export(start), keys)

    assert report.broken is not None
    assert report.broken.seq == 6


# ---- retention -----------------------------------------------------------------------------


async def commit_at(writer: AuditWriter, moment: datetime, n: int) -> list[int]:
    """Commit n events with the clock at `moment`: the checkpoints among them too."""
    from unittest import mock

    from controlplane.audit import events
    from controlplane.audit.events import rfc3339

    class Stopped:
        def read(self) -> tuple[datetime, str, int]:
            return moment, rfc3339(moment), int(moment.timestamp() * 1000)

    seqs = []
    with mock.patch.object(events, "_clock", Stopped()):
        for i in range(n):
            seqs.append(await writer.commit(draft("test.event", n=i)))
    return seqs


async def test_prune_removes_the_range_leaves_an_anchor_and_the_rest_verifies(
    writer: AuditWriter, db: Database, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    old = datetime.now(UTC) - timedelta(days=400)
    await commit_at(writer, old, 8)  # seq 1-5, checkpoint 6, 7-9
    await commit_n(writer, 4)  # seq 10, checkpoint 11, 12-14
    before = stored(db_path)
    cutoff = old + timedelta(days=1)

    result = await writer.transact(lambda s: prune(s, cutoff, ADMIN_ID, key))

    assert (result.first_seq, result.through_seq, result.removed) == (1, 9, 9)
    rows = stored(db_path)
    assert [seq for seq, _, _ in rows] == list(range(10, 16))
    assert rows[:-1] == before[9:]  # what remains is untouched
    anchor = await db.read(latest_anchor)
    assert anchor is not None
    assert (anchor.seq, anchor.hash, anchor.pruned_by) == (9, before[8][2], "root")
    signed = {"seq": anchor.seq, "hash": anchor.hash}
    signed |= {"key_id": anchor.key_id, "signature": anchor.signature}
    start = anchor_start(keys, signed)

    record = json.loads(rows[-1][1])
    assert record["type"] == PRUNE_TYPE
    assert record["seq"] == result.event_seq == 15
    assert record["user"]["sub"] == "root"
    assert record["prune"]["first_seq"] == 1
    assert record["prune"]["through_seq"] == 9
    assert record["prune"]["removed"] == 9
    assert record["prune"]["anchor"]["signature"] == anchor.signature

    from_store = verify_rows(rows, keys, start=start)
    assert from_store.ok, from_store
    assert from_store.checked == 6
    assert verify_lines(export(rows), keys).ok  # an export of it verifies offline too
    # From genesis, without the anchor, the remainder is a cut chain.
    cut = verify_rows(rows, keys, start=Start.genesis()).broken
    assert cut is not None
    assert cut.seq == 10
    assert "expected seq 1 after 0" in cut.reason


async def test_an_export_after_a_prune_is_vouched_for_by_the_prune_record(
    db: Database, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    audit = AuditWriter(db)  # no interval checkpoints: only the anchor can vouch
    audit.start(key)
    try:
        await commit_at(audit, datetime(2020, 1, 1, tzinfo=UTC), 3)
        await commit_n(audit, 2)
        await audit.transact(lambda s: prune(s, datetime(2021, 1, 1, tzinfo=UTC), ADMIN_ID, key))
    finally:
        await audit.close()
    lines = export(stored(db_path))

    report = verify_lines(lines, keys)

    assert report.ok, report
    assert report.start is not None
    assert (report.start.seq, report.start.vouched_by) == (3, "the prune anchor at seq 3")
    assert report.first_seq == 4
    # The same remainder missing its first event is vouched for by nothing.
    assert verify_lines(lines[1:], keys).unvouched is not None


async def test_an_anchor_with_a_forged_signature_is_refused(
    writer: AuditWriter, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    await commit_at(writer, datetime(2020, 1, 1, tzinfo=UTC), 3)
    await writer.transact(lambda s: prune(s, datetime(2021, 1, 1, tzinfo=UTC), ADMIN_ID, key))
    rows = stored(db_path)
    forged = dict(json.loads(rows[-1][1])["prune"]["anchor"], seq=1)

    with pytest.raises(ValueError, match="signature does not verify"):
        anchor_start(keys, forged)
    # A checkpoint's signature over the same point does not pass as an anchor either.
    checkpoint = key.checkpoint(forged["seq"], forged["hash"])
    with pytest.raises(ValueError, match="signature does not verify"):
        anchor_start(keys, checkpoint)


async def test_a_second_prune_moves_the_anchor_on(
    writer: AuditWriter, db: Database, db_path: Path, key: SigningKey, keys: dict[str, Any]
) -> None:
    await commit_at(writer, datetime(2020, 1, 1, tzinfo=UTC), 3)
    await commit_at(writer, datetime(2021, 1, 1, tzinfo=UTC), 3)
    first = await writer.transact(
        lambda s: prune(s, datetime(2020, 6, 1, tzinfo=UTC), ADMIN_ID, key)
    )
    second = await writer.transact(
        lambda s: prune(s, datetime(2021, 6, 1, tzinfo=UTC), ADMIN_ID, key)
    )

    assert (first.first_seq, first.through_seq) == (1, 3)
    assert second.first_seq == 4
    anchor = await db.read(latest_anchor)
    assert anchor is not None and anchor.seq == second.through_seq
    rows = stored(db_path)
    signed = {"seq": anchor.seq, "hash": anchor.hash, "key_id": anchor.key_id}
    start = anchor_start(keys, signed | {"signature": anchor.signature})
    assert verify_rows(rows, keys, start=start).ok


async def test_prune_with_nothing_old_enough_changes_nothing(
    writer: AuditWriter, db: Database, db_path: Path, key: SigningKey
) -> None:
    await commit_n(writer, 3)
    before = stored(db_path)

    result = await writer.transact(
        lambda s: prune(s, datetime(2000, 1, 1, tzinfo=UTC), ADMIN_ID, key)
    )

    assert (result.removed, result.anchor, result.event_seq) == (0, None, 0)
    assert stored(db_path) == before
    assert await db.read(latest_anchor) is None


# ---- the store refuses everything else -----------------------------------------------------


@pytest.mark.parametrize(
    "statements",
    [
        ["UPDATE audit_events SET body = '{}' WHERE seq = 1"],
        ["DELETE FROM audit_events WHERE seq = 1"],
        ["DELETE FROM audit_events"],
        # The guard opens deletes up to its seq only, and never updates.
        ["INSERT INTO audit_prune_guard VALUES (2)", "DELETE FROM audit_events WHERE seq = 3"],
        ["INSERT INTO audit_prune_guard VALUES (3)", "UPDATE audit_events SET type = 'x'"],
    ],
)
async def test_plain_updates_and_deletes_are_still_refused(
    writer: AuditWriter, db_path: Path, statements: list[str]
) -> None:
    await commit_n(writer, 3)
    before = stored(db_path)

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sql(db_path, *statements)

    assert stored(db_path) == before


async def test_a_guard_left_behind_stops_every_append(writer: AuditWriter, db_path: Path) -> None:
    await commit_n(writer, 1)
    sql(db_path, "INSERT INTO audit_prune_guard VALUES (1)")

    with pytest.raises(AuditUnavailable, match="prune guard"):
        await writer.commit(draft("test.event", n=2))

    sql(db_path, "DELETE FROM audit_prune_guard")
    assert await writer.commit(draft("test.event", n=3)) == 2


async def test_anchors_cannot_be_changed_or_removed(
    writer: AuditWriter, db_path: Path, key: SigningKey
) -> None:
    await commit_at(writer, datetime(2020, 1, 1, tzinfo=UTC), 2)
    await writer.transact(lambda s: prune(s, datetime(2021, 1, 1, tzinfo=UTC), ADMIN_ID, key))

    for statement in ("UPDATE audit_anchor SET seq = 1", "DELETE FROM audit_anchor"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            sql(db_path, statement)


# ---- the key -------------------------------------------------------------------------------


def test_the_key_is_made_once_owner_only_and_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "audit-signing.key"

    made = load_signing_key(path, None)
    again = load_signing_key(path, None)

    assert os.stat(path).st_mode & 0o777 == 0o600
    assert path.read_text().startswith("-----BEGIN PRIVATE KEY-----")
    assert again.key_id == made.key_id
    assert len(made.key_id) == 16


def test_a_configured_key_file_must_exist_and_be_ed25519(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(SigningKeyError, match="cannot read the audit signing key"):
        load_signing_key(tmp_path / "default.key", tmp_path / "missing.pem")
    assert not (tmp_path / "default.key").exists()  # no silent fallback to a new key

    wrong = tmp_path / "ec.pem"
    wrong.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(SigningKeyError, match="must be Ed25519"):
        load_signing_key(tmp_path / "default.key", wrong)

    shared = tmp_path / "shared.pem"
    shared.write_bytes(SigningKey.generate().private_pem())
    assert load_signing_key(tmp_path / "default.key", shared).key_id
