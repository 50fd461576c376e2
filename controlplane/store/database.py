"""The engine and the two ways to use it: short reads, and serialised write transactions.

SQLModel is synchronous; the event loop must never block on disk, so every call runs in a
thread. SQLite gets WAL, `synchronous=FULL` (a committed audit event survives power loss) and
`BEGIN IMMEDIATE` for writes, so that a read-then-write transaction cannot fail with
"database is locked" half way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

T = TypeVar("T")

ALEMBIC_DIR = Path(__file__).resolve().parents[2] / "alembic"


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'gatehouse.db'}"


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the begin hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """One store: SQLite (embedded default) or PostgreSQL (production, several replicas)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self._writer = _sqlite_engine(url, immediate=True)
            self._reader = _sqlite_engine(url, immediate=False)
        else:
            self._writer = create_engine(url, pool_pre_ping=True, pool_size=10)
            self._reader = self._writer

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent)."""
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_DIR))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        config.attributes["engine"] = self._writer
        command.upgrade(config, "head")

    def write_session(self) -> Session:
        return Session(self._writer, expire_on_commit=False)

    def read_session(self) -> Session:
        return Session(self._reader, expire_on_commit=False)

    async def write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one write transaction off the event loop; commit when it returns."""

        def run() -> T:
            with self.write_session() as session, session.begin():
                return fn(session)

        return await asyncio.to_thread(run)

    async def read(self, fn: Callable[[Session], T]) -> T:
        def run() -> T:
            with self.read_session() as session:
                return fn(session)

        return await asyncio.to_thread(run)

    def dispose(self) -> None:
        self._writer.dispose()
        self._reader.dispose()
