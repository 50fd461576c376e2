"""Section `audit`: audit events committed per second by the real AuditWriter, strict.

In-process, on the control plane's own code: many concurrent "sessions" each loop on
`AuditWriter.commit()`, so each waits for its own event's transaction before its next one,
exactly like a strict-mode statement. Group commit lets one transaction (one fsync) serve all
the events queued meanwhile. Both stores: SQLite (the embedded default, WAL and
synchronous=FULL) and PostgreSQL (a throwaway cluster with fsync and full_page_writes turned
back on, since devenv's clusters run without durability).

Baseline: the store's ceiling for the same events — `append_events` called in a loop with full
batches of the writer's maximum size, one transaction each, nobody waiting. The ratio says how
much of what the store can take the writer delivers to waiting sessions. Beside each level: the
process CPU per event (all threads: the loop, the writer's thread) and, for SQLite, the disk's
fdatasync latency measured in the same run, right before the level.

A second run per level is shaped like a strict statement: `commit()` of its `db.query`, then
`submit()` of its `db.result` without waiting (as the relay does), so the table shows how many
durable commits (fsyncs) a statement costs and how many statements per second that leaves.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bench.common import TIMES, Config, Section, Table, Target, fmt, progress
from bench.report import sync_latency_ms
from bench.resources import Resources
from bench.stats import percentile, rate, ratio
from controlplane.audit.checkpoints import DEFAULT_CHECKPOINT_EVERY, SigningKey
from controlplane.audit.events import Draft, SessionContext, draft
from controlplane.audit.writer import AuditWriter, append_events
from controlplane.auth.identity import Identity
from controlplane.store.database import Database
from devenv.postgres import start_postgres

T = TypeVar("T")
BATCH = 1024  # AuditWriter's default max_batch
SESSION = SessionContext(
    session_id="00000000-0000-7000-8000-000000000000",
    identity=Identity(subject="bench@example.com", email="bench@example.com", groups=("dba",)),
    connection={"name": "pg", "type": "postgres", "agent": "bench"},
    audit_mode="strict",
    source={"ip": "127.0.0.1", "client": "pgbench"},
)


def query_event(n: int) -> Draft:
    """An event shaped like the relay's `db.query` for a pgbench -S statement."""
    return draft(
        "db.query",
        session=SESSION,
        request={
            "statement": "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
            "protocol": "extended",
            "params": [str(n)],
        },
        decision={"result": "allow"},
    )


def result_event(ref: int) -> Draft:
    """An event shaped like the relay's `db.result` for a pgbench -S statement."""
    return draft(
        "db.result",
        session=SESSION,
        ref=ref,
        result={"rows": 1, "duration_ms": 0.2, "error": None, "masked": False, "command": "SELECT"},
    )


def run_loop(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """uvloop where installed, as the control plane runs."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        return asyncio.run(factory())
    result: T = uvloop.run(factory())
    return result


def ceiling(db: Database, duration: float) -> dict[str, float]:
    """Full batches appended back to back in one thread, the drafts made beforehand: the most
    the writer's thread could commit. What making the drafts costs is measured apart."""
    signer = SigningKey.generate()
    events, appending, drafting = 0, 0.0, 0.0
    deadline = time.perf_counter() + duration
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        drafts = [query_event(events + i) for i in range(BATCH)]
        drafted = time.perf_counter()
        with db.write_session() as session, session.begin():
            append_events(session, drafts, signer=signer, checkpoint_every=DEFAULT_CHECKPOINT_EVERY)
        appending += time.perf_counter() - drafted
        drafting += drafted - started
        events += len(drafts)
    return {
        "events_per_s": rate(events, appending),
        "events": events,
        "batch": BATCH,
        "append_us_per_event": appending / events * 1e6,
        "draft_us_per_event": drafting / events * 1e6,
    }


async def strict_sessions(
    db: Database, sessions: int, duration: float, *, with_results: bool = False
) -> dict[str, Any]:
    """`sessions` tasks, each committing one event at a time until the deadline; with
    `with_results`, each statement is a committed `db.query` then a submitted `db.result`."""
    writer = AuditWriter(db, checkpoint_every=DEFAULT_CHECKPOINT_EVERY)
    writer.start(SigningKey.generate())
    waits: list[float] = []
    clock = time.perf_counter  # uvloop's loop.time() counts whole milliseconds
    deadline = clock() + duration

    async def session(index: int) -> int:
        done = 0
        while clock() < deadline:
            started = clock()
            seq = await writer.commit(query_event(index * 1_000_000 + done))
            waits.append(clock() - started)
            if with_results:
                await writer.submit(result_event(seq))
                # The client's next statement comes a round trip later: the writer takes the
                # result on its own first, as it does behind a real client.
                await asyncio.sleep(0)
            done += 1
        return done

    durable_before = writer.durable_commits
    cpu_started = time.process_time()
    started = time.perf_counter()
    counts = await asyncio.gather(*(session(i) for i in range(sessions)))
    elapsed = time.perf_counter() - started
    await writer.close()  # the results still queued are committed, and counted
    cpu = time.process_time() - cpu_started
    commits, events = writer.commits, writer.committed
    durable = writer.durable_commits - durable_before
    statements = sum(counts)
    return {
        "sessions": sessions,
        "events_per_s": rate(statements, elapsed),
        "events": events,
        "events_per_commit": events / commits if commits else 0.0,
        "durable_commits": durable,
        "durable_commits_per_statement": durable / statements if statements else 0.0,
        "cpu_us_per_event": cpu / events * 1e6 if events else 0.0,
        "commit_wait_p50_ms": percentile(waits, 50) * 1000 if waits else 0.0,
        "commit_wait_p99_ms": percentile(waits, 99) * 1000 if waits else 0.0,
    }


def measure_store(cfg: Config, url: str, sync_dir: Path | None) -> dict[str, Any]:
    """The ceiling, then each level: strict events alone, then strict statements (query and
    result). `sync_dir`: where to measure the disk's fdatasync latency before each level."""
    db = Database(url)
    try:
        db.migrate()
        base = ceiling(db, min(cfg.duration, 10.0))
        levels, statements = [], []
        for sessions in cfg.audit_sessions:
            sync = sync_latency_ms(sync_dir) if sync_dir is not None else None
            level = run_loop(partial(strict_sessions, db, sessions, cfg.duration))
            level["ratio_to_ceiling"] = ratio(level["events_per_s"], base["events_per_s"]) or 0.0
            level["sync_ms"] = sync
            levels.append(level)
            progress(
                f"audit: {sessions} sessions: {level['events_per_s']:,.0f} events/s "
                f"({level['events_per_commit']:.0f} per commit, "
                f"{level['cpu_us_per_event']:.0f} µs CPU each)"
            )
            mixed = run_loop(
                partial(strict_sessions, db, sessions, cfg.duration, with_results=True)
            )
            statements.append(mixed)
            progress(
                f"audit: {sessions} sessions, query+result: {mixed['events_per_s']:,.0f} "
                f"statements/s ({mixed['durable_commits_per_statement']:.2f} durable commits each)"
            )
        return {"ceiling": base, "levels": levels, "statements": statements}
    finally:
        db.dispose()


def durable_postgres(base: Path) -> tuple[str, Any]:
    """A throwaway cluster with durability back on (what a production store would have)."""
    password = secrets.token_urlsafe(16)
    server = start_postgres(
        base,
        roles={"gatehouse": password},
        databases={"gatehouse": "gatehouse"},
        log_statements=False,
    )
    import psycopg

    with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET fsync = on")
        conn.execute("ALTER SYSTEM SET full_page_writes = on")
        conn.execute("SELECT pg_reload_conf()")
    url = f"postgresql+psycopg://gatehouse:{password}@{server.host}:{server.port}/gatehouse"
    return url, server


def _sync(level: dict[str, Any]) -> str:
    sync = level.get("sync_ms")
    return "" if not sync else f"{sync['p50']:.2f} / {sync['p90']:.2f}"


def run(cfg: Config, res: Resources, section: Section) -> None:
    stores: dict[str, dict[str, Any]] = {}
    errors = []
    sqlite_dir = res.scratch("audit-sqlite")
    progress("audit: SQLite store")
    try:
        stores["sqlite"] = measure_store(
            cfg, f"sqlite:///{sqlite_dir / 'gatehouse.db'}", sqlite_dir
        )
    except Exception as exc:
        errors.append(f"sqlite: {type(exc).__name__}: {exc}")
    progress("audit: PostgreSQL store")
    server = None
    try:
        url, server = durable_postgres(res.base / "audit-pg")
        stores["postgresql"] = measure_store(cfg, url, None)
    except Exception as exc:
        errors.append(f"postgresql: {type(exc).__name__}: {exc}")
    finally:
        if server is not None:
            server.stop()
    section.results = {"stores": stores, "duration": cfg.duration}
    table = Table(
        "Audit events committed per second, strict (each session waits for its own commit)",
        [
            "store",
            "sessions",
            "events/s",
            f"{TIMES} store ceiling",
            "events/commit",
            "CPU µs/event",
            "commit wait p50 ms",
            "commit wait p99 ms",
            "fdatasync p50 / p90 ms",
        ],
    )
    mixed = Table(
        "Strict statements: db.query committed, then db.result submitted (not awaited)",
        [
            "store",
            "sessions",
            "statements/s",
            "events/commit",
            "durable commits/statement",
            "CPU µs/event",
            "query commit wait p50 ms",
        ],
    )
    for store, found in stores.items():
        table.rows.append(
            [
                store,
                "ceiling",
                fmt(found["ceiling"]["events_per_s"], 0),
                f"1.00{TIMES}",
                BATCH,
                fmt(found["ceiling"]["append_us_per_event"], 1),
                "",
                "",
                "",
            ]
        )
        for level in found["levels"]:
            table.rows.append(
                [
                    store,
                    level["sessions"],
                    fmt(level["events_per_s"], 0),
                    fmt(level["ratio_to_ceiling"], 2, TIMES),
                    fmt(level["events_per_commit"], 0),
                    fmt(level["cpu_us_per_event"], 1),
                    fmt(level["commit_wait_p50_ms"], 2),
                    fmt(level["commit_wait_p99_ms"], 2),
                    _sync(level),
                ]
            )
        for level in found.get("statements", []):
            mixed.rows.append(
                [
                    store,
                    level["sessions"],
                    fmt(level["events_per_s"], 0),
                    fmt(level["events_per_commit"], 1),
                    fmt(level["durable_commits_per_statement"], 2),
                    fmt(level["cpu_us_per_event"], 1),
                    fmt(level["commit_wait_p50_ms"], 2),
                ]
            )
    table.note = (
        "ceiling: the same events appended in full batches of 1,024 back to back by one "
        "thread, nobody waiting, the drafts made beforehand (append_events alone; its CPU "
        "column is the append's µs per event). CPU µs/event: the whole process (event loop "
        "and writer thread) over the events committed. fdatasync: a 4 KiB append and its "
        "fdatasync in the store's directory, measured right before the level (SQLite only)."
    )
    section.tables = [table, mixed]
    sqlite_best = max(
        (level["events_per_s"] for level in stores.get("sqlite", {}).get("levels", [])),
        default=None,
    )
    section.targets = [
        Target(
            "audit events committed on SQLite, group commit, strict",
            "≥ 20,000 events/s",
            f"{fmt(sqlite_best, 0)} events/s",
            None if sqlite_best is None else sqlite_best >= 20_000,
        )
    ]
    for error in errors:
        section.fail(error)
