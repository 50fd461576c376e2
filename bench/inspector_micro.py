"""Micro-benchmark of the PostgreSQL inspector: µs of CPU per statement.

N sessions (coroutines), each with its own `PgInspector`, feed it what pgbench sends and what
the target answers, one statement after another, as the relay would
(controlplane/relay/service.py): the client's bytes go through `from_client` (framed, decided,
recorded, released), then the target's answer, with the marks the agent puts on it
(`agent.pg.relay.result_marks`), through `from_agent` (names confirmed, result recorded).

    python -m bench.inspector_micro                       # extended, 8 sessions, SQLite store
    python -m bench.inspector_micro --protocol simple --audit instant
    python -m bench.inspector_micro --profile > profile.txt

Protocols (pgbench's `-M`): ``extended`` sends Parse/Bind/Describe/Execute/Sync of the
unnamed statement for every statement; ``prepared`` Parses a named statement once, then sends
Bind/Describe/Execute/Sync; ``simple`` sends one Query. The target answers ParseComplete (not
for prepared), BindComplete, RowDescription, DataRow, CommandComplete, ReadyForQuery.

Audit (strict mode either way): ``sqlite`` commits into a throwaway SQLite store through the
real `AuditWriter` (WAL, synchronous=FULL, one writer thread: its CPU counts in the process's
and not in the loop thread's); ``instant`` is a stand-in writer that hands out seqs at once
and stores nothing, so the loop's CPU is the inspector's work and the harness's only.

``--side agent`` measures the agent's side of the same statements instead: per answer of the
target, what the relay does with one read (`agent.pg.relay`: frame it, mark it) and what the
session leg does to send it (`agent.mux`: the event, its batch, serialized), in one thread.

Printed per run: CPU µs per statement of the process (`time.process_time`) and of the event
loop's thread (`time.thread_time`), and the same for a pass-through that frames nothing (the
harness's own floor, to subtract). Each repetition starts with fresh inspectors and store.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.pg import relay
from agent.pg.relay import result_marks
from controlplane.audit.events import Draft, SessionContext
from controlplane.audit.writer import AuditWriter
from controlplane.auth.identity import Identity
from controlplane.relay.pg.inspector import PgInspector
from controlplane.store.database import Database
from gatehouse.v1 import agent_pb2, tunnel_pb2
from trail.chain import verify_chain
from wire import mux
from wire.pg import codes, framing
from wire.pg import messages as pgm

SQL = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;"
PREPARED_NAME = "P_0"  # what pgbench -M prepared names its first statement
ROWS = 1_000_000  # pgbench -s 10


@dataclass
class Run:
    protocol: str
    audit: str
    sessions: int
    statements: int
    seconds: float
    statements_per_s: float
    cpu_us: float  # process CPU per statement
    loop_cpu_us: float  # the event loop's thread, per statement
    floor_cpu_us: float  # the pass-through harness alone, per statement (loop thread)


class InstantAudit:
    """A stand-in for `AuditWriter`: seqs handed out at once, nothing stored or hashed."""

    def __init__(self) -> None:
        self.seq = 0
        self.events = 0

    async def commit_all(self, events: Sequence[Draft]) -> list[int]:
        first = self.seq + 1
        self.seq += len(events)
        self.events += len(events)
        return list(range(first, self.seq + 1))

    async def submit(self, event: Draft, *, durable: bool = False) -> asyncio.Future[int]:
        self.seq += 1
        self.events += 1
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        future.set_result(self.seq)
        return future

    def result_lost(self, session_id: str | None, event_type: str, error: object) -> None:
        raise AssertionError(f"a result was lost: {error}")


def context(k: int) -> SessionContext:
    identity = Identity(f"user-{k}", f"user{k}@example.com", ("dba",), None)
    return SessionContext(
        session_id=str(uuid.uuid4()),
        identity=identity,
        connection={"name": "pg-bench", "type": "postgres", "agent": "bench-agent"},
        audit_mode="strict",
        source={"ip": "127.0.0.1", "client": "pgbench"},
    )


def _frame(data: bytes) -> bytes:
    """The agent's Frame for these target bytes, serialized (parsed again per statement, as
    the control plane receives each one fresh from gRPC)."""
    messages = list(framing.MessageFramer(startup_phase=False).feed(data))
    return tunnel_pb2.Frame(data=data, marks=result_marks(messages)).SerializeToString()


def login() -> bytes:
    return _frame(
        pgm.authentication_ok()
        + pgm.parameter_status("server_version", "17.2")
        + pgm.parameter_status("client_encoding", "UTF8")
        + pgm.parameter_status("standard_conforming_strings", "on")
        + pgm.backend_key_data(4242, b"\x01\x02\x03\x04")
        + pgm.ready_for_query("I")
    )


def client_bytes(protocol: str, aid: int) -> bytes:
    if protocol == "simple":
        return pgm.query(SQL.replace("$1", str(aid)))
    extended = pgm.extended_query(SQL, [str(aid)])  # Parse, Bind, Describe, Execute, Sync
    if protocol == "extended":
        return extended
    # pgbench -M prepared: Bind of its named statement, then the same Describe/Execute/Sync.
    parse_length = 1 + int.from_bytes(extended[1:5], "big")
    bind_length = 1 + int.from_bytes(extended[parse_length + 1 : parse_length + 5], "big")
    unnamed_bind = extended[parse_length : parse_length + bind_length]
    body = b"\0" + PREPARED_NAME.encode() + unnamed_bind[6:]  # portal "", statement P_0
    return b"B" + (len(body) + 4).to_bytes(4, "big") + body + extended[parse_length + bind_length :]


_ANSWERS = {
    codes.PARSE: pgm.PARSE_COMPLETE,
    codes.BIND: b"2\0\0\0\4",
    codes.CLOSE: pgm.CLOSE_COMPLETE,
    codes.DESCRIBE: pgm.row_description([pgm.Column("abalance", type_oid=23, type_size=4)]),
    codes.SYNC: pgm.ready_for_query("I"),
}


def target_answer(forwarded: bytes, aid: int) -> bytes:
    """What PostgreSQL answers to the bytes the inspector forwarded (which may hold a Close and
    a Parse of its own before a Bind: decision 0033) as the agent frames it, serialized."""
    row = pgm.data_row([str(aid % 9973 - 4986).encode()]) + pgm.command_complete("SELECT 1")
    answer = bytearray()
    for message in framing.MessageFramer(startup_phase=False).feed(forwarded):
        if message.tag == codes.QUERY:
            answer += _ANSWERS[codes.DESCRIBE] + row + _ANSWERS[codes.SYNC]
        elif message.tag == codes.EXECUTE:
            answer += row
        else:
            answer += _ANSWERS[message.tag]
    return _frame(bytes(answer))


async def one_session(
    k: int, protocol: str, statements: int, audit: Any, gate: asyncio.Event, passthrough: bool
) -> None:
    inspector = PgInspector(context(k), audit, lambda: None)
    feed_client = inspector.from_client
    feed_agent = inspector.from_agent
    if passthrough:  # the harness's floor: the same calls, nothing framed or recorded

        async def feed_client(data: bytes) -> bytes:
            return data

        async def feed_agent(frame: tunnel_pb2.Frame) -> list[bytes]:
            return [frame.data]

    await feed_client(pgm.startup_message({"user": "bench", "database": "pg-bench"}))
    await feed_agent(tunnel_pb2.Frame.FromString(login()))
    clients = [client_bytes(protocol, 1 + (k * statements + n) % ROWS) for n in range(4)]
    if protocol == "prepared":  # its Parse and Sync once, outside the measurement
        parse = pgm.parse_message(PREPARED_NAME, SQL) + pgm.sync()
        await feed_client(parse)
        await feed_agent(
            tunnel_pb2.Frame.FromString(_frame(pgm.PARSE_COMPLETE + pgm.ready_for_query("I")))
        )
    answers: dict[bytes, bytes] = {}  # what was forwarded → the target's answer to it
    await gate.wait()
    for n in range(statements):
        sent = await feed_client(clients[n & 3])
        answer = answers.get(sent)
        if answer is None:
            answer = answers[sent] = target_answer(sent, k + n)
        await feed_agent(tunnel_pb2.Frame.FromString(answer))


async def one_run(
    protocol: str, audit_kind: str, sessions: int, statements: int, passthrough: bool, tmp: Path
) -> tuple[float, float, float, int]:
    """(seconds, process CPU, loop thread CPU, events) of one run."""
    db: Database | None = None
    audit: Any
    if audit_kind == "sqlite":
        db = Database(f"sqlite:///{tmp / f'inspector-{uuid.uuid4().hex[:8]}.db'}")
        db.migrate()
        audit = AuditWriter(db)
        audit.start()
    else:
        audit = InstantAudit()
    gate = asyncio.Event()
    tasks = [
        asyncio.create_task(one_session(k, protocol, statements, audit, gate, passthrough))
        for k in range(sessions)
    ]
    for _ in range(20):  # every session logged in and waits at the gate
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    started, cpu, loop_cpu = time.perf_counter(), time.process_time(), time.thread_time()
    gate.set()
    await asyncio.gather(*tasks)
    loop_cpu = time.thread_time() - loop_cpu
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    events = 0
    if db is not None:
        await audit.close()
        with db.read_session() as session:
            rows = session.connection().exec_driver_sql(
                "SELECT seq, body, hash FROM audit_events ORDER BY seq"
            )
            stored = [(int(seq), str(body), str(hash_)) for seq, body, hash_ in rows]
        db.dispose()
        report = verify_chain(stored)
        if report.broken is not None:
            raise SystemExit(f"the chain does not verify after the run: {report}")
        events = len(stored)
    elif isinstance(audit, InstantAudit):
        events = audit.events
    return seconds, cpu, loop_cpu, events


def measure(args: argparse.Namespace, tmp: Path) -> Run:
    def run(passthrough: bool) -> tuple[float, float, float, int]:
        coro = one_run(args.protocol, args.audit, args.sessions, args.statements, passthrough, tmp)
        if args.loop == "uvloop":
            import uvloop

            return uvloop.run(coro)
        return asyncio.run(coro)

    total = args.sessions * args.statements
    _, _, floor, _ = run(True)
    seconds, cpu, loop_cpu, events = run(False)
    if events < 2 * total:  # a db.query and a db.result per statement (SQLite: and warm-up)
        raise SystemExit(f"expected {2 * total} events or more, found {events}")
    return Run(
        protocol=args.protocol,
        audit=args.audit,
        sessions=args.sessions,
        statements=total,
        seconds=round(seconds, 3),
        statements_per_s=round(total / seconds),
        cpu_us=round(cpu / total * 1e6, 1),
        loop_cpu_us=round(loop_cpu / total * 1e6, 1),
        floor_cpu_us=round(floor / total * 1e6, 1),
    )


def agent_side(protocol: str, statements: int) -> tuple[float, float]:
    """(CPU µs per statement of the agent's relay and leg, the same for serializing a frame
    alone) over ``statements`` answers of the target, one read each."""
    forwarded = client_bytes(protocol, 1)
    answers = [tunnel_pb2.Frame.FromString(target_answer(forwarded, n)).data for n in range(16)]
    framer = framing.MessageFramer(startup_phase=False)
    marked_frame = relay.marked_frame
    batch_bytes, event_of = mux.batch_bytes, agent_pb2.AgentEvent
    cpu = time.thread_time()
    for n in range(statements):
        data = answers[n & 15]
        frame = marked_frame(data, framer.feed(data))
        batch_bytes([event_of(session=1, frame=frame)])
    cpu = time.thread_time() - cpu
    floor = time.thread_time()
    for n in range(statements):
        tunnel_pb2.Frame(data=answers[n & 15]).SerializeToString()
    floor = time.thread_time() - floor
    return cpu / statements * 1e6, floor / statements * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--protocol", choices=["extended", "prepared", "simple"], default="extended"
    )
    parser.add_argument("--audit", choices=["sqlite", "instant"], default="sqlite")
    parser.add_argument("--sessions", type=int, default=8)
    parser.add_argument("--statements", type=int, default=1000, help="per session")
    parser.add_argument("--repeat", type=int, default=3, help="runs; the median is printed")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="uvloop")
    parser.add_argument("--json", action="store_true", help="one JSON line per run")
    parser.add_argument(
        "--side",
        choices=["control-plane", "agent"],
        default="control-plane",
        help="whose work per statement to measure (agent: its relay's marks and leg's batch)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="one run under cProfile; prints its top functions"
    )
    args = parser.parse_args()
    if args.side == "agent":
        total = args.sessions * args.statements
        results = sorted(agent_side(args.protocol, total) for _ in range(args.repeat))
        cpu, floor = results[len(results) // 2]
        print(
            f"{args.protocol:8} agent statements={total:<6} CPU µs/statement: relay and leg "
            f"{cpu:.1f} (runs {[round(r[0], 1) for r in results]}), a bare frame {floor:.1f}",
            flush=True,
        )
        return
    with tempfile.TemporaryDirectory(prefix="inspector-micro-") as name:
        tmp = Path(name)
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            run = measure(args, tmp)
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(40)
            print(text.getvalue())
            print(json.dumps(asdict(run)))
            return
        runs = []
        for _ in range(args.repeat):
            run = measure(args, tmp)
            runs.append(run)
            if args.json:
                print(json.dumps(asdict(run)), flush=True)
    median = sorted(runs, key=lambda r: r.loop_cpu_us)[len(runs) // 2]
    print(
        f"{args.protocol:8} audit={args.audit:7} sessions={args.sessions:<3} "
        f"statements={median.statements:<6} {median.statements_per_s:>6}/s  "
        f"CPU µs/statement: process {median.cpu_us}, loop {median.loop_cpu_us} "
        f"(runs {[r.loop_cpu_us for r in runs]}), harness floor {median.floor_cpu_us}, "
        f"loop minus floor {round(median.loop_cpu_us - median.floor_cpu_us, 1)}",
        flush=True,
    )


if __name__ == "__main__":
    main()
