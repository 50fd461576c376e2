"""The report is rendered from the JSON alone: what a reader of docs/benchmarks.md sees."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.common import TIMES, Section, Table, Target
from bench.report import (
    END,
    START,
    chart_series,
    markdown_table,
    merge,
    render,
    update_docs,
    write_chart,
)


def _document(**sections: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema": 1,
        "machine": {"date": "2026-11-27T00:00:00+00:00", "cores": 2, "git_commit": "abc" * 14},
        "config": {"quick": False, "duration": 30.0},
        "sections": sections,
    }


def _exec_section() -> dict[str, Any]:
    section = Section("exec", started="2026-11-27T00:00:01+00:00", seconds=12.0)
    section.config = {"quick": True, "duration": 5.0}
    section.results = {"commands": {"gatehouse exec": {"ratio_to_psql": 3.5}}}
    section.tables = [Table("Wall time", ["command", "median ms"], [["psql -c", "20.0"]], "a note")]
    section.targets = [
        Target("`gatehouse exec` wall time", f"≤ 4{TIMES} `psql -c`", f"3.50{TIMES}", True)
    ]
    return section.as_json()


def test_markdown_table_escapes_pipes_and_newlines() -> None:
    text = markdown_table(["a", "b"], [["x|y", "1\n2"], [None, 3]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x\\|y | 1 2 |", "|  | 3 |"]


def test_render_shows_targets_tables_and_marks_a_quick_section() -> None:
    text = render(_document(exec=_exec_section()), chart="benchmarks.png")
    row = f"| `gatehouse exec` wall time | ≤ 4{TIMES} `psql -c` | 3.50{TIMES} | ✅ met |"
    assert row in text
    assert "**Quick run**" in text  # one quick section makes the whole report a quick run
    assert "— quick run, 5 s per run" in text
    assert "| psql -c | 20.0 |" in text
    assert "_a note_" in text
    assert "![Ratios to the baselines measured in the same run](benchmarks.png)" in text


def test_render_never_hides_a_failed_or_skipped_section() -> None:
    failed = Section("agents")
    failed.fail("TimeoutError: 10000 agents connected not reached within 500 s")
    text = render(_document(agents=failed.as_json(), audit={"name": "audit", "status": "not run"}))
    assert "**FAILED**: TimeoutError: 10000 agents connected not reached within 500 s" in text
    assert "| Agent scale |  | failed | — not measured |" in text
    assert "Not run in this run (left out with `--only`)." in text


def test_update_docs_keeps_the_hand_written_part(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nHow to read this.\n")
    update_docs(doc, "## Results\n\nfirst\n")
    update_docs(doc, "## Results\n\nsecond\n")
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\nHow to read this.\n\n" + START)
    assert "second" in text and "first" not in text
    assert text.count(START) == 1 and text.rstrip().endswith(END)


def test_update_docs_keeps_what_follows_the_end_marker(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"intro\n{START}\nold\n{END}\n\n## After\n")
    update_docs(doc, "new\n")
    assert doc.read_text() == f"intro\n{START}\n\nnew\n\n{END}\n## After\n"


def test_merge_takes_unrun_sections_from_the_previous_run() -> None:
    previous = _document(exec=_exec_section(), agents={"name": "agents", "status": "ok"})
    current = _document(
        exec={"name": "exec", "status": "not run"}, agents={"name": "agents", "status": "failed"}
    )
    merged = merge(previous, current)
    assert merged["sections"]["exec"]["status"] == "ok"
    assert merged["sections"]["agents"]["status"] == "failed"
    assert merge(None, current) is current


def test_chart_series_are_ratios_to_each_baseline() -> None:
    pgbench = {
        "results": {
            "runs": [
                {"path": "direct", "protocol": "extended", "clients": 8, "tps_ratio": 1.0},
                {"path": "gatehouse", "protocol": "extended", "clients": 8, "tps_ratio": 0.42},
                {"path": "pgbouncer", "protocol": "simple", "clients": 1, "error": "boom"},
            ]
        }
    }
    agents = {"results": {"fleets": [{"agents": 1000, "idle_rss_mib": 512.0}, {"agents": 10}]}}
    panels = chart_series(_document(pgbench=pgbench, exec=_exec_section(), agents=agents))
    assert list(panels.values()) == [
        [("gatehouse\next c8", 0.42)],
        [(f"exec wall\n{TIMES} psql", 3.5)],
        [("1,000 agents", 0.5)],
    ]


def test_no_chart_without_numbers(tmp_path: Path) -> None:
    assert write_chart(_document(), tmp_path / "chart.png") is False
    assert not (tmp_path / "chart.png").exists()
