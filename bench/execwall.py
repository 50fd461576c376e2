"""Section `exec`: what an AI agent pays per call, `gatehouse exec pg -c 'select 1'` against
`psql -c 'select 1'` on the same server, as wall time of whole commands.

Whole commands, because that is what a tool-calling agent runs: interpreter start, imports,
login to the control plane, session open, the statement, the audit commits and exit. Runs
alternate between the commands (after a warm-up of each), so all see the same machine.
`python -c pass` is timed alongside as the floor any Python CLI pays before its first line,
with and without cached bytecode.

`exec` is timed twice: with the bytecode Python caches (`__pycache__`, what a second call
finds), and with none, as on a read-only install built without it or the first call after
an upgrade: PYTHONPYCACHEPREFIX names an empty directory and PYTHONDONTWRITEBYTECODE keeps
it empty, so every module that is not frozen into the interpreter (the standard library's
too, grpc's, protobuf's, ours) is compiled from source on every call.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.common import TIMES, Config, Section, Table, Target, fmt, progress, tail
from bench.gateway import PLAIN
from bench.resources import Resources
from bench.stats import percentile, ratio

SQL = "select 1"
#: Issue 14: `gatehouse exec pg -c 'select 1'` at most this many times `psql -c`'s wall time,
#: with and without cached bytecode.
TARGET = 3.0


def gatehouse_command() -> list[str]:
    """The installed `gatehouse` script next to this interpreter (what a user's PATH finds)."""
    script = Path(sys.executable).parent / "gatehouse"
    if script.is_file():
        return [str(script)]
    found = shutil.which("gatehouse")
    return [found] if found else [sys.executable, "-m", "cli.main"]


def time_command(argv: Sequence[str], env: Mapping[str, str]) -> float:
    """Wall seconds of one run; a failing command is an error, not a fast sample."""
    started = time.perf_counter()
    result = subprocess.run(
        list(argv),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(
            f"{argv[0]} exited with {result.returncode}: {tail(result.stderr or result.stdout)}"
        )
    return elapsed


def summarize(samples: list[float]) -> dict[str, float]:
    """Median and p90 in ms (a wall-time distribution has a long tail: never the mean)."""
    return {
        "median_ms": percentile(samples, 50) * 1000,
        "p90_ms": percentile(samples, 90) * 1000,
        "min_ms": min(samples) * 1000,
        "runs": len(samples),
    }


def run(cfg: Config, res: Resources, section: Section) -> None:
    gateway = res.gateway()
    target = res.target()
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql not found: install postgresql-client (make system-deps)")
    exec_argv = [*gatehouse_command(), "exec", PLAIN, "-c", SQL]
    no_bytecode = {
        "PYTHONPYCACHEPREFIX": str(res.scratch("exec-no-bytecode")),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "psql -c": ([psql, "-X", "-q", "-c", SQL], target.libpq_env()),
        "gatehouse exec": (exec_argv, gateway.controlplane.cli_env),
        "gatehouse exec, no cached bytecode": (
            exec_argv,
            {**gateway.controlplane.cli_env, **no_bytecode},
        ),
        "python -c pass": ([sys.executable, "-c", "pass"], {}),
        # The floor of the second target: this interpreter compiling its own start-up (site,
        # the venv's .pth hooks) before any line of Gatehouse runs.
        "python -c pass, no cached bytecode": ([sys.executable, "-c", "pass"], no_bytecode),
    }
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for argv, env in commands.values():  # warm-up: page cache, .pyc files, first session
        time_command(argv, env)
        time_command(argv, env)
    for index in range(cfg.exec_runs):
        for name, (argv, env) in commands.items():
            samples[name].append(time_command(argv, env))
        if (index + 1) % 10 == 0:
            progress(f"exec: {index + 1}/{cfg.exec_runs} rounds")
    stats = {name: summarize(values) for name, values in samples.items()}
    baseline = stats["psql -c"]["median_ms"]
    for values in stats.values():
        values["ratio_to_psql"] = ratio(values["median_ms"], baseline) or 0.0
    section.results = {"commands": stats, "sql": SQL}
    table = Table(
        f"Wall time of one call ({cfg.exec_runs} runs each, interleaved)",
        ["command", "median ms", "p90 ms", "min ms", f"{TIMES} psql (median)"],
    )
    for name, values in stats.items():
        table.rows.append(
            [
                name,
                fmt(values["median_ms"], 1),
                fmt(values["p90_ms"], 1),
                fmt(values["min_ms"], 1),
                fmt(values["ratio_to_psql"], 2, TIMES),
            ]
        )
    section.tables = [table]
    section.targets = []
    for name, label in (
        ("gatehouse exec", "`gatehouse exec` wall time"),
        ("gatehouse exec, no cached bytecode", "`gatehouse exec` wall time, no cached bytecode"),
    ):
        exec_ratio = stats[name]["ratio_to_psql"]
        section.targets.append(
            Target(
                label,
                f"≤ {TARGET:g}{TIMES} `psql -c`",
                fmt(exec_ratio, 2, TIMES),
                exec_ratio <= TARGET,
            )
        )
        median = stats[name]["median_ms"]
        progress(
            f"exec: {name} {median:.0f} ms, psql {baseline:.0f} ms (median): "
            f"{exec_ratio:.2f}{TIMES}"
        )
