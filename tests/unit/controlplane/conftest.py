"""A migrated SQLite store and a running audit writer, for the tests that need real commits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "g.db"


@pytest.fixture
def db(db_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{db_path}")
    database.migrate()
    yield database
    database.dispose()


@pytest.fixture
async def writer(db: Database) -> AsyncIterator[AuditWriter]:
    audit = AuditWriter(db)
    audit.start()
    yield audit
    await audit.close()
