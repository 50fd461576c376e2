"""A control-plane replica's audit path, reduced to what the cursor test needs.

Each replica has its own `Database` (its own engines and pools) and its own `AuditWriter`, and
runs `sessions` concurrent sessions that each commit `events` events one after another, as
strict mode does. The same coroutine runs in the test's event loop and, via `run_in_process`,
in separate processes (started with `spawn`, so nothing is inherited but arguments).
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from sqlalchemy import text

from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database

EVENT_TYPE = "test.cursor"
START_TIMEOUT = 60.0


class StartLine(Protocol):
    """A barrier shared with the test: every replica and the reader start together."""

    def wait(self, timeout: float | None = None) -> int: ...


async def replica(url: str, name: str, sessions: int, events: int, start: StartLine) -> int:
    """Append `sessions * events` events once everyone is at the start line; returns the count."""
    db = Database(url)
    try:
        # Connect before the start line, so the race is between appends, not connection setups.
        with db.write_session() as session:
            session.connection().execute(text("SELECT 1"))
        writer = AuditWriter(db)
        writer.start()
        try:
            await asyncio.to_thread(start.wait, START_TIMEOUT)

            async def one_session(k: int) -> None:
                for n in range(events):
                    await writer.commit(draft(EVENT_TYPE, replica=name, lane=k, n=n))

            await asyncio.gather(*(one_session(k) for k in range(sessions)))
        finally:
            await writer.close()
        return writer.committed
    finally:
        db.dispose()


def run_in_process(url: str, name: str, sessions: int, events: int, start: StartLine) -> None:
    """Process entry point: exits non-zero (with a traceback on stderr) if anything fails."""
    asyncio.run(replica(url, name, sessions, events, start))


def migrate_in_process(url: str, start: StartLine) -> None:
    """Process entry point: a replica starting up, migrating the moment everyone is ready."""
    db = Database(url)
    try:
        start.wait(START_TIMEOUT)
        db.migrate()
    finally:
        db.dispose()
