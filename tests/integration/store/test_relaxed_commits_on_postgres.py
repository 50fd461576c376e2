"""On PostgreSQL, a batch of submitted events commits with `synchronous_commit = off` and a
strict one waits for the WAL flush (ADR 0026), seen in the server's own statement log."""

from __future__ import annotations

import psycopg
from psycopg import sql

from controlplane.audit.events import draft
from controlplane.audit.writer import AuditWriter
from controlplane.store.database import Database
from devenv.postgres import PostgresServer
from tests.integration.store.conftest import postgres_url

RELAX = "SET LOCAL synchronous_commit = off"


async def test_only_batches_nobody_waits_for_commit_without_the_flush(
    pg_server: PostgresServer, pg_database: str
) -> None:
    db = Database(postgres_url(pg_server, pg_database))
    db.migrate()
    with psycopg.connect(pg_server.admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET log_statement = 'all'").format(
                sql.Identifier(pg_database)
            )
        )
    db.dispose()  # new connections log every statement
    before = pg_server.statement_log().count(RELAX)
    writer = AuditWriter(db)
    writer.start()
    try:
        seq = await writer.commit(draft("db.query", n=1))
        logged_strict = pg_server.statement_log().count(RELAX)
        await (await writer.submit(draft("db.result", ref=seq)))
        logged_result = pg_server.statement_log().count(RELAX)
    finally:
        await writer.close()
    assert logged_strict == before  # the strict event's commit waited for the flush
    assert logged_result == before + 1  # the result's alone did not
    assert (writer.commits, writer.durable_commits) == (2, 1)
    with psycopg.connect(pg_server.admin_dsn(pg_database)) as conn:
        types = [row[0] for row in conn.execute("SELECT type FROM audit_events ORDER BY seq")]
    assert types == ["db.query", "db.result"]
    db.dispose()
