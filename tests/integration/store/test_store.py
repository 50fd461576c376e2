"""What every store must do: the same tests against SQLite and PostgreSQL (see conftest.py).

The audit trail's guarantees live partly in the store: the schema and its append-only triggers,
the chain-head lock that makes seq dense and commit-ordered, and reads that never stand in the
writer's way. `docs/decisions/0006-gap-free-cursor.md` explains why the cursor test must hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.exc import DatabaseError, DBAPIError
from sqlmodel import Session, col, select

from controlplane.audit.events import draft
from controlplane.audit.reader import read_page
from controlplane.audit.writer import AuditWriter, append_events
from controlplane.auth.identity import Identity
from controlplane.errors import InvalidArgument
from controlplane.store.database import ALEMBIC_DIR, PG_DRIVER, Database, store_url
from controlplane.store.models import AgentRow, ChainHeadRow, EventRow
from tests.integration.store.conftest import Store
from tests.integration.store.replica import (
    EVENT_TYPE,
    migrate_in_process,
    replica,
    run_in_process,
)
from trail.chain import GENESIS_HASH, verify_chain

TABLES = {
    "agents",
    "api_tokens",
    "policy_versions",
    "sessions",
    "audit_events",
    "audit_chain_head",
    "alembic_version",
}

Triple = tuple[int, str, str]


def stored(db: Database) -> list[Triple]:
    """Every event as (seq, body, hash), in seq order."""
    with db.read_session() as session:
        query = select(EventRow.seq, EventRow.body, EventRow.hash).order_by(col(EventRow.seq))
        return [(seq, body, hash_) for seq, body, hash_ in session.exec(query)]


def schema(db: Database) -> list[tuple[Any, ...]]:
    """Tables, columns, indexes and triggers: equal before and after a repeated migration."""
    if db.is_sqlite:
        query = "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
    else:
        query = """
            SELECT 'column', table_name, column_name, data_type FROM information_schema.columns
             WHERE table_schema = 'public'
            UNION ALL
            SELECT 'index', tablename, indexname, indexdef FROM pg_indexes
             WHERE schemaname = 'public'
            UNION ALL
            SELECT 'trigger', event_object_table, trigger_name, event_manipulation
              FROM information_schema.triggers WHERE trigger_schema = 'public'
            ORDER BY 1, 2, 3, 4
        """
    with db.read_session() as session:
        return [tuple(row) for row in session.connection().exec_driver_sql(query)]


def migrated_state(db: Database) -> tuple[list[str], list[tuple[int, int, str]]]:
    with db.read_session() as session:
        versions = [
            str(v)
            for (v,) in session.connection().exec_driver_sql(
                "SELECT version_num FROM alembic_version"
            )
        ]
        heads = [(h.id, h.seq, h.hash) for h in session.exec(select(ChainHeadRow))]
    return versions, heads


def head_revision() -> str:
    revision = ScriptDirectory(str(ALEMBIC_DIR)).get_current_head()
    assert revision is not None
    return revision


# --- migrations ---------------------------------------------------------------------------


def test_migrations_apply_and_are_idempotent(store: Store) -> None:
    db = Database(store.url)
    try:
        db.migrate()
        assert set(inspect(db.writer_engine).get_table_names()) >= TABLES
        assert migrated_state(db) == ([head_revision()], [(1, 0, GENESIS_HASH)])
        first = schema(db)
        assert any("audit_events" in str(row) for row in first)

        db.migrate()
        again = Database(store.url)  # another replica starting later
        try:
            again.migrate()
        finally:
            again.dispose()

        assert schema(db) == first
        assert migrated_state(db) == ([head_revision()], [(1, 0, GENESIS_HASH)])
    finally:
        db.dispose()


def test_replicas_starting_together_migrate_once(store: Store) -> None:
    """Replica processes migrating one empty store at the same moment all succeed."""
    replicas = 3
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(replicas + 1)
    processes = [
        spawn.Process(target=migrate_in_process, args=(store.url, start), daemon=True)
        for _ in range(replicas)
    ]
    for process in processes:
        process.start()
    try:
        start.wait(60)
        for process in processes:
            process.join(60)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * replicas
    db = Database(store.url)
    try:
        assert migrated_state(db) == ([head_revision()], [(1, 0, GENESIS_HASH)])
    finally:
        db.dispose()


# --- types and sessions ---------------------------------------------------------------------


async def test_datetimes_round_trip_as_utc(db: Database) -> None:
    local = datetime(2026, 11, 27, 12, 15, 2, 123456, tzinfo=timezone(timedelta(hours=2)))
    row = AgentRow(id="a1", name="vpc-1", created_at=local, enrolled_at=local.astimezone(UTC))
    await db.write(lambda s: s.add(row))
    writer = AuditWriter(db)
    writer.start()
    try:
        seq = await writer.commit(draft("test.time"))
    finally:
        await writer.close()

    def load(session: Session) -> tuple[AgentRow | None, EventRow | None, int]:
        later = session.exec(select(AgentRow).where(col(AgentRow.created_at) > local)).all()
        return session.get(AgentRow, "a1"), session.get(EventRow, seq), len(later)

    agent, event, later = await db.read(load)
    assert agent is not None and event is not None
    assert agent.created_at == local
    assert agent.created_at.tzinfo is UTC
    assert agent.created_at.isoformat() == "2026-11-27T10:15:02.123456+00:00"
    assert agent.enrolled_at == local and agent.enrolled_at.tzinfo is UTC
    assert later == 0  # comparisons happen in UTC too
    assert event.time.tzinfo is UTC
    assert event.time.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == json.loads(event.body)["time"]


@pytest.mark.parametrize("store", ["postgresql"], indirect=True)  # session settings of PostgreSQL
def test_postgres_sessions_are_utc_and_reads_are_read_only_autocommit(
    db: Database, store: Store
) -> None:
    with db.write_session() as session, session.begin():
        conn = session.connection()
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        assert conn.exec_driver_sql("SHOW lock_timeout").scalar() == "10s"
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
    with db.read_session() as session:
        conn = session.connection()
        assert conn.exec_driver_sql("SHOW TimeZone").scalar() == "UTC"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
        assert conn.connection.dbapi_connection is not None
        assert conn.connection.dbapi_connection.autocommit


async def test_read_sessions_cannot_write(db: Database) -> None:
    row = AgentRow(id="a1", name="vpc-1", created_at=datetime.now(UTC))
    with db.read_session() as session, pytest.raises(DBAPIError, match=r"read.?only"):
        session.add(row)
        session.commit()
    assert await db.read(lambda s: s.get(AgentRow, "a1")) is None


# --- the audit writer ---------------------------------------------------------------------


async def test_fifty_concurrent_sessions_get_dense_seqs_and_a_verifiable_chain(
    db: Database,
) -> None:
    sessions, per_session = 50, 8
    writer = AuditWriter(db)
    writer.start()

    async def one_session(k: int) -> list[int]:
        identity = Identity(f"user-{k}")
        return [
            await writer.commit(draft("test.event", identity=identity, k=k, n=n))
            for n in range(per_session)
        ]

    try:
        results = await asyncio.gather(*(one_session(k) for k in range(sessions)))
    finally:
        await writer.close()

    total = sessions * per_session
    assert sorted(s for seqs in results for s in seqs) == list(range(1, total + 1))
    assert all(seqs == sorted(seqs) for seqs in results)  # each session's events in order
    rows = stored(db)
    assert [seq for seq, _, _ in rows] == list(range(1, total + 1))
    report = verify_chain(rows)
    assert report.broken is None and report.checked == total
    by_event = {(b["k"], b["n"]): seq for seq, b in ((s, json.loads(b)) for s, b, _ in rows)}
    assert [[by_event[k, n] for n in range(per_session)] for k in range(sessions)] == results
    with db.read_session() as session:
        head = session.exec(select(ChainHeadRow)).one()
    assert (head.seq, head.hash) == (total, rows[-1][2])


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET body = '{}' WHERE seq = 1",
        "UPDATE audit_events SET type = 'x'",
        "DELETE FROM audit_events WHERE seq = 2",
        "DELETE FROM audit_events",
    ],
)
async def test_store_refuses_to_change_or_remove_events(db: Database, statement: str) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        await writer.commit_all([draft("test.event", n=n) for n in range(3)])
    finally:
        await writer.close()
    before = stored(db)

    with pytest.raises(DatabaseError, match="append-only"):
        await db.write(lambda s: s.connection().execute(text(statement)))

    assert stored(db) == before


async def test_orm_cannot_change_or_delete_an_event(db: Database) -> None:
    with db.write_session() as session, session.begin():
        append_events(session, [draft("test.event", n=0)])

    def edit(session: Session) -> None:
        row = session.get(EventRow, 1)
        assert row is not None
        row.body = row.body.replace('"n":0', '"n":1')
        session.add(row)

    def delete(session: Session) -> None:
        session.delete(session.get(EventRow, 1))

    before = stored(db)
    for change in (edit, delete):
        with pytest.raises(DatabaseError, match="append-only"):
            await db.write(change)
    assert stored(db) == before
    assert verify_chain(before).broken is None


async def test_replicas_sign_over_each_others_events_but_not_over_a_rewritten_head(
    db: Database, store: Store
) -> None:
    """Each writer remembers the head it committed: a head ahead of it is another replica's
    work (checked at the event it committed before a checkpoint is signed), a head at it with
    another hash was edited in the store, and nothing is appended or signed on it."""
    from controlplane.audit.checkpoints import SigningKey
    from controlplane.audit.errors import AuditUnavailable
    from trail.signatures import keyring
    from trail.verify import TrailVerifier

    key = SigningKey.generate()
    other = Database(store.url)  # a second replica
    first, second = AuditWriter(db, checkpoint_every=4), AuditWriter(other, checkpoint_every=4)
    first.start(key)
    second.start(key)
    try:
        for n in range(5):
            await first.commit(draft("test.event", n=n))
            await second.commit(draft("test.event", n=n))
            await (first if n % 2 else second).checkpoint(Identity("root"))
        verifier = TrailVerifier(keyring([key.public]))
        for row in stored(db):
            assert verifier.add_stored(*row)
        assert verifier.report().ok and verifier.report().checkpoints >= 5

        await db.write(
            lambda s: s.connection().execute(
                text("UPDATE audit_chain_head SET hash = :h WHERE id = 1"), {"h": "f" * 64}
            )
        )
        before = stored(db)
        with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
            await second.checkpoint(Identity("root"))
        with pytest.raises(AuditUnavailable, match="rewound or rewritten"):
            await second.commit(draft("test.event", n=99))
        assert stored(db) == before
    finally:
        await first.close()
        await second.close()
        other.dispose()


async def test_a_writer_signs_and_resumes_past_a_floor_a_signed_prune_removed(
    db: Database, tmp_path: Path
) -> None:
    """The floor's event gone under a prune anchor (looked up in each store's SQL): the
    running writer signs on, and a restart resumes above the witnessed checkpoint it removed."""
    from controlplane.audit import resume, retention
    from controlplane.audit.checkpoints import SigningKey
    from controlplane.audit.witness import WitnessPublisher

    key = SigningKey.generate()
    path = tmp_path / "witness.ndjson"
    publisher = WitnessPublisher([str(path)])
    writer = AuditWriter(db, checkpoint_every=5)
    writer.add_checkpoint_sink(publisher.offer)
    publisher.start()
    writer.start(key)
    try:
        for n in range(7):  # 1-5, checkpoint 6, 7-8
            await writer.commit(draft("test.event", n=n))
        await publisher.close()  # the witness saw checkpoint 6, vouching for 5
        vouched = stored(db)[4][2]
        now, zero = datetime.now(UTC), timedelta(0)
        root = Identity("root")
        await writer.transact(lambda s: retention.prune(s, now, root, key, min_retention=zero))
        await writer.checkpoint(root)  # the floor (8) was pruned: signed on
    finally:
        await writer.close()
        await publisher.close()
    assert [json.loads(row[1])["type"] for row in stored(db)] == ["audit.prune", "audit.checkpoint"]
    assert await resume.witnessed_floor(db, [str(path)], key) == (5, vouched)


# SQLite has no TRUNCATE; DELETE without WHERE is covered above for both stores.
@pytest.mark.parametrize("store", ["postgresql"], indirect=True)
def test_store_refuses_truncate(db: Database, store: Store) -> None:
    with db.write_session() as session, session.begin():
        append_events(session, [draft("test.event", n=0)])
    with (
        pytest.raises(DatabaseError, match="append-only"),
        db.write_session() as session,
        session.begin(),
    ):
        session.connection().execute(text("TRUNCATE audit_events"))
    assert len(stored(db)) == 1


# --- locking ------------------------------------------------------------------------------


async def wait_for_lock_wait(store: Store, fragment: str, timeout: float = 10.0) -> None:
    """Until a backend of this database waits on a lock in a statement containing `fragment`.

    This polls the server's own view (pg_stat_activity), so the test knows the append really
    is waiting rather than merely not having started yet.
    """
    deadline = time.monotonic() + timeout
    with store.admin() as admin:
        while True:
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE %s",
                (f"%{fragment}%",),
            ).fetchone()
            if waiting is not None and waiting[0]:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"no backend waits for a lock on {fragment!r}")
            await asyncio.sleep(0.01)


async def test_an_append_waits_for_the_replica_holding_the_chain_head(
    db: Database, store: Store
) -> None:
    other = Database(store.url)  # a second replica, with engines and connections of its own
    writer = AuditWriter(db)
    writer.start()
    try:
        with other.write_session() as session, session.begin():
            assert append_events(session, [draft("test.event", replica="other")]) == [1]
            pending = await writer.submit(draft("test.event", replica="this"))
            if store.is_postgres:
                await wait_for_lock_wait(store, "FOR UPDATE")
            assert not pending.done()
        # The other replica committed: this one gets the next seq and links to its event.
        assert await asyncio.wait_for(pending, 30) == 2
    finally:
        await writer.close()
        other.dispose()
    rows = stored(db)
    assert [json.loads(body)["replica"] for _, body, _ in rows] == ["other", "this"]
    assert verify_chain(rows).broken is None


async def test_reads_and_the_writer_do_not_block_each_other(db: Database, store: Store) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        await writer.commit(draft("test.event", n=0))
        with db.read_session() as reading:
            assert len(reading.exec(select(EventRow)).all()) == 1
            # A read session is open (on SQLite, with its snapshot): the writer commits anyway.
            seqs = await asyncio.wait_for(
                writer.commit_all([draft("test.event", n=n) for n in range(1, 6)]), 30
            )
            assert seqs == [2, 3, 4, 5, 6]
            if store.is_postgres:
                # Each read statement was its own transaction: nothing is left open or locked.
                with store.admin() as admin:
                    idle = admin.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND state LIKE 'idle in transaction%'"
                    ).fetchone()
                assert idle == (0,)
                assert len(reading.exec(select(EventRow)).all()) == 6

        # And a writer holding the chain head (uncommitted) does not stop readers.
        with db.write_session() as session, session.begin():
            append_events(session, [draft("test.event", n=6)])
            page = await asyncio.wait_for(read_page(db, 0, 100), 30)
            assert [e.seq for e in page.events] == [1, 2, 3, 4, 5, 6]
    finally:
        await writer.close()
    assert [seq for seq, _, _ in stored(db)] == list(range(1, 8))


# --- the gap-free cursor ------------------------------------------------------------------

PROCESS_REPLICAS = 2
LOOP_REPLICAS = 2
SESSIONS = 10  # concurrent sessions per replica
EVENTS = 60  # events per session, committed one after another (strict mode)
PAGE = 7


async def test_cursor_sees_every_event_once_while_replicas_write(
    db: Database, store: Store, record_property: Callable[[str, object], None]
) -> None:
    """A reader paging `seq > cursor` while four replicas append ends with exactly the store."""
    replicas = PROCESS_REPLICAS + LOOP_REPLICAS
    total = replicas * SESSIONS * EVENTS
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(replicas + 1)  # the replicas and the reader
    processes = [
        spawn.Process(
            target=run_in_process,
            args=(store.url, f"p{i}", SESSIONS, EVENTS, start),
            name=f"replica-p{i}",
            daemon=True,
        )
        for i in range(PROCESS_REPLICAS)
    ]
    for process in processes:
        process.start()
    try:
        in_loop = [
            asyncio.create_task(replica(store.url, f"l{i}", SESSIONS, EVENTS, start))
            for i in range(LOOP_REPLICAS)
        ]
        joins = [asyncio.to_thread(p.join, 90) for p in processes]
        writers = asyncio.gather(*in_loop, *joins)

        await asyncio.to_thread(start.wait, 60)
        began = time.perf_counter()
        writing_took: float | None = None
        cursor, seen, pages, pages_while_writing = 0, list[EventRow](), 0, 0
        while True:
            finished = writers.done()  # checked before the read: an empty page then is the end
            if finished and writing_took is None:
                writing_took = time.perf_counter() - began
            # What ListEvents and the HTTP export run: seq > after ORDER BY seq LIMIT n.
            page = await read_page(db, cursor, PAGE)
            rows = page.events
            pages += 1
            if rows:
                pages_while_writing += not finished
                # Every page continues exactly where the last one ended.
                assert [r.seq for r in rows] == list(range(cursor + 1, cursor + 1 + len(rows)))
                seen.extend(rows)
                assert page.next == rows[-1].seq
                cursor = page.next
            elif finished:
                break
            else:
                # Caught up while replicas still write: wait for them or a moment, then ask again.
                await asyncio.wait({writers}, timeout=0.005)
        await writers  # raises if an in-loop replica failed
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    assert [p.exitcode for p in processes] == [0] * PROCESS_REPLICAS

    triples = [(r.seq, r.body, r.hash) for r in seen]
    assert [seq for seq, _, _ in triples] == list(range(1, total + 1))  # no gap, no duplicate
    assert triples == stored(db)  # exactly what the store holds
    report = verify_chain(triples)
    assert report.broken is None and report.checked == total
    bodies = [json.loads(body) for _, body, _ in triples]
    assert {b["type"] for b in bodies} == {EVENT_TYPE}
    written = Counter((b["replica"], b["lane"], b["n"]) for b in bodies)
    assert len(written) == total and set(written.values()) == {1}
    assert {r for r, _, _ in written} == {f"p{i}" for i in range(PROCESS_REPLICAS)} | {
        f"l{i}" for i in range(LOOP_REPLICAS)
    }
    # Strict sessions commit one event after the other: their seqs increase with n.
    for key in {(b["replica"], b["lane"]) for b in bodies}:
        ns = [b["n"] for b in bodies if (b["replica"], b["lane"]) == key]
        assert ns == list(range(EVENTS)), key
    assert pages_while_writing > 0  # the reader really raced the writers

    assert writing_took is not None
    rate = total / writing_took
    record_property("events_per_second", round(rate))
    print(
        f"\n[{store.kind}] {total} events from {replicas} replicas x {SESSIONS} sessions in "
        f"{writing_took:.2f}s = {rate:.0f} events/s committed; reader: {pages} pages of "
        f"<= {PAGE}, {pages_while_writing} while writing"
    )


# --- URLs and engines (no server needed) ----------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db.example:5432/gh",
        "postgres://u:p@db.example:5432/gh",
        "postgresql+psycopg://u:p@db.example:5432/gh",
    ],
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    assert store_url(url).drivername == PG_DRIVER
    db = Database(url)  # creating engines does not connect
    try:
        assert not db.is_sqlite
        assert db.writer_engine.dialect.driver == "psycopg"
        assert db.writer_engine.pool._pre_ping and db.reader_engine.pool._pre_ping
        assert db.reader_engine is not db.writer_engine
        assert "p@" not in repr(db)
    finally:
        db.dispose()


@pytest.mark.parametrize("url", ["mysql://u:p@h/db", "postgresql+psycopg2://u:p@h/db", "not a url"])
def test_unsupported_urls_are_refused_with_the_accepted_forms(url: str) -> None:
    with pytest.raises(InvalidArgument, match=r"postgresql\+psycopg://") as caught:
        Database(url)
    assert ":p@" not in str(caught.value)


def test_readiness_reads_the_stores_revision_quietly(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """What /readyz and the gRPC health loop ask every few seconds: the store's revision and
    the code's newest one, equal once migrated, the store's own otherwise, and not a line in
    the log for asking (Alembic's MigrationContext logged two each time)."""
    newest = head_revision()
    database = Database(store.url)
    try:
        with caplog.at_level(logging.DEBUG):
            assert database.schema_revisions() == (None, newest)  # nothing migrated yet
            database.migrate()
            caplog.clear()
            assert database.schema_revisions() == (newest, newest)
            assert [r.getMessage() for r in caplog.records if r.name.startswith("alembic")] == []

        def rewind(session: Session) -> None:
            session.connection().execute(text("UPDATE alembic_version SET version_num = '0001'"))

        asyncio.run(database.write(rewind))
        assert database.schema_revisions() == ("0001", newest)
    finally:
        database.dispose()
