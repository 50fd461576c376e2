"""Alembic environment: migrations run at control-plane start against the configured store.

Several control-plane replicas may start at once against one PostgreSQL. Each takes a
session-level advisory lock before Alembic looks at `alembic_version`, so one migrates and the
others wait, then find the schema current. On SQLite every pending migration runs in one
transaction opened before Alembic starts (Alembic runs inside a transaction it finds open); with
the control plane's engine it begins `IMMEDIATE`, SQLite's one write lock, so a second process
waits for the whole upgrade rather than slipping in between two revisions.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alembic import context
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool
from sqlmodel import SQLModel

import controlplane.store.models  # noqa: F401  (registers the tables on SQLModel.metadata)

config = context.config
target_metadata = SQLModel.metadata

#: pg_advisory_lock key shared by every Gatehouse replica: int.from_bytes(b"gatehous").
MIGRATION_LOCK_KEY = 0x67617465686F7573


@contextmanager
def migration_lock(connection: Connection) -> Iterator[None]:
    """Hold the migration lock around everything Alembic does on `connection`."""
    if connection.dialect.name == "sqlite":
        with connection.begin():
            yield
        return
    if connection.dialect.name != "postgresql":
        yield
        return
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    connection.commit()  # a session-level lock outlives this transaction; Alembic starts its own
    try:
        yield
    finally:
        try:
            if connection.in_transaction():
                connection.rollback()
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
            connection.commit()
        except SQLAlchemyError:
            # The session is unusable (e.g. the server went away); closing it frees the lock,
            # and the error that got us here is the one worth reporting.
            connection.invalidate()


def run_migrations_online() -> None:
    engine: Engine | None = config.attributes.get("engine")
    if engine is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=NullPool)
    with engine.connect() as connection, migration_lock(connection):
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        if connection.in_transaction() and connection.dialect.name != "sqlite":
            connection.commit()


run_migrations_online()
