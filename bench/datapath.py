"""Section `pgbench`: what the data path costs, as pgbench -S tps and latency on five paths.

Paths: direct to the server (the baseline), through PgBouncer (session pooling: what a mature
C proxy costs on the same machine), through Gatehouse (`connect`, strict audit, no masking
rule matching), through Gatehouse with a masking rule that matches every row, and straight
to the control plane's `--pg-listen` (strict audit, no local CLI hop). Runs are
interleaved (every path for one protocol and client count, then the next), so a machine that
slows down mid-run shifts all paths alike. Each run also records the CPU each process on the
path used, which is what tells where the time goes on a 2-core machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import TIMES, Config, Endpoint, Section, Table, Target, fmt, progress
from bench.gateway import MASKED, PLAIN, Gateway, check_masking
from bench.pgbench import find_pgbench, select_only
from bench.pgbouncer import PgBouncer, start_pgbouncer
from bench.procfs import CpuWindow
from bench.resources import Resources
from bench.stats import ratio

PATHS = ("direct", "pgbouncer", "gatehouse", "gatehouse-masked", "gatehouse-pg-listen")
PROTOCOLS = ("simple", "extended")
CLIENTS = (1, 8, 32)
_EVENTS = "gatehouse_audit_events_committed_total"
_COMMITS = "gatehouse_audit_commits_total"


def run(cfg: Config, res: Resources, section: Section) -> None:
    pgbench = find_pgbench()
    res.pgbench_tables(cfg.scale)
    direct = res.target()
    endpoints: dict[str, Endpoint] = {"direct": direct}
    pids: dict[str, dict[str, int]] = {"direct": {}}
    broken: dict[str, str] = {}
    bouncer: PgBouncer | None = None
    gateway: Gateway | None = None
    try:
        bouncer = start_pgbouncer(res.scratch("pgbouncer"), direct)
        endpoints["pgbouncer"] = bouncer.endpoint()
        pids["pgbouncer"] = {"pgbouncer": bouncer.pid}
    except Exception as exc:
        broken["pgbouncer"] = f"{type(exc).__name__}: {exc}"
    try:
        gateway = res.gateway()
        if not check_masking(gateway):
            raise RuntimeError("the masking rule did not mask abalance through pg-masked")
        for path, connection in (("gatehouse", PLAIN), ("gatehouse-masked", MASKED)):
            endpoints[path] = gateway.endpoint(connection)
            pids[path] = gateway.pids(connection)
        endpoints["gatehouse-pg-listen"] = gateway.pg_listen(PLAIN)
        pids["gatehouse-pg-listen"] = {
            k: v for k, v in gateway.pids(PLAIN).items() if k != "connect"
        }
    except Exception as exc:
        for path in PATHS[2:]:
            broken[path] = f"{type(exc).__name__}: {exc}"
    try:
        workdir = res.scratch("pgbench")
        warmup = 1.0 if cfg.quick else 3.0
        for path, endpoint in endpoints.items():
            progress(f"pgbench: warming up {path}")
            try:
                select_only(
                    pgbench,
                    endpoint,
                    protocol="extended",
                    clients=8,
                    duration=warmup,
                    workdir=workdir,
                    label=f"warmup-{path}",
                )
            except Exception as exc:
                broken[path] = f"warm-up failed: {type(exc).__name__}: {exc}"
        runs: list[dict[str, Any]] = []
        for protocol in PROTOCOLS:
            for clients in CLIENTS:
                for path in PATHS:
                    run_ = {"path": path, "protocol": protocol, "clients": clients}
                    runs.append(run_)
                    if path in broken:
                        run_["error"] = broken[path]
                        continue
                    _measure(cfg, pgbench, endpoints[path], pids[path], gateway, run_, workdir)
        _add_ratios(runs)
    finally:
        if bouncer is not None:
            bouncer.stop()
    section.results = {"runs": runs, "duration": cfg.duration, "scale": cfg.scale}
    section.tables = _tables(runs, cfg.scale)
    section.targets = _targets(runs)
    failed = [r for r in runs if "error" in r]
    if failed:
        reasons = sorted({f"{r['path']}: {r['error']}" for r in failed})
        section.fail(f"{len(failed)} of {len(runs)} runs failed: " + "; ".join(reasons))


def _measure(
    cfg: Config,
    pgbench: Path,
    endpoint: Endpoint,
    pids: dict[str, int],
    gateway: Gateway | None,
    run_: dict[str, Any],
    workdir: Path,
) -> None:
    label = f"{run_['path']} {run_['protocol']} c={run_['clients']}"
    audited = gateway is not None and run_["path"].startswith("gatehouse")
    try:
        before = gateway.metrics() if audited and gateway else {}
        window = CpuWindow(pids)
        window.start()
        result = select_only(
            pgbench,
            endpoint,
            protocol=run_["protocol"],
            clients=run_["clients"],
            duration=cfg.duration,
            workdir=workdir,
            label=label.replace(" ", "-"),
        )
        run_["cpu_cores"] = {k: round(v, 3) for k, v in window.stop().items()}
        run_.update(result.as_json())
        if audited and gateway:
            after = gateway.metrics()
            events = after.get(_EVENTS, 0) - before.get(_EVENTS, 0)
            commits = after.get(_COMMITS, 0) - before.get(_COMMITS, 0)
            run_["audit_events"] = int(events)
            run_["events_per_commit"] = round(events / commits, 1) if commits else None
            run_["events_per_statement"] = (
                round(events / result.transactions, 2) if result.transactions else None
            )
        progress(
            f"pgbench {label}: {result.tps:,.0f} tps, p50 {fmt(result.p50_ms, 3)} ms, "
            f"p99 {fmt(result.p99_ms, 3)} ms"
        )
    except Exception as exc:
        run_["error"] = f"{type(exc).__name__}: {exc}"
        progress(f"pgbench {label}: FAILED: {run_['error']}")


def _add_ratios(runs: list[dict[str, Any]]) -> None:
    """tps ratio and added latency against the direct run of the same protocol and clients."""
    baselines = {
        (r["protocol"], r["clients"]): r for r in runs if r["path"] == "direct" and "tps" in r
    }
    for r in runs:
        base = baselines.get((r["protocol"], r["clients"]))
        if base is None or "tps" not in r:
            continue
        r["tps_ratio"] = ratio(r["tps"], base["tps"])
        for q in ("p50", "p99"):
            mine, theirs = r.get(f"{q}_ms"), base.get(f"{q}_ms")
            r[f"added_{q}_ms"] = None if mine is None or theirs is None else mine - theirs


def _tables(runs: list[dict[str, Any]], scale: int) -> list[Table]:
    table = Table(
        f"pgbench -S, scale {scale}: tps and latency per path (ratios to direct, same "
        "protocol and clients)",
        [
            "protocol",
            "clients",
            "path",
            "tps",
            f"{TIMES} direct",
            "p50 ms",
            "p99 ms",
            "added p50 ms",
            "added p99 ms",
            "CPU (cores)",
            "gateway CPU µs/stmt",
        ],
    )
    for r in runs:
        if "error" in r:
            table.rows.append(
                [r["protocol"], r["clients"], r["path"], f"failed: {r['error']}"] + [""] * 7
            )
            continue
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in r.get("cpu_cores", {}).items())
        table.rows.append(
            [
                r["protocol"],
                r["clients"],
                r["path"],
                fmt(r["tps"], 0),
                fmt(r.get("tps_ratio"), 2, TIMES),
                fmt(r.get("p50_ms"), 3),
                fmt(r.get("p99_ms"), 3),
                "" if r["path"] == "direct" else fmt(r.get("added_p50_ms"), 3),
                "" if r["path"] == "direct" else fmt(r.get("added_p99_ms"), 3),
                cpu,
                "" if r["path"] == "direct" else fmt(cpu_per_statement(r), 0),
            ]
        )
    table.note = (
        "CPU is what each process on the path used during the run, in cores (2 cores in all, "
        "shared with pgbench and PostgreSQL); gateway CPU per statement sums them over tps "
        "(for --pg-listen: the control plane and the agent); added latency is p50/p99 minus "
        "direct's."
    )
    audit = Table(
        "Audit on the data path (Gatehouse runs)",
        ["protocol", "clients", "path", "events", "events/statement", "events/commit"],
    )
    for r in runs:
        if r["path"].startswith("gatehouse") and "audit_events" in r:
            audit.rows.append(
                [
                    r["protocol"],
                    r["clients"],
                    r["path"],
                    r["audit_events"],
                    fmt(r.get("events_per_statement")),
                    fmt(r.get("events_per_commit"), 1),
                ]
            )
    return [table, audit] if audit.rows else [table]


def _find(runs: list[dict[str, Any]], path: str, protocol: str, clients: int) -> dict[str, Any]:
    return next(
        (
            r
            for r in runs
            if r["path"] == path and r["protocol"] == protocol and r["clients"] == clients
        ),
        {},
    )


def _listen_target(runs: list[dict[str, Any]], clients: int, goal: float) -> Target:
    """Issue 14's goal for native clients straight to the control plane."""
    found: float | None = _find(runs, "gatehouse-pg-listen", "extended", clients).get("tps_ratio")
    return Target(
        f"pgbench -S extended via --pg-listen, {clients} clients, strict audit",
        f"≥ {goal:.2f}{TIMES} direct tps",
        fmt(found, 2, TIMES),
        None if found is None else found >= goal,
    )


def cpu_per_statement(run_: dict[str, Any]) -> float | None:
    """µs of CPU the gateway's processes on the path spent per statement (pgbench -S runs one
    statement per transaction)."""
    cores, tps = run_.get("cpu_cores"), run_.get("tps")
    if not cores or not tps:
        return None
    return float(sum(cores.values())) / float(tps) * 1e6


def _targets(runs: list[dict[str, Any]]) -> list[Target]:
    """Issue 14's goals, on the fast path (native clients straight to the control plane);
    `gatehouse connect` is reported in the table beside them, with no goal of its own."""
    listen = [_listen_target(runs, clients, goal) for clients, goal in ((8, 0.15), (32, 0.30))]
    cpu = cpu_per_statement(_find(runs, "gatehouse-pg-listen", "extended", 8))
    added = _find(runs, "gatehouse-pg-listen", "extended", 1).get("added_p50_ms")
    return [
        *listen,
        Target(
            "gateway CPU per statement via --pg-listen (extended, 8 clients; all its processes)",
            "≤ 250 µs",
            f"{fmt(cpu, 0)} µs",
            None if cpu is None else cpu <= 250,
        ),
        Target(
            "added p50 latency per statement via --pg-listen (extended, 1 client)",
            "≤ 1 ms",
            f"{fmt(added, 3)} ms",
            None if added is None else added <= 1.0,
        ),
    ]
