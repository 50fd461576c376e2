"""pgbench as the load generator: initialise once, then `-S` runs with a per-transaction log.

tps comes from pgbench's own summary; p50/p99 come from its latency log (`-l`), one line per
transaction, because the summary only has an average. `-S` runs one SELECT per transaction,
so a transaction's latency is the statement's latency.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import Endpoint, tail
from bench.stats import percentile_sorted

_TPS_RE = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.M)
_PROCESSED_RE = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED_RE = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LATENCY_RE = re.compile(r"^latency average = ([0-9.]+) ms", re.M)


class PgbenchError(RuntimeError):
    """pgbench failed or printed no summary; the message carries its output."""


@dataclass(frozen=True)
class Summary:
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float | None


@dataclass(frozen=True)
class RunResult:
    tps: float
    transactions: int
    failed: int
    latency_avg_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    samples: int

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def find_pgbench() -> Path:
    """The server's own pgbench (Debian keeps it with the server binaries), else PATH."""
    from devenv.postgres import PostgresNotFound, find_pg_bindir

    try:
        candidate = find_pg_bindir() / "pgbench"
        if candidate.is_file():
            return candidate
    except PostgresNotFound:
        pass
    found = shutil.which("pgbench")
    if found is None:
        raise PgbenchError("pgbench not found: install postgresql (make system-deps)")
    return Path(found)


def parse_summary(text: str) -> Summary:
    """tps, transactions, failures and average latency from pgbench's closing summary."""
    tps = _TPS_RE.search(text)
    processed = _PROCESSED_RE.search(text)
    if tps is None or processed is None:
        raise PgbenchError(f"pgbench printed no summary:\n{tail(text)}")
    failed = _FAILED_RE.search(text)
    latency = _LATENCY_RE.search(text)
    return Summary(
        tps=float(tps[1]),
        transactions=int(processed[1]),
        failed=int(failed[1]) if failed else 0,
        latency_avg_ms=float(latency[1]) if latency else None,
    )


def parse_latency_log(lines: Iterable[str]) -> tuple[list[int], int]:
    """Latencies in µs of the committed transactions, and how many failed or were skipped.

    Each line is `client_id transaction_no time script_no time_epoch time_us [...]`; `time` is
    the transaction's latency in µs, or `failed`/`skipped` (PostgreSQL 15 and later).
    """
    latencies: list[int] = []
    other = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        value = fields[2]
        if value.isdigit():
            latencies.append(int(value))
        else:
            other += 1
    return latencies, other


def latency_percentiles(latencies_us: list[int]) -> tuple[float | None, float | None]:
    """p50 and p99 in ms."""
    if not latencies_us:
        return None, None
    ordered = sorted(latencies_us)
    return percentile_sorted(ordered, 50) / 1000, percentile_sorted(ordered, 99) / 1000


def _run(
    command: list[str], env: Mapping[str, str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def initialize(pgbench: Path, endpoint: Endpoint, scale: int, workdir: Path) -> None:
    """`pgbench -i -s scale` directly against the server (once; every path reads the same)."""
    workdir.mkdir(parents=True, exist_ok=True)
    result = _run(
        [str(pgbench), "-i", "-s", str(scale), "-q", "--unlogged-tables"],
        endpoint.libpq_env(),
        workdir,
        timeout=600,
    )
    if result.returncode != 0:
        raise PgbenchError(f"pgbench -i failed:\n{tail(result.stdout + result.stderr)}")


def select_only(
    pgbench: Path,
    endpoint: Endpoint,
    *,
    protocol: str,
    clients: int,
    duration: float,
    workdir: Path,
    label: str,
) -> RunResult:
    """One `pgbench -S -n` run of `duration` seconds; its latency log is read, then removed."""
    if protocol not in ("simple", "extended"):
        raise ValueError(f"protocol must be simple or extended, not {protocol!r}")
    workdir.mkdir(parents=True, exist_ok=True)
    threads = max(1, min(clients, os.cpu_count() or 1))
    prefix = f"lat-{label}-{time.monotonic_ns()}"
    command = [
        str(pgbench),
        "-S",
        "-n",  # no VACUUM first: pgbench_* need not be vacuumed through a proxy
        "-M",
        protocol,
        "-c",
        str(clients),
        "-j",
        str(threads),
        "-T",
        str(max(1, round(duration))),
        "-l",
        f"--log-prefix={prefix}",
    ]
    result = _run(command, endpoint.libpq_env(), workdir, timeout=duration + 120)
    logs = sorted(workdir.glob(f"{prefix}.*"))
    try:
        if result.returncode != 0:
            raise PgbenchError(
                f"pgbench exited with {result.returncode}:\n{tail(result.stdout + result.stderr)}"
            )
        summary = parse_summary(result.stdout)
        latencies: list[int] = []
        for path in logs:
            with path.open(encoding="ascii", errors="replace") as lines:
                found, _ = parse_latency_log(lines)
            latencies.extend(found)
    finally:
        for path in logs:
            path.unlink(missing_ok=True)
    p50, p99 = latency_percentiles(latencies)
    return RunResult(
        tps=summary.tps,
        transactions=summary.transactions,
        failed=summary.failed,
        latency_avg_ms=summary.latency_avg_ms,
        p50_ms=p50,
        p99_ms=p99,
        samples=len(latencies),
    )
