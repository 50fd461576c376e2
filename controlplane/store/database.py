"""The engine and the two ways to use it: short reads, and serialised write transactions.

SQLModel is synchronous; the event loop must never block on disk, so every call runs in a
thread. Two stores are supported, chosen by URL (`GATEHOUSE_DATABASE_URL`):

* **SQLite** (the embedded default): WAL, `synchronous=FULL` (a committed audit event survives
  power loss) and `BEGIN IMMEDIATE` for writes, so that a read-then-write transaction cannot
  fail with "database is locked" half way. Reads are `BEGIN` (deferred) snapshots on their own
  connections, which in WAL mode never block the one writer; they are `query_only`.
* **PostgreSQL** (production, several control-plane replicas), always through psycopg 3:
  `postgresql://`, `postgres://` and `postgresql+psycopg://` all mean the same. Writes run in
  READ COMMITTED transactions on a small pool of their own; appends serialise on the
  `audit_chain_head` row lock (docs/decisions/0006). Reads run on a separate pool in
  autocommit and read-only mode: each statement is its own short transaction, so a read never
  keeps a snapshot or a lock open between statements and never takes a connection the writer
  needs. Every session works in UTC; writers give up waiting for a lock after `lock_timeout`
  and the server ends a writer that stays idle inside a transaction, so a stuck replica cannot
  hold the chain head (and with it every other replica's audit) indefinitely.

Datetimes are `UTCDateTime` columns (SQLModel's default for `datetime`): aware values are
stored in UTC (`timestamptz` on PostgreSQL) and come back as aware UTC datetimes on both.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import URL, Engine, event, inspect, make_url, text
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import NullPool, PoolProxiedConnection
from sqlmodel import Session, create_engine

from controlplane.errors import InvalidArgument, Unavailable
from controlplane.store.migrations import migrations_dir

T = TypeVar("T")

ALEMBIC_DIR = migrations_dir()

#: The only PostgreSQL driver the control plane is built and tested with.
PG_DRIVER = "postgresql+psycopg"

# Pool sizes per control-plane process. Writes are few and short: the audit writer holds one
# connection (one thread, group commit) and the other writes (agents, tokens, policy, sessions)
# come from the default thread pool. Reads (auth on every call, export pages) get more. With
# overflow a replica uses at most 10 + 20 connections; PostgreSQL's default max_connections
# (100) leaves room for three replicas and tools.
PG_WRITE_POOL = {"pool_size": 5, "max_overflow": 5}
PG_READ_POOL = {"pool_size": 10, "max_overflow": 10}
PG_POOL_TIMEOUT = 10  # seconds to wait for a free pooled connection before failing
PG_POOL_RECYCLE = 1800  # seconds: renew connections before NATs and proxies drop them
PG_CONNECT_TIMEOUT = 10  # seconds, unless the URL says otherwise
# Server settings for every session (`options` at connect: no extra round trip).
PG_SESSION = {"TimeZone": "UTC"}
PG_WRITE_SESSION = {
    # A commit returns only once it is durable, whatever the server's default: strict mode
    # forwards a request after its event's commit (the PostgreSQL twin of synchronous=FULL).
    "synchronous_commit": "on",
    # An append waits for the chain-head lock at most this long, then fails closed
    # (AuditUnavailable) instead of hanging strict-mode requests.
    "lock_timeout": "10s",
    # A writer that stops talking inside a transaction (a frozen or partitioned replica) is
    # disconnected by the server, which releases the chain-head lock it may hold.
    "idle_in_transaction_session_timeout": "30s",
}
PG_READ_SESSION = {"default_transaction_read_only": "on"}

# Alembic keeps its migration context in module globals: one migration per process at a time.
_MIGRATING = threading.Lock()


def default_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'gatehouse.db'}"


def store_url(url: str) -> URL:
    """Parse and normalise a store URL: SQLite as given, PostgreSQL always with psycopg 3.

    Raises `InvalidArgument` naming the accepted forms (never echoing the password).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InvalidArgument(
            "the database URL is not a URL: use sqlite:///PATH or "
            "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        return parsed
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return parsed.set(drivername=PG_DRIVER)
    raise InvalidArgument(
        f"unsupported database URL scheme {parsed.drivername!r}: use sqlite:///PATH or "
        "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE (psycopg 3)"
    )


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL. The switch needs a moment of exclusive access and SQLite does not
    wait for it through the busy handler, so processes opening one new store together retry."""
    for attempt in range(50):
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.1)


def _sqlite_engine(url: URL, *, immediate: bool, **kwargs: Any) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the begin hook below issue BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=30000")
        _enable_wal(cur)
        cur.execute("PRAGMA synchronous=FULL")
        if not immediate:
            # A read connection can never take the write lock, so it can never block the writer.
            cur.execute("PRAGMA query_only=1")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _pg_connect_args(url: URL, settings: dict[str, str]) -> dict[str, Any]:
    """libpq keywords: our session settings first, so `options` in the URL can override them."""
    ours = " ".join(f"-c {name}={value}" for name, value in settings.items())
    given = url.query.get("options")
    args: dict[str, Any] = {"options": f"{ours} {given}" if isinstance(given, str) else ours}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = PG_CONNECT_TIMEOUT
    if "application_name" not in url.query:
        args["application_name"] = "gatehouse-controlplane"
    return args


def _pg_engine(url: URL, settings: dict[str, str], **kwargs: Any) -> Engine:
    return create_engine(
        url,
        connect_args=_pg_connect_args(url, {**PG_SESSION, **settings}),
        pool_pre_ping=True,
        **kwargs,
    )


class DriverWrite:
    """A transaction from `WriterConnection.transaction`: its driver connection, and whether its
    commit waits for the disk."""

    __slots__ = ("_sqlite", "connection", "durable")

    def __init__(self, connection: PoolProxiedConnection, durable: bool, sqlite: bool) -> None:
        self.connection = connection
        self.durable = durable
        self._sqlite = sqlite

    def require_durable(self) -> None:
        """This transaction must be durable when its commit returns, though it began relaxed
        (it appended a checkpoint that witnesses will hear of)."""
        if self.durable:
            return
        self.durable = True
        if not self._sqlite:  # SQLite: synced after the commit (the pragma is fixed by now)
            cursor = self.connection.cursor()
            cursor.execute("SET LOCAL synchronous_commit = on")
            cursor.close()


#: The table where Alembic keeps the store's revision (its default name; env.py keeps it).
VERSION_TABLE = "alembic_version"


@functools.cache
def code_head() -> str | None:
    """The newest revision of the migrations this code carries (read once: they cannot
    change under a running process)."""
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    return ScriptDirectory.from_config(config).get_current_head()


class WriterConnection:
    """One bare driver connection from the writer pool, held by the audit writer's thread
    across its group commits and handed back when it idles.

    For the writer's hot path, where SQLAlchemy's execution layer, a pool checkout (with its
    reset on return and, on PostgreSQL, its pre-ping round trip) and two `PRAGMA synchronous`
    per relaxed batch cost more than the statements. Each `transaction` is the one
    `write_session` gives: `BEGIN IMMEDIATE` on SQLite, and on PostgreSQL the pool's session
    settings and READ COMMITTED. Only one thread may use it.

    `durable=False` commits without waiting for the disk (ADR 0026): SQLite takes the
    transaction with `synchronous=NORMAL` (its WAL frames are written, not synced, and the
    next synced commit or `Database.sync` makes them durable), PostgreSQL with
    `synchronous_commit = off`. The commit survives a crash of this process, not a power loss
    until then. `DriverWrite.require_durable` turns it back into a durable one before the
    block ends. The SQLite level is switched only when the next transaction wants the other
    one, and set back to `FULL` before the connection returns to the pool, which serves every
    other write.
    """

    def __init__(self, db: Database) -> None:
        self._db = db
        self._connection: PoolProxiedConnection | None = None
        self._relaxed = False  # SQLite: the held connection is at synchronous=NORMAL

    @property
    def held(self) -> bool:
        return self._connection is not None

    @contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[DriverWrite]:
        """One write transaction; commits when the block ends, rolls back (or drops the
        connection, if even that fails) otherwise."""
        sqlite = self._db.is_sqlite
        connection = self._connection
        if connection is None:
            connection = self._connection = self._db.writer_engine.raw_connection()
        write = DriverWrite(connection, durable, sqlite)
        try:
            if sqlite:
                if self._relaxed == durable:  # not inside a transaction: SQLite refuses there
                    connection.execute(
                        "PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL"
                    )
                    self._relaxed = not durable
                connection.execute("BEGIN IMMEDIATE")  # sqlite3: a cursor of its own
            elif not durable:
                cursor = connection.cursor()
                cursor.execute("SET LOCAL synchronous_commit = off")
                cursor.close()
            yield write
            connection.commit()
            if sqlite and not durable and write.durable:
                self._db.sync()  # required durable after it began: sync what NORMAL left
        except BaseException:
            try:
                connection.rollback()
            except Exception:
                self._drop()  # broken: never hand it out again
            raise

    def release(self) -> None:
        """Hand the connection back to the pool (at `synchronous=FULL`); the next transaction
        takes one again, pre-pinged on PostgreSQL."""
        connection = self._connection
        if connection is None:
            return
        if self._relaxed:
            try:
                connection.execute("PRAGMA synchronous=FULL")
            except Exception:
                self._drop()
                return
        self._connection = None
        self._relaxed = False
        connection.close()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        self._relaxed = False
        if connection is not None:
            connection.invalidate()
            connection.close()


class Database:
    """One store: SQLite (embedded default) or PostgreSQL (production, several replicas)."""

    def __init__(self, url: str) -> None:
        self.sa_url = store_url(url)
        self.url = self.sa_url.render_as_string(hide_password=False)
        self.is_sqlite = self.sa_url.get_backend_name() == "sqlite"
        if self.is_sqlite:
            self._writer = _sqlite_engine(self.sa_url, immediate=True)
            self._reader = _sqlite_engine(self.sa_url, immediate=False)
        else:
            pooling = {"pool_timeout": PG_POOL_TIMEOUT, "pool_recycle": PG_POOL_RECYCLE}
            self._writer = _pg_engine(self.sa_url, PG_WRITE_SESSION, **PG_WRITE_POOL, **pooling)
            self._reader = _pg_engine(
                self.sa_url,
                PG_READ_SESSION,
                isolation_level="AUTOCOMMIT",
                **PG_READ_POOL,
                **pooling,
            )

    def __repr__(self) -> str:
        return f"Database({self.sa_url.render_as_string(hide_password=True)!r})"

    @property
    def writer_engine(self) -> Engine:
        return self._writer

    @property
    def reader_engine(self) -> Engine:
        return self._reader

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent).

        Replicas starting together are safe: on PostgreSQL `alembic/env.py` holds an advisory
        lock while it migrates, so the others wait and then find the schema current; on SQLite
        the migration's `BEGIN IMMEDIATE` does the same. Within one process, calls take turns.
        """
        config = Config()
        config.set_main_option("script_location", str(ALEMBIC_DIR))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        with _MIGRATING, self._migration_engine() as engine:
            config.attributes["engine"] = engine
            try:
                command.upgrade(config, "head")
            except OperationalError as exc:
                where = self.sa_url.render_as_string(hide_password=True)
                raise Unavailable(f"cannot migrate the store at {where}: {exc.orig}") from exc

    @contextmanager
    def _migration_engine(self) -> Iterator[Engine]:
        if self.is_sqlite:
            yield self._writer  # BEGIN IMMEDIATE: migrations hold SQLite's one write lock
            return
        # One unpooled connection without the writers' lock_timeout: waiting for another
        # replica's migration is expected, and no session state leaks into the pools.
        engine = _pg_engine(self.sa_url, {}, poolclass=NullPool)
        try:
            yield engine
        finally:
            engine.dispose()

    def schema_revisions(self) -> tuple[str | None, str | None]:
        """(the store's Alembic revision, the newest this code knows): equal when current.

        Reads over a reader connection, so it also proves the store answers; raises the
        driver's error when it does not. Readiness asks every few seconds for as long as the
        process lives: the code's head is read from the migration scripts once, and the
        store's revision with one query (Alembic's own `MigrationContext` logs two lines
        each time it is made)."""
        head = code_head()
        with self._reader.connect() as connection:
            if not inspect(connection).has_table(VERSION_TABLE):
                return None, head
            found = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            versions = sorted(str(v) for v in found.scalars())
        # One row on a store this code migrated; none before the first migration; several
        # only on a branched history, which is never this code's.
        return (",".join(versions) or None), head

    def write_session(self) -> Session:
        return Session(self._writer, expire_on_commit=False)

    def writer_connection(self) -> WriterConnection:
        """The audit writer's own driver connection (see `WriterConnection`)."""
        return WriterConnection(self)

    def sync(self) -> None:
        """Make every commit so far durable, the ones made with `durable=False` included.

        SQLite: fdatasync of the WAL file (what a `synchronous=FULL` commit does; the frames
        of earlier NORMAL commits are in it, before the newest). PostgreSQL: nothing to do
        here; its WAL writer flushes commits made with `synchronous_commit = off` within
        three times `wal_writer_delay` (600 ms by default), and a durable commit flushes
        them before its own.
        """
        if not self.is_sqlite or not self.sa_url.database:
            return
        fd = os.open(f"{self.sa_url.database}-wal", os.O_RDONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def read_session(self) -> Session:
        return Session(self._reader, expire_on_commit=False)

    async def write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one write transaction off the event loop; commit when it returns."""

        def run() -> T:
            with self.write_session() as session, session.begin():
                return fn(session)

        return await asyncio.to_thread(run)

    async def read(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` on a read session off the event loop; it must not write (it cannot)."""

        def run() -> T:
            with self.read_session() as session:
                return fn(session)

        return await asyncio.to_thread(run)

    def dispose(self) -> None:
        self._writer.dispose()
        self._reader.dispose()
