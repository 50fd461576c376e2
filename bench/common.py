"""What every section shares: the run's settings, progress lines and the shape of a result.

A section returns a `Section`: its numbers (`results`), the tables the report prints, and the
targets it was measured against. The report renders only this, so it can be regenerated from
the JSON alone.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

SECTIONS = ("pgbench", "exec", "audit", "export", "agents")
#: Ratios print with a multiplication sign; named, because in code it passes for an x.
TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Config:
    """Everything that decides how long a run takes; `quick` shrinks it for a smoke run."""

    duration: float = 30.0  # seconds per measured run (pgbench -T, audit level, agents idle)
    quick: bool = False
    only: tuple[str, ...] = SECTIONS
    agents: tuple[int, ...] = (1000, 10000)
    scale: int = 10  # pgbench -i -s
    exec_runs: int = 30
    export_events: int = 200_000
    audit_sessions: tuple[int, ...] = (1, 8, 32, 128)
    keep: bool = False  # keep the scratch directory (logs) after the run

    @classmethod
    def quick_defaults(cls) -> dict[str, Any]:
        return {
            "duration": 5.0,
            "quick": True,
            "agents": (1000,),
            "scale": 2,
            "exec_runs": 5,
            "export_events": 20_000,
        }

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Endpoint:
    """Where a PostgreSQL client connects: the server itself, PgBouncer or `gatehouse connect`."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = None

    def libpq_env(self) -> dict[str, str]:
        """PG* variables for pgbench and psql (a password never goes on a command line)."""
        env = {
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGDATABASE": self.dbname,
            "PGSSLMODE": "disable",
            "PGCONNECT_TIMEOUT": "10",
        }
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env


@dataclass
class Target:
    """A goal from the issue, and what this run reached."""

    name: str
    goal: str
    reached: str
    met: bool | None  # None: could not be measured in this run

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Section:
    """One section's outcome. `status` is ok or failed; a failure keeps its reason and
    whatever was measured before it."""

    name: str
    status: str = "ok"
    reason: str | None = None
    results: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    started: str = ""
    seconds: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.status = "failed"
        self.reason = reason if self.reason is None else f"{self.reason}; {reason}"

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "reason": self.reason,
            "started": self.started,
            "seconds": round(self.seconds, 1),
            "config": self.config,
            "results": self.results,
            "tables": [t.as_json() for t in self.tables],
            "targets": [t.as_json() for t in self.targets],
        }


_T0 = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr, with the time since the harness started: a long run shows life."""
    elapsed = time.monotonic() - _T0
    print(f"[bench {elapsed:7.1f}s] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 2, suffix: str = "") -> str:
    """A number for a table cell; `—` for what was not measured."""
    if value is None:
        return "—"
    if abs(value) >= 1000:
        return f"{value:,.0f}{suffix}"
    return f"{value:.{digits}f}{suffix}"


def tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
