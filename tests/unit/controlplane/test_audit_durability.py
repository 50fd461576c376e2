"""One durable commit per statement (ADR 0026), observed where it happens: the fdatasync calls
the process makes (strace), the store after the process is killed, the store while a session
is idle, and the connection the writer hands back to the pool."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database
from tests.unit.controlplane.test_audit_writer import stored
from trail.chain import verify_chain

REPO = Path(__file__).resolve().parents[3]

# A control plane's writer: `STATEMENTS` strict statements, each a committed db.query and a
# submitted db.result whose own commit is awaited before the next query (so every result
# commits alone, as behind a client that waits for its answer). Then the process is killed.
STATEMENTS = 20
CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from controlplane.audit.events import draft
    from controlplane.audit.writer import AuditWriter
    from controlplane.store.database import Database

    async def main(path: str, statements: int, sync_interval: float) -> None:
        writer = AuditWriter(Database(f"sqlite:///{path}"), sync_interval=sync_interval)
        writer.start()
        for n in range(statements):
            seq = await writer.commit(draft("db.query", n=n))
            await (await writer.submit(draft("db.result", ref=seq)))
        if not statements:
            await (await writer.submit(draft("db.result", ref=0)))
            deadline = asyncio.get_running_loop().time() + 30
            while writer.syncs == 0 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.01)
        print(writer.commits, writer.durable_commits, writer.syncs, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # no close(): nothing more is written or synced

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
    """
)


def traced_child(tmp_path: Path, db_path: Path, statements: int, sync_interval: float) -> str:
    """Run CHILD under strace; returns what it printed. The store is migrated beforehand, so
    every sync traced is the writer's."""
    strace = shutil.which("strace")
    assert strace, "strace is installed by deploy/system-deps.sh"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    trace = tmp_path / "trace"
    command = [strace, "-f", "-y", "-e", "trace=fdatasync,fsync", "-o", str(trace)]
    command += [sys.executable, str(script), str(db_path), str(statements), str(sync_interval)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert done.returncode in (-9, 128 + 9), done.stderr  # it killed itself, as planned
    assert done.stdout.strip(), done.stderr
    return done.stdout


def wal_syncs(trace: str, db_path: Path) -> int:
    return len(re.findall(rf"f(?:data)?sync\(\d+<{re.escape(str(db_path))}-wal>\)", trace))


def test_a_statement_costs_one_fsync_and_its_relaxed_result_survives_a_kill(
    db: Database, db_path: Path, tmp_path: Path
) -> None:
    printed = traced_child(tmp_path, db_path, STATEMENTS, sync_interval=600)

    commits, durable, _ = (int(n) for n in printed.split())
    assert (commits, durable) == (2 * STATEMENTS, STATEMENTS)
    # One WAL sync per statement (the query's), not two: the results rode without one. The
    # first write to a new WAL may add one more.
    trace = (tmp_path / "trace").read_text()
    assert STATEMENTS <= wal_syncs(trace, db_path) <= STATEMENTS + 1, trace
    # Killed right after its last result's relaxed commit: nothing committed is lost.
    rows = stored(db_path)
    assert [seq for seq, _, _ in rows] == list(range(1, 2 * STATEMENTS + 1))
    assert '"type":"db.result"' in rows[-1][1]
    report = verify_chain(rows)
    assert report.broken is None and report.checked == 2 * STATEMENTS


def test_a_lone_relaxed_commit_is_synced_within_the_sync_interval(
    db: Database, db_path: Path, tmp_path: Path
) -> None:
    printed = traced_child(tmp_path, db_path, 0, sync_interval=0.2)

    commits, durable, syncs = (int(n) for n in printed.split())
    assert (commits, durable, syncs) == (1, 0, 1)
    # The relaxed commit itself did not sync the WAL; the writer's timed sync did, once.
    assert wal_syncs((tmp_path / "trace").read_text(), db_path) == 1
    assert len(stored(db_path)) == 1


async def test_an_idle_sessions_last_result_reaches_the_store_without_another_event(
    db: Database, db_path: Path
) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        seq = await writer.commit(draft("db.query", session_id="s-1", n=1))
        await writer.submit(draft("db.result", session_id="s-1", ref=seq))  # nobody awaits it
        async with asyncio.timeout(10):  # woken by each commit, as followers are
            while True:
                committed = writer.commit_signal()  # taken before reading the store
                if len(rows := stored(db_path)) == 2:
                    break
                await committed.wait()
        assert [seq for seq, _, _ in rows] == [1, 2]
        assert '"type":"db.result"' in rows[1][1] and f'"ref":{seq}' in rows[1][1]
    finally:
        await writer.close()


async def test_the_pool_gets_its_connection_back_at_synchronous_full(db: Database) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        await (await writer.submit(draft("db.result", ref=0)))  # a relaxed commit
        assert writer.durable_commits == 0
    finally:
        await writer.close()

    def level(session: object) -> int:
        from sqlmodel import Session, text

        assert isinstance(session, Session)
        return int(session.connection().execute(text("PRAGMA synchronous")).scalar_one())

    assert await db.write(level) == 2  # FULL, for every other write the pool serves


async def test_a_checkpoint_appended_to_a_relaxed_batch_commits_durably(db: Database) -> None:
    writer = AuditWriter(db, checkpoint_every=3)
    heard: list[dict[str, object]] = []
    writer.add_checkpoint_sink(heard.append)
    writer.start(SigningKey.generate())
    try:
        futures = [await writer.submit(draft("db.result", ref=n)) for n in range(3)]
        await asyncio.gather(*futures)
        assert writer.commits == 1 and writer.durable_commits == 1
        assert [c["event_seq"] for c in heard] == [4]
        # Results alone afterwards: relaxed again.
        await (await writer.submit(draft("db.result", ref=9)))
        assert writer.commits == 2 and writer.durable_commits == 1
    finally:
        await writer.close()
