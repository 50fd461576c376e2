"""The audit writer on a real SQLite store: dense seqs, a verifiable chain, and no silent loss."""

import asyncio
import json
import sqlite3
import threading
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlmodel import Session

from controlplane.audit import writer as writer_module
from controlplane.audit.append import sqlite_time
from controlplane.audit.events import draft
from controlplane.audit.writer import AuditUnavailable, AuditWriter, append_events
from controlplane.auth.identity import Identity
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from trail.chain import verify_chain

REFUSE_INSERTS = (
    "CREATE TRIGGER test_refuse_insert BEFORE INSERT ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
)
ALLOW_INSERTS = "DROP TRIGGER test_refuse_insert"


def sql(db_path: Path, statement: str) -> None:
    """Run a statement on a connection of its own, as an operator's tool would."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(statement)
    finally:
        conn.close()


def stored(db_path: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(seq), str(body), str(hash_)) for seq, body, hash_ in rows]


@pytest.mark.parametrize("max_batch", [1024, 7])
async def test_concurrent_commits_get_dense_unique_seqs_and_a_verifiable_chain(
    db: Database, db_path: Path, max_batch: int
) -> None:
    writer = AuditWriter(db, max_batch=max_batch)
    writer.start()

    async def commit(n: int) -> int:
        return await writer.commit(draft("test.event", identity=Identity("alice"), n=n))

    seqs = await asyncio.gather(*(asyncio.create_task(commit(n)) for n in range(200)))
    await writer.close()

    assert sorted(seqs) == list(range(1, 201))
    rows = stored(db_path)
    assert [seq for seq, _, _ in rows] == list(range(1, 201))
    report = verify_chain(rows)
    assert report.broken is None
    assert report.checked == 200
    # every caller got the seq of its own event
    by_n = {json.loads(body)["n"]: seq for seq, body, _ in rows}
    assert [by_n[n] for n in range(200)] == seqs
    assert writer.committed == 200


async def test_stored_body_names_its_seq_and_previous_hash(
    writer: AuditWriter, db_path: Path
) -> None:
    first = await writer.commit(draft("test.event", identity=Identity("alice"), n=1))
    second = await writer.commit(draft("test.event", identity=Identity("bob"), n=2))

    rows = stored(db_path)
    body1, body2 = json.loads(rows[0][1]), json.loads(rows[1][1])
    assert (first, second) == (1, 2)
    assert body1["seq"] == 1
    assert body1["prev_hash"] == "0" * 64
    assert body2["seq"] == 2
    assert body2["prev_hash"] == rows[0][2]
    assert body2["user"]["sub"] == "bob"
    assert body2["type"] == "test.event"
    assert "hash" not in body2


async def test_close_commits_everything_still_queued(db: Database, db_path: Path) -> None:
    audit = AuditWriter(db)
    audit.start()
    futures = [
        await audit.submit(draft("test.event", identity=Identity("alice"), n=n)) for n in range(25)
    ]

    await audit.close()

    assert all(f.done() for f in futures)
    assert sorted(f.result() for f in futures) == list(range(1, 26))
    rows = stored(db_path)
    assert len(rows) == 25
    assert verify_chain(rows).broken is None


async def test_closed_writer_refuses_new_events(db: Database) -> None:
    audit = AuditWriter(db)
    audit.start()
    await audit.close()

    with pytest.raises(AuditUnavailable, match="not running"):
        await audit.commit(draft("test.event", n=1))


async def test_refused_insert_raises_audit_unavailable_naming_the_store_error(
    writer: AuditWriter, db_path: Path
) -> None:
    assert await writer.commit(draft("test.event", n=0)) == 1
    sql(db_path, REFUSE_INSERTS)

    with pytest.raises(AuditUnavailable, match="audit disk is full"):
        await writer.commit(draft("test.event", n=1))
    assert [seq for seq, _, _ in stored(db_path)] == [1]


async def test_every_event_of_a_refused_batch_fails(writer: AuditWriter, db_path: Path) -> None:
    sql(db_path, REFUSE_INSERTS)

    results = await asyncio.gather(
        *(writer.commit(draft("test.event", n=n)) for n in range(10)), return_exceptions=True
    )

    assert all(isinstance(r, AuditUnavailable) for r in results)
    assert stored(db_path) == []


async def test_commit_after_the_store_recovers_takes_the_next_dense_seq(
    writer: AuditWriter, db_path: Path
) -> None:
    assert await writer.commit(draft("test.event", n=0)) == 1
    sql(db_path, REFUSE_INSERTS)
    with pytest.raises(AuditUnavailable):
        await writer.commit_all([draft("test.event", n=n) for n in range(1, 4)])
    sql(db_path, ALLOW_INSERTS)

    seq = await writer.commit(draft("test.event", n=4))

    assert seq == 2  # the failed batch left no gap
    rows = stored(db_path)
    assert [s for s, _, _ in rows] == [1, 2]
    assert verify_chain(rows).broken is None


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET body = '{}' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "DELETE FROM audit_events",
    ],
)
async def test_store_itself_refuses_to_change_or_remove_events(
    writer: AuditWriter, db_path: Path, statement: str
) -> None:
    await writer.commit(draft("test.event", n=1))
    before = stored(db_path)

    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sql(db_path, statement)

    assert stored(db_path) == before


async def test_events_queued_in_one_loop_turn_share_one_commit(
    writer: AuditWriter, db_path: Path
) -> None:
    futures = [await writer.submit(draft("test.event", n=n), durable=True) for n in range(5)]

    assert await asyncio.gather(*futures) == [1, 2, 3, 4, 5]
    assert (writer.commits, writer.durable_commits, writer.committed) == (1, 1, 5)
    assert verify_chain(stored(db_path)).broken is None


async def test_a_full_queue_holds_callers_back_and_loses_nothing(
    db: Database, db_path: Path
) -> None:
    audit = AuditWriter(db, queue_size=2, max_batch=2)
    audit.start()
    try:
        futures = [await audit.submit(draft("test.event", n=n)) for n in range(7)]
        assert audit.queue_depth <= 2  # the third submit waited for the first batch

        assert sorted(await asyncio.gather(*futures)) == list(range(1, 8))
    finally:
        await audit.close()
    rows = stored(db_path)
    assert [seq for seq, _, _ in rows] == list(range(1, 8))
    assert verify_chain(rows).broken is None


async def test_transact_is_counted_like_a_group_commit(writer: AuditWriter, db_path: Path) -> None:
    observed: list[float] = []
    writer.on_commit = observed.append
    await writer.commit(draft("test.event", n=0))

    seqs = await writer.transact(
        lambda s: append_events(s, [draft("test.event", n=1), draft("test.event", n=2)])
    )

    assert seqs == [2, 3]
    assert (writer.commits, writer.durable_commits, writer.committed) == (2, 2, 3)
    assert len(observed) == 2 and writer.commit_seconds >= sum(observed) > 0
    assert [seq for seq, _, _ in stored(db_path)] == [1, 2, 3]


async def test_a_failing_transaction_fails_only_its_caller(
    writer: AuditWriter, db_path: Path
) -> None:
    def refuse(session: Session) -> None:
        append_events(session, [draft("test.event", n=1)])
        raise ValueError("refused by the caller")

    with pytest.raises(ValueError, match="refused by the caller"):
        await writer.transact(refuse)

    assert await writer.commit(draft("test.event", n=2)) == 1  # rolled back: no gap
    assert len(stored(db_path)) == 1


async def test_an_idle_writer_gives_its_connection_back_to_the_pool(
    db: Database, writer: AuditWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pooled connection is checked (pre-ping on PostgreSQL) when taken again, so a server
    # restarted while the writer idled costs no batch.
    monkeypatch.setattr(writer_module, "_IDLE_RELEASE", 0.01)
    checked_in = threading.Event()
    event.listen(db.writer_engine, "checkin", lambda *_: checked_in.set())
    await writer.commit(draft("test.event", n=1))

    assert await asyncio.to_thread(checked_in.wait, 10)
    assert db.writer_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert await writer.commit(draft("test.event", n=2)) == 2  # and takes one again


@given(st.datetimes(timezones=st.timezones()))
def test_the_stored_time_is_the_text_sqlalchemy_would_store(moment: datetime) -> None:
    dialect = sqlite_dialect.dialect()
    column = EventRow.__table__.c.time.type  # type: ignore[attr-defined]
    processor = column.dialect_impl(dialect).bind_processor(dialect)

    assert sqlite_time(moment) == processor(moment)


def test_a_naive_time_is_refused_as_the_column_refuses_it() -> None:
    with pytest.raises(ValueError, match="aware"):
        sqlite_time(datetime(2026, 1, 1))


async def test_a_writer_thread_that_dies_fails_closed(
    writer: AuditWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    def die(drafts: object, durable: bool) -> None:
        raise SystemExit("the writer thread is gone")  # not an Exception: the thread ends

    monkeypatch.setattr(writer, "_append", die)

    with pytest.raises(AuditUnavailable, match="stopped"):
        await writer.commit(draft("test.event", n=1))
    await writer.close()  # it returns; nothing is left waiting
    assert not writer.alive
    with pytest.raises(AuditUnavailable, match="not running"):
        await writer.commit(draft("test.event", n=2))
