"""One store test suite, run against every store the control plane supports.

`store` (and `db`, the migrated `Database` on it) is parametrized over SQLite and PostgreSQL.
PostgreSQL is a throwaway cluster from `devenv.postgres`, started once per session and only when
a PostgreSQL test runs; every test gets a fresh database of its own (`CREATE DATABASE t_<uuid>`)
owned by an unprivileged role that logs in with a password over TCP, as a replica would.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from controlplane.store.database import Database
from devenv.postgres import PostgresServer, start_postgres

STORES = ["sqlite", "postgresql"]
APP_ROLE = "gatehouse"
APP_PASSWORD = "gh-store-pw"
#: A target database for the gateway to reach, for the control-plane smoke test.
TARGET_ROLE = "app"
TARGET_PASSWORD = "s3cret-target-pw"


@dataclass(frozen=True)
class Store:
    """Where a test's store lives, and a side door for inspecting it as an operator would."""

    kind: str  # "sqlite" or "postgresql"
    url: str
    server: PostgresServer | None = None
    database: str | None = None

    @property
    def is_postgres(self) -> bool:
        return self.kind == "postgresql"

    def admin(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The superuser on this test's PostgreSQL database (autocommit, kept out of logs)."""
        assert self.server is not None and self.database is not None
        return psycopg.connect(self.server.admin_dsn(self.database), autocommit=True)


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(
        tmp_path_factory.mktemp("store-pg"),
        roles={APP_ROLE: APP_PASSWORD, TARGET_ROLE: TARGET_PASSWORD},
        databases={TARGET_ROLE: TARGET_ROLE},
        log_statements=False,
    )
    yield server
    server.stop()


def postgres_url(server: PostgresServer, database: str) -> str:
    dsn = server.dsn(APP_ROLE, APP_PASSWORD, database)
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database owned by the application role; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(name), sql.Identifier(APP_ROLE)
            )
        )
    yield name
    with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """An empty store (no schema yet) of each kind."""
    if request.param == "sqlite":
        return Store("sqlite", f"sqlite:///{tmp_path / 'gatehouse.db'}")
    server: PostgresServer = request.getfixturevalue("pg_server")
    database: str = request.getfixturevalue("pg_database")
    return Store("postgresql", postgres_url(server, database), server, database)


@pytest.fixture
def db(store: Store) -> Iterator[Database]:
    """The migrated store, as one control-plane replica sees it."""
    database = Database(store.url)
    database.migrate()
    yield database
    database.dispose()
