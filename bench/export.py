"""Section `export`: audit events per second pulled through the HTTP export API, page by page,
as a SIEM would (`GET /v1/audit/events?after=&limit=`, following `Gatehouse-Next-After`).

The trail is seeded straight into a fresh store with the writer's own `append_events` (fast,
and the chain is real), then a control plane is started on it. Baseline: the same pages read
straight from the SQLite file (`SELECT body, hash … WHERE seq > ? ORDER BY seq LIMIT ?`), the
floor any API over this store pays.
"""

from __future__ import annotations

import http.client
import sqlite3
import time
from pathlib import Path
from typing import Any

from bench.auditwrite import query_event
from bench.common import TIMES, Config, Section, Table, fmt, progress
from bench.resources import Resources
from bench.stats import rate, ratio
from controlplane.audit.writer import append_events
from controlplane.store.database import Database, default_url
from devenv.stack import ControlPlane

SEED_BATCH = 5000
PAGES = (("json", 500), ("json", 5000), ("ocsf", 5000))  # 500: the default page, 5000: max


def seed(data_dir: Path, events: int) -> None:
    """`events` db.query events in a fresh store at `data_dir` (the control plane is down)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(default_url(data_dir))
    try:
        db.migrate()
        done = 0
        while done < events:
            drafts = [query_event(done + i) for i in range(min(SEED_BATCH, events - done))]
            with db.write_session() as session, session.begin():
                append_events(session, drafts)
            done += len(drafts)
    finally:
        db.dispose()


def pull_http(port: int, token: str, fmt_: str, limit: int) -> tuple[int, float, int]:
    """Every event after seq 0 over one keep-alive connection: (events, seconds, bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    after, events, size = 0, 0, 0
    started = time.perf_counter()
    try:
        while True:
            conn.request(
                "GET",
                f"/v1/audit/events?after={after}&limit={limit}&format={fmt_}",
                headers=headers,
            )
            response = conn.getresponse()
            body = response.read()
            if response.status != 200:
                raise RuntimeError(f"export answered {response.status}: {body[:200]!r}")
            lines = body.count(b"\n")
            if lines == 0:
                break
            events += lines
            size += len(body)
            after = int(response.headers["Gatehouse-Next-After"])
    finally:
        conn.close()
    return events, time.perf_counter() - started, size


def pull_sqlite(path: Path, limit: int) -> tuple[int, float]:
    """The same pages straight from the file: the store's own read rate."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    after, events = 0, 0
    started = time.perf_counter()
    try:
        while True:
            rows = conn.execute(
                "SELECT seq, body, hash FROM audit_events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()
            if not rows:
                break
            events += len(rows)
            after = rows[-1][0]
    finally:
        conn.close()
    return events, time.perf_counter() - started


def run(cfg: Config, res: Resources, section: Section) -> None:
    data_dir = res.scratch("export") / "controlplane"
    progress(f"export: seeding {cfg.export_events:,} events")
    started = time.perf_counter()
    seed(data_dir, cfg.export_events)
    seeded_in = time.perf_counter() - started
    controlplane = ControlPlane.create(data_dir)
    controlplane.start_and_wait()
    pulls: list[dict[str, Any]] = []
    try:
        for fmt_, limit in PAGES:
            events, seconds, size = pull_http(
                controlplane.http_port, controlplane.token, fmt_, limit
            )
            raw_events, raw_seconds = pull_sqlite(data_dir / "gatehouse.db", limit)
            pull: dict[str, Any] = {
                "format": fmt_,
                "limit": limit,
                "events": events,
                "events_per_s": rate(events, seconds),
                "mb_per_s": rate(size, seconds) / 1e6,
                "store_events_per_s": rate(raw_events, raw_seconds),
            }
            pull["ratio_to_store"] = ratio(pull["events_per_s"], pull["store_events_per_s"])
            pulls.append(pull)
            progress(
                f"export: {fmt_} limit {limit}: {pull['events_per_s']:,.0f} events/s "
                f"(store {pull['store_events_per_s']:,.0f})"
            )
    finally:
        controlplane.stop()
    section.results = {
        "seeded": cfg.export_events,
        "seed_events_per_s": rate(cfg.export_events, seeded_in),
        "pulls": pulls,
    }
    table = Table(
        f"Export through the HTTP API ({cfg.export_events:,} events, SQLite store)",
        ["format", "page size", "events/s", "MB/s", "store read events/s", f"{TIMES} store read"],
    )
    for pull in pulls:
        table.rows.append(
            [
                pull["format"],
                pull["limit"],
                fmt(pull["events_per_s"], 0),
                fmt(pull["mb_per_s"], 1),
                fmt(pull["store_events_per_s"], 0),
                fmt(pull["ratio_to_store"], 3, TIMES),
            ]
        )
    table.note = "store read: the same pages selected straight from the SQLite file."
    section.tables = [table]
    incomplete = [p for p in pulls if p["events"] < cfg.export_events]
    if incomplete:
        section.fail(
            "the export returned fewer events than were seeded: "
            + ", ".join(f"{p['format']}/{p['limit']}: {p['events']}" for p in incomplete)
        )
