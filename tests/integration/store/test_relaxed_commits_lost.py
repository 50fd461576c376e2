"""Relaxed commits (results, async requests: nobody waits for their fsync, ADR 0026) that the
store loses while the control plane lives are appended again by the writer: a result is
never lost while the control plane lives.

The loss is made two ways: as the store's crash leaves it (the newest events gone, the head
back at the last one kept), on both stores; and by a real PostgreSQL crash, a backend killed
with SIGKILL, after which the server reinitialises and replays only the WAL it had written.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlmodel import col, select

from controlplane.audit import writer as writer_module
from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from devenv.postgres import PostgresServer, start_postgres
from tests.integration.store.conftest import APP_PASSWORD, APP_ROLE, Store, postgres_url
from tests.tampering import rewind
from trail.chain import verify_chain

Row = tuple[int, dict[str, object], str]


def stored(db: Database) -> list[Row]:
    """Every event as (seq, body, hash), in seq order."""
    with db.read_session() as session:
        query = select(EventRow.seq, EventRow.body, EventRow.hash).order_by(col(EventRow.seq))
        return [(seq, json.loads(body), hash_) for seq, body, hash_ in session.exec(query)]


def lose_newest(store: Store, db: Database, keep: int) -> None:
    """What a crash of the store's server leaves: the events after `keep` gone, the head at it."""
    if not store.is_postgres:
        assert db.sa_url.database is not None
        rewind(Path(db.sa_url.database), keep)
        return
    with store.admin() as conn:
        conn.execute("SET session_replication_role = replica")  # past the append-only trigger
        conn.execute("DELETE FROM audit_events WHERE seq > %s", (keep,))
        conn.execute(
            "UPDATE audit_chain_head SET seq = %s, "
            "hash = (SELECT hash FROM audit_events WHERE seq = %s) WHERE id = 1",
            (keep, keep),
        )


def check(db: Database) -> list[Row]:
    """The stored events, after checking their seqs are dense and their chain verifies."""
    with db.read_session() as session:
        query = select(EventRow.seq, EventRow.body, EventRow.hash).order_by(col(EventRow.seq))
        triples = [(seq, body, hash_) for seq, body, hash_ in session.exec(query)]
    assert [seq for seq, _, _ in triples] == list(range(1, len(triples) + 1))
    assert verify_chain(triples).broken is None
    return stored(db)


async def test_a_durable_commit_appends_again_what_the_store_lost_of_relaxed_ones(
    db: Database, store: Store
) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        query = await writer.commit(draft("db.query", session_id="s1", n=1))
        results = [
            await writer.submit(draft("db.result", session_id="s1", ref=query, n=n))
            for n in range(3)
        ]
        await asyncio.gather(*results)
        assert len(stored(db)) == 4
        lose_newest(store, db, query)
        await writer.commit(draft("db.query", session_id="s1", n=2))
    finally:
        await writer.close()
    rows = check(db)
    assert [(b["type"], b.get("n")) for _, b, _ in rows] == [
        ("db.query", 1),
        ("db.result", 0),
        ("db.result", 1),
        ("db.result", 2),
        ("db.query", 2),
    ]
    assert writer.recovered == 3


async def test_they_come_back_at_their_seqs_and_hashes_before_the_next_event(
    db: Database, store: Store
) -> None:
    """The next transaction, relaxed or not, appends them first: a follower that read them
    before the crash finds the same events at the same seqs."""
    writer = AuditWriter(db, sync_interval=60)
    writer.start()
    try:
        query = await writer.commit(draft("db.query", session_id="s1", n=1))
        await (await writer.submit(draft("db.result", session_id="s1", ref=query, n=1)))
        read_before = check(db)
        lose_newest(store, db, query)
        await (await writer.submit(draft("db.result", session_id="s1", ref=query, n=2)))
    finally:
        await writer.close()
    rows = check(db)
    assert rows[:2] == read_before
    assert [(b["type"], b.get("n")) for _, b, _ in rows[2:]] == [("db.result", 2)]
    assert writer.recovered == 1


async def test_the_timed_sync_appends_them_again_with_no_event_after_them(
    db: Database, store: Store
) -> None:
    writer = AuditWriter(db, sync_interval=0.2)
    writer.start()
    try:
        query = await writer.commit(draft("db.query", session_id="s1", n=1))
        await (await writer.submit(draft("db.result", session_id="s1", ref=query)))
        lose_newest(store, db, query)
        for _ in range(100):  # the sync is due 0.2 s after the relaxed commit
            if len(stored(db)) == 2:
                break
            await asyncio.sleep(0.05)
    finally:
        await writer.close()
    rows = check(db)
    assert [b["type"] for _, b, _ in rows] == ["db.query", "db.result"]
    assert writer.recovered == 1


async def test_events_a_durable_commit_covered_are_not_appended_twice(db: Database) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        query = await writer.commit(draft("db.query", n=1))
        await (await writer.submit(draft("db.result", ref=query)))
        await writer.commit(draft("db.query", n=2))
        await (await writer.submit(draft("db.result", ref=query + 2)))
        await writer.commit(draft("db.query", n=3))
    finally:
        await writer.close()
    assert len(check(db)) == 5 and writer.recovered == 0


# A server of its own: the test crashes it.
@pytest.fixture
def crashing_pg(tmp_path: Path) -> Iterator[PostgresServer]:
    server = start_postgres(tmp_path / "pg", roles={APP_ROLE: APP_PASSWORD}, log_statements=False)
    try:
        with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE store OWNER {APP_ROLE}")
            # Nothing writes WAL out on its own within the test: only a durable commit does.
            conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
            conn.execute("ALTER SYSTEM SET bgwriter_lru_maxpages = 0")
            conn.execute("ALTER SYSTEM SET checkpoint_timeout = '1h'")
            conn.execute("SELECT pg_reload_conf()")
        yield server
    finally:
        server.stop()


def crash(server: PostgresServer) -> None:
    """SIGKILL one backend: the postmaster ends every other, reinitialises shared memory (the
    WAL buffers with it) and replays the WAL written so far."""
    with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert pid is not None
        os.kill(pid[0], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while "all server processes terminated; reinitializing" not in server.log_file.read_text():
        assert time.monotonic() < deadline, "the server did not notice its backend's crash"
        time.sleep(0.05)
    while True:
        try:
            with psycopg.connect(server.admin_dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def count_in_store(server: PostgresServer, kind: str) -> int:
    with psycopg.connect(server.admin_dsn("store")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM audit_events WHERE body::json->>'type' = %s", (kind,)
        ).fetchone()
        assert row is not None
        return int(row[0])


async def test_results_a_postgresql_crash_lost_are_recorded_after_it(
    crashing_pg: PostgresServer,
) -> None:
    db = Database(postgres_url(crashing_pg, "store"))
    db.migrate()
    writer = AuditWriter(db, sync_interval=60)  # no timed sync within the test
    writer.start()
    try:
        query = await writer.commit(draft("db.query", n=1))
        await (await writer.submit(draft("db.result", ref=query)))
        crash(crashing_pg)
        lost = count_in_store(crashing_pg, "db.result") == 0
        # The writer's connection died with the server: the next commit fails closed, the one
        # after it runs on a new connection.
        for attempt in range(20):
            try:
                await writer.commit(draft("db.query", n=2))
                break
            except Exception:
                if attempt == 19:
                    raise
                await asyncio.sleep(0.2)
    finally:
        await writer.close()
        db.dispose()
    assert lost, "the crash kept the relaxed commit: nothing to recover (the test proves nothing)"
    assert count_in_store(crashing_pg, "db.result") == 1
    assert writer.recovered == 1


async def test_the_events_kept_are_bounded_by_a_durable_commit(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync that keeps failing cannot grow what the writer keeps: past MAX_UNSURE events,
    its next commit is durable."""
    monkeypatch.setattr(writer_module, "MAX_UNSURE", 2)
    writer = AuditWriter(db, sync_interval=60)
    writer.start()
    try:
        durable = []
        for n in range(6):
            await (await writer.submit(draft("db.result", n=n)))
            durable.append(writer.durable_commits)
    finally:
        await writer.close()
    assert durable == [0, 0, 1, 1, 1, 2]  # the third and the sixth wait for the disk
