"""devenv.postgres against a real server: the fixtures, demo and benchmarks all stand on it.

CI runs as root, so these tests exercise the drop-to-``postgres`` path there.
"""

from __future__ import annotations

import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from devenv import postgres
from devenv.postgres import (
    PostgresNotFound,
    PostgresServer,
    find_pg_bindir,
    parse_statement_log,
    start_postgres,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    with start_postgres(
        tmp_path_factory.mktemp("pg"), roles={"app": "s3cret"}, databases={"app": "app"}
    ) as srv:
        yield srv


def _expected_owner() -> int:
    return pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()


def test_scram_login_runs_query_and_logs_it_once(server: PostgresServer) -> None:
    with psycopg.connect(server.dsn("app", "s3cret", "app")) as conn:
        assert conn.info.host == "127.0.0.1"
        row = conn.execute("select 41+1").fetchone()
    assert row == (42,)
    assert server.wait_for_statement("select 41+1", timeout=5) == 1
    assert server.statement_log().count("select 41+1") == 1


def test_password_is_stored_as_scram(server: PostgresServer) -> None:
    with psycopg.connect(server.admin_dsn()) as conn:
        row = conn.execute("select rolpassword from pg_authid where rolname = 'app'").fetchone()
        owner = conn.execute(
            "select pg_get_userbyid(datdba) from pg_database where datname = 'app'"
        ).fetchone()
    assert row is not None and row[0].startswith("SCRAM-SHA-256$")
    assert owner == ("app",)


def test_wrong_password_is_refused(server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.dsn("app", "wrong", "app"))


def test_superuser_needs_the_socket(server: PostgresServer) -> None:
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.dsn(), connect_timeout=5)


def test_runs_as_unprivileged_user(server: PostgresServer) -> None:
    assert server.pid is not None
    status = Path(f"/proc/{server.pid}/status").read_text()
    real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(real_uid) == _expected_owner()
    assert server.data_dir.stat().st_uid == _expected_owner()
    assert server.log_file.is_file()


def test_stop_is_idempotent_and_frees_the_port(tmp_path: Path) -> None:
    srv = start_postgres(tmp_path, log_statements=False)
    assert srv.pid is not None
    srv.stop()
    srv.stop()
    assert srv.pid is None
    assert srv.data_dir.is_dir()  # stop() removes nothing
    with socket.socket() as probe:
        assert probe.connect_ex((srv.host, srv.port)) != 0
    with socket.socket() as listener:
        # What a server does before listening; TIME_WAIT leftovers must not count as "taken".
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((srv.host, srv.port))


def test_refuses_a_used_base_dir(server: PostgresServer) -> None:
    with pytest.raises(postgres.PostgresStartError, match="not empty"):
        start_postgres(server.data_dir.parent)


def test_parse_statement_log_handles_multiline_and_noise() -> None:
    text = (
        "2025-01-01 00:00:00.000 UTC [10] LOG:  database system is ready to accept connections\n"
        "some stray line from a library\n"
        "2025-01-01 00:00:01.000 UTC [11] LOG:  statement: select 1\n"
        "2025-01-01 00:00:02.000 UTC [11] LOG:  statement: select\n"
        "\t  2 -- LOG:  statement: fake\n"
        "\t\n"
        "2025-01-01 00:00:03.000 UTC [12] LOG:  execute <unnamed>: select $1\n"
        "2025-01-01 00:00:03.000 UTC [12] DETAIL:  parameters: $1 = '3'\n"
        "2025-01-01 00:00:03.500 UTC [12] LOG:  execute fetch from <unnamed>/c1: select $1\n"
        '2025-01-01 00:00:04.000 UTC [13] ERROR:  syntax error at or near "x"\n'
        "2025-01-01 00:00:04.000 UTC [13] STATEMENT:  x\n"
        "2025-01-01 00:00:05.000 UTC [14] LOG:  statement: select 4"
    )
    assert parse_statement_log(text) == [
        "select 1",
        "select\n  2 -- LOG:  statement: fake\n",
        "select $1",
        "select 4",
    ]


def test_find_pg_bindir_reports_how_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(postgres.BINDIR_ENV, raising=False)
    monkeypatch.setattr(postgres, "_DEBIAN_ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PostgresNotFound, match="apt-get install postgresql"):
        find_pg_bindir()
