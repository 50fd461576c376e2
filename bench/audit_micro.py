"""Micro-benchmark of the strict audit path: committed events/s of one `AuditWriter`.

N sessions (coroutines) each commit M events one after another, awaiting `commit()` of their
own event every time, exactly as strict mode does before forwarding a statement. The number is
events whose commit the caller saw, divided by the wall time of the whole run; the latency is
what one `commit()` took. Each repetition starts from a fresh, migrated store, so runs compare.

    python bench/audit_micro.py --store sqlite --sessions 1,100,1000 --events 20
    python bench/audit_micro.py --store postgres --sessions 100 --events 30 --repeat 5

SQLite is a file in a temporary directory (WAL, synchronous=FULL, as the control plane runs
it). PostgreSQL is a throwaway cluster from `devenv.postgres`; that cluster runs with fsync off
for tests, so this script turns fsync back on (`--pg-fsync off` to keep the test setting):
a strict commit is only worth measuring when it reaches the disk. The events are `db.query`
events of a realistic size (session context, identity, statement and parameters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a file: make the repository importable
    sys.path.insert(0, str(REPO))

from controlplane.audit.events import SessionContext, draft  # noqa: E402
from controlplane.audit.writer import AuditWriter  # noqa: E402
from controlplane.auth.identity import Identity  # noqa: E402
from controlplane.store.database import Database  # noqa: E402
from trail.chain import verify_chain  # noqa: E402

ROLE, PASSWORD = "gatehouse", "bench-pw"


@dataclass
class Run:
    store: str
    loop: str
    sessions: int
    events: int
    seconds: float
    events_per_s: float
    cpu_us_per_event: float
    p50_ms: float
    p99_ms: float
    batches: int
    mean_batch: float


def make_context(k: int) -> SessionContext:
    identity = Identity(f"user-{k % 17}", f"user{k % 17}@example.com", ("dba", "oncall"), "devin")
    return SessionContext(
        session_id=str(uuid.uuid4()),
        identity=identity,
        connection={"name": "pg-prod", "type": "postgres", "agent": "vpc-eu-1"},
        audit_mode="strict",
        source={"ip": "10.0.0.7", "client": "psql"},
    )


async def one_run(url: str, store: str, loop_name: str, sessions: int, events: int) -> Run:
    db = Database(url)
    db.migrate()
    writer = AuditWriter(db)
    writer.start()
    latencies: list[float] = []
    try:
        # Warm the connection and the statement caches outside the measurement.
        await writer.commit(draft("bench.warmup"))
        start_commits = writer.commits
        gate = asyncio.Event()

        async def session(k: int) -> None:
            ctx = make_context(k)
            await gate.wait()
            for n in range(events):
                event = draft(
                    "db.query",
                    session=ctx,
                    request={
                        "statement": "UPDATE orders SET state = $1 WHERE id = $2",
                        "params": ["paid", str(k * events + n)],
                    },
                    decision={"result": "allow"},
                )
                started = time.perf_counter()
                await writer.commit(event)
                latencies.append(time.perf_counter() - started)

        tasks = [asyncio.create_task(session(k)) for k in range(sessions)]
        await asyncio.sleep(0)
        started, cpu_started = time.perf_counter(), time.process_time()
        gate.set()
        await asyncio.gather(*tasks)
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        batches = writer.commits - start_commits
    finally:
        await writer.close()
    total = sessions * events
    check = _stored(db)
    db.dispose()
    report = verify_chain(check)
    if report.broken is not None or report.checked != total + 1:
        raise SystemExit(f"the chain does not verify after the run: {report}")
    latencies.sort()
    return Run(
        store=store,
        loop=loop_name,
        sessions=sessions,
        events=events,
        seconds=round(seconds, 4),
        events_per_s=round(total / seconds),
        cpu_us_per_event=round(cpu / total * 1e6, 1),
        p50_ms=round(latencies[len(latencies) // 2] * 1000, 3),
        p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 3),
        batches=batches,
        mean_batch=round(total / max(batches, 1), 1),
    )


def _stored(db: Database) -> list[tuple[int, str, str]]:
    with db.read_session() as session:
        rows = session.connection().exec_driver_sql(
            "SELECT seq, body, hash FROM audit_events ORDER BY seq"
        )
        return [(int(seq), str(body), str(hash_)) for seq, body, hash_ in rows]


@contextmanager
def sqlite_stores(base: Path) -> Iterator[Callable[[], str]]:
    count = 0

    def fresh() -> str:
        nonlocal count
        count += 1
        return f"sqlite:///{base / f'audit-{count}.db'}"

    yield fresh


@contextmanager
def postgres_stores(base: Path, fsync: bool) -> Iterator[Callable[[], str]]:
    import psycopg
    from psycopg import sql

    from devenv.postgres import start_postgres

    server = start_postgres(base / "pg", roles={ROLE: PASSWORD}, log_statements=False)
    try:
        with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
            setting = "on" if fsync else "off"
            conn.execute(f"ALTER SYSTEM SET fsync = {setting}")
            conn.execute(f"ALTER SYSTEM SET full_page_writes = {setting}")
            conn.execute("SELECT pg_reload_conf()")

        def fresh() -> str:
            name = f"bench_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(server.admin_dsn(), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(ROLE)
                    )
                )
            return server.dsn(ROLE, PASSWORD, name)

        yield fresh
    finally:
        server.stop()


def run_loop(loop_name: str, coro: object) -> Run:
    if loop_name == "uvloop":
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--sessions", default="100", help="concurrent sessions; a comma list runs each"
    )
    parser.add_argument("--events", type=int, default=20, help="strict commits per session")
    parser.add_argument("--repeat", type=int, default=3, help="runs per point; the median wins")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--pg-fsync", choices=["on", "off"], default="on")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    args = parser.parse_args()
    points = [int(s) for s in args.sessions.split(",")]

    with tempfile.TemporaryDirectory(prefix="audit-micro-") as tmp:
        base = Path(tmp)
        stores = (
            sqlite_stores(base)
            if args.store == "sqlite"
            else postgres_stores(base, args.pg_fsync == "on")
        )
        with stores as fresh:
            for sessions in points:
                runs = []
                for _ in range(args.repeat):
                    run = run_loop(
                        args.loop, one_run(fresh(), args.store, args.loop, sessions, args.events)
                    )
                    runs.append(run)
                    if args.json:
                        print(json.dumps(asdict(run)), flush=True)
                median = sorted(runs, key=lambda r: r.events_per_s)[len(runs) // 2]
                rates = [r.events_per_s for r in runs]
                print(
                    f"{args.store:8} {args.loop:7} sessions={sessions:<5} events={args.events:<4} "
                    f"median {median.events_per_s:>7} ev/s  (runs {rates})  "
                    f"cpu {statistics.median(r.cpu_us_per_event for r in runs)} us/ev  "
                    f"p50 {median.p50_ms} ms  p99 {median.p99_ms} ms  "
                    f"batches {median.batches} of {median.mean_batch}  "
                    f"spread {statistics.pstdev(rates) / statistics.mean(rates):.0%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
