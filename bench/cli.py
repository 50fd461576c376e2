"""`python -m bench`: run the sections, then write the JSON, the Markdown and the chart.

A section that raises is recorded as failed with its reason, and the run goes on: a report
must never look complete when part of it did not run. The exit status is 1 when any section
failed, so `make bench` shows it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import SECTIONS, Config, Section, progress
from bench.resources import Resources

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "latest.json"
DOCS = REPO / "docs" / "benchmarks.md"

Runner = Callable[[Config, Resources, Section], None]


def _runners() -> dict[str, Runner]:
    """Imported here: a section's imports (the control plane's) are paid only when it runs."""
    from bench import agents, auditwrite, datapath, execwall, export

    return {
        "pgbench": datapath.run,
        "exec": execwall.run,
        "audit": auditwrite.run,
        "export": export.run,
        "agents": agents.run,
    }


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive numbers: {text!r}")
    return values


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown section {', '.join(unknown) or '(none)'}: choose from {', '.join(SECTIONS)}"
        )
    return names


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark Gatehouse on this machine against baselines measured in the "
        "same run; writes bench/results/latest.json and docs/benchmarks.md (+ .png).",
    )
    p.add_argument("--duration", type=float, help="seconds per measured run (default 30; 5 quick)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: short durations, pgbench scale 2, 1,000 agents only, fewer samples",
    )
    p.add_argument("--only", type=_sections, help=f"comma-separated sections: {','.join(SECTIONS)}")
    p.add_argument("--agents", type=_int_list, help="agent counts (default 1000,10000)")
    p.add_argument("--scale", type=int, help="pgbench scale factor (default 10; 2 quick)")
    p.add_argument("--exec-runs", type=int, help="calls of each command (default 30; 5 quick)")
    p.add_argument("--export-events", type=int, help="events to export (default 200000)")
    p.add_argument(
        "--audit-sessions", type=_int_list, help="concurrent sessions (default 1,8,32,128)"
    )
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the other sections of the previous results (to re-measure one section)",
    )
    p.add_argument("--results", type=Path, default=RESULTS, help="where the JSON goes")
    p.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file to update")
    p.add_argument("--render-only", action="store_true", help="measure nothing: re-render the docs")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    return p


def config_from(args: argparse.Namespace) -> Config:
    values: dict[str, Any] = Config.quick_defaults() if args.quick else {}
    for name in ("duration", "agents", "scale", "exec_runs", "export_events", "audit_sessions"):
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    if args.only:
        values["only"] = args.only
    values["keep"] = args.keep
    return Config(**values)


def run_sections(cfg: Config) -> dict[str, Any]:
    runners = _runners()
    sections: dict[str, Any] = {}
    res = Resources(keep=cfg.keep)
    try:
        for name in SECTIONS:
            if name not in cfg.only:
                sections[name] = {"name": name, "status": "not run"}
                continue
            section = Section(name)
            section.started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            section.config = cfg.as_json()
            progress(f"== {name}")
            started = time.monotonic()
            try:
                runners[name](cfg, res, section)
            except Exception as exc:
                section.fail(f"{type(exc).__name__}: {exc}")
            section.seconds = time.monotonic() - started
            progress(f"== {name}: {section.status} in {section.seconds:.0f} s")
            if section.reason:
                progress(f"   reason: {section.reason}")
            sections[name] = section.as_json()
    finally:
        res.close()
    return sections


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    """SIGTERM (a `timeout`, a CI stop) unwinds like Ctrl-C, so every `finally` stops what
    this run started instead of leaving clusters and control planes behind."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from bench import report

    previous = json.loads(args.results.read_text()) if args.results.exists() else None
    if args.render_only:
        if previous is None:
            progress(f"nothing to render: {args.results} does not exist")
            return 1
        document = previous
    else:
        cfg = config_from(args)
        progress(f"settings: {json.dumps(cfg.as_json())}")
        document = {
            "schema": 1,
            "machine": report.machine_info(REPO),
            "config": cfg.as_json(),
            "sections": run_sections(cfg),
        }
        document["machine"]["disk_sync_ms_end"] = report.sync_latency_ms(
            Path(tempfile.gettempdir())
        )
        if args.merge:
            document = report.merge(previous, document)
        report.write_json(document, args.results)
        progress(f"wrote {args.results}")
    chart = args.docs.with_suffix(".png")
    drawn = report.write_chart(document, chart)
    report.update_docs(args.docs, report.render(document, chart.name if drawn else None))
    progress(f"updated {args.docs}" + (f" and {chart.name}" if drawn else " (no chart)"))
    failed = [s["name"] for s in document["sections"].values() if s.get("status") == "failed"]
    if failed:
        progress(f"failed sections: {', '.join(failed)}")
    return 1 if failed else 0
