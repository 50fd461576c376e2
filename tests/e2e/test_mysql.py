"""MySQL through the gateway, judged by the server's general query log: `exec`, and unmodified
clients (the mariadb CLI, PyMySQL, mysql-connector-python, SQLAlchemy, aiomysql) through
`gatehouse connect`."""

from __future__ import annotations

import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pymysql
import pytest

from devenv.mariadb import MariadbServer
from devenv.stack import gatehouse_running
from tests.e2e import mysqlgate
from tests.e2e.mysqlgate import MysqlStack
from tests.e2e.pglog import wait_until


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, mariadb: MariadbServer) -> Iterator[MysqlStack]:
    started = mysqlgate.start(tmp_path_factory.mktemp("mysql-stack"), mariadb)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def port(stack: MysqlStack) -> Iterator[int]:
    with stack.listening("my") as bound:
        yield bound


@pytest.fixture
def table(mariadb: MariadbServer) -> Iterator[str]:
    """A table with three rows (made directly: not in the general log)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    mariadb.admin(
        f"CREATE TABLE app.{name} (id INT PRIMARY KEY, email VARCHAR(80), ssn CHAR(11),"
        f" blob_col VARBINARY(16), born DATE);"
        f" INSERT INTO app.{name} VALUES (1, 'ann@example.com', '123-45-6789', x'00ff10', "
        f"'1990-01-02'), (2, 'bob@example.com', '987-65-4321', NULL, NULL), "
        f"(3, 'no mail', '000-00-0000', x'', '2000-12-31')"
    )
    yield name
    mariadb.admin(f"DROP TABLE IF EXISTS app.{name}")


def connect(port: int, **extra: object) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    return pymysql.connect(
        host="127.0.0.1", port=port, user="anyone", password="ignored", database="app", **extra
    )


def connector(port: int, **extra: object) -> Any:
    """mysql-connector-python (pure Python) through the listener, with a password it ignores."""
    import mysql.connector

    options: dict[str, Any] = {"user": "x", "password": "y", "database": "app", **extra}
    return mysql.connector.connect(host="127.0.0.1", port=port, use_pure=True, **options)


def test_exec_prints_a_table_and_json(stack: MysqlStack) -> None:
    result = stack.cli("exec", "my", "-c", "SELECT 41 + 1 AS answer, CURRENT_USER() AS who")
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout and "app@%" in result.stdout
    result = stack.cli("exec", "my", "-c", "SELECT 41 + 1 AS answer", "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["columns"] == ["answer"]
    assert document["rows"] == [[42]]


def test_exec_error_carries_the_servers_code_and_sqlstate(stack: MysqlStack) -> None:
    result = stack.cli("exec", "my", "-c", "SELECT * FROM no_such_table")
    assert result.returncode == 1
    assert "ERROR 1146 (42S02)" in result.stderr
    after = stack.last_seq() - 3
    results = [e for e in stack.events(after) if e["type"] == "db.result"]
    assert results[-1]["result"]["code"] == 1146
    assert results[-1]["result"]["error"] == "42S02"


def test_a_password_the_server_quotes_in_an_error_is_not_recorded(stack: MysqlStack) -> None:
    """MySQL's syntax error quotes the statement from where it went wrong: the password too."""
    secret = f"pw{uuid.uuid4().hex[:12]}"
    after = stack.last_seq()
    for sql in (
        f"CREATE USER nobody_x IDENTIFIED BY {secret}",  # the quotes forgotten
        f"CREATE USERR nobody_x IDENTIFIED BY '{secret}'",
    ):
        result = stack.cli("exec", "my", "-c", sql)
        assert result.returncode == 1
        assert "ERROR 1064 (42000)" in result.stderr and secret in result.stderr
    results = [e for e in stack.events(after) if e["type"] == "db.result"]
    assert [r["result"]["code"] for r in results] == [1064, 1064]
    assert all("SQL syntax" in r["result"]["message"] for r in results)
    assert secret not in json.dumps(stack.events(after))


def test_guardrail_refusal_never_reaches_the_server(
    stack: MysqlStack, mariadb: MariadbServer, table: str
) -> None:
    result = stack.cli("exec", "my", "-c", f"DROP TABLE {table}")
    assert result.returncode == 1
    assert "ERROR 1142 (42000)" in result.stderr
    assert 'guardrail "no-destructive"' in result.stderr
    assert not [q for q in mariadb.queries() if table in q and "DROP" in q.upper()]
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "3"
    denied = [e for e in stack.queries() if f"DROP TABLE {table}" in e["request"]["statement"]]
    assert denied[-1]["decision"]["result"] == "deny"
    assert denied[-1]["decision"]["rule"] == "no-destructive"


def test_pymysql_session_goes_on_after_a_refusal(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    with connect(port) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, email FROM {table} ORDER BY id")
        assert cur.fetchall() == ((1, "ann@example.com"), (2, "bob@example.com"), (3, "no mail"))
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(f"DELETE FROM {table}")
        assert refused.value.args[0] == 1142
        cur.execute(f"DELETE FROM {table} WHERE id = 3")
        assert cur.rowcount == 1
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchone() == ("app@%",)
    logged = mariadb.queries()
    assert f"DELETE FROM {table} WHERE id = 3" in logged
    assert f"DELETE FROM {table}" not in logged


def mariadb_cli(port: int, sql: str) -> subprocess.CompletedProcess[str]:
    """The mariadb command-line client through the listener, with a password it ignores."""
    command = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(port), "-u", "x"]
    return subprocess.run(
        [*command, "-pwrong", "app", "-N", "-B", "-e", sql],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_mariadb_cli_through_connect(stack: MysqlStack, port: int, table: str) -> None:
    result = mariadb_cli(port, f"SELECT email FROM {table} WHERE id = 2; SELECT 7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["bob@example.com", "7"]


def _statements(events: list[dict[str, object]]) -> list[str]:
    return [e["request"]["statement"] for e in events]  # type: ignore[index]


def test_multi_statements_are_one_event_each(stack: MysqlStack, port: int, table: str) -> None:
    after = stack.last_seq()
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with connect(port, client_flag=flags) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT 1; UPDATE {table} SET email = 'x' WHERE id = 2; SELECT 3")
        assert cur.fetchall() == ((1,),)
        assert cur.nextset()
        assert cur.rowcount == 1
        assert cur.nextset()
        assert cur.fetchall() == ((3,),)
    events = stack.events(after)
    queries = [e for e in events if e["type"] == "db.query"]
    wanted = ["SELECT 1", f"UPDATE {table} SET email = 'x' WHERE id = 2", "SELECT 3"]
    assert _statements(queries)[-3:] == wanted
    results = {e["ref"]: e["result"] for e in events if e["type"] == "db.result"}
    assert [results[q["seq"]]["rows"] for q in queries[-3:]] == [1, None, 1]
    assert results[queries[-2]["seq"]]["affected_rows"] == 1


def test_prepared_statements_with_parameters(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    after = stack.last_seq()
    conn = connector(port)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute(f"SELECT id, email, blob_col, born FROM {table} WHERE id = %s", (1,))
        assert cur.fetchall() == [
            (1, "ann@example.com", bytearray(b"\x00\xff\x10"), _date(1990, 1, 2))
        ]
        cur.execute(f"SELECT id, email, blob_col, born FROM {table} WHERE id = %s", (2,))
        assert cur.fetchall() == [(2, "bob@example.com", None, None)]
        cur.close()
    finally:
        conn.close()
    text = f"SELECT id, email, blob_col, born FROM {table} WHERE id = ?"
    queries = [e for e in stack.queries(after) if e["request"]["statement"] == text]
    # The connector prepares again for every execute: each prepare precedes its execute.
    assert [q["request"]["protocol"] for q in queries] == ["prepare", "execute"] * 2
    executes = [q for q in queries if q["request"]["protocol"] == "execute"]
    assert [q["request"]["params"] for q in executes] == [["1"], ["2"]]
    executed = [e for e in mariadb.general_log() if e.command == "Execute" and table in e.text]
    assert [e.text.rsplit("= ", 1)[1] for e in executed[-2:]] == ["1", "2"]


def _date(year: int, month: int, day: int) -> object:
    import datetime

    return datetime.date(year, month, day)


def test_binary_columns_and_a_large_result(stack: MysqlStack, port: int) -> None:
    with connect(port) as conn, conn.cursor() as cur:
        cur.execute("SELECT UNHEX('00FF7F80'), CAST('é' AS BINARY), NULL")
        assert cur.fetchone() == (b"\x00\xff\x7f\x80", "é".encode(), None)
        cur.execute("SELECT seq, REPEAT('x', 20) FROM seq_1_to_200000")
        rows = cur.fetchall()
        assert len(rows) == 200_000
        assert rows[-1] == (200_000, "x" * 20)
    events = stack.events(stack.last_seq() - 4)
    result = [e for e in events if e["type"] == "db.result"][-1]["result"]
    assert result["rows"] == 200_000


def test_masking_of_text_and_binary_rows(stack: MysqlStack, table: str) -> None:
    with stack.listening("my-masked") as masked_port:
        with connect(masked_port) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT id, email, ssn FROM {table} ORDER BY id")
            rows = cur.fetchall()
        conn2 = connector(masked_port)
        try:
            cur2 = conn2.cursor(prepared=True)
            cur2.execute(f"SELECT id, email, ssn FROM {table} WHERE id < %s ORDER BY id", (3,))
            binary_rows = cur2.fetchall()
        finally:
            conn2.close()
    for got in (rows, binary_rows):
        assert [r[0] for r in got][:2] == [1, 2]
        # The email detector keeps the domain; the ssn column is masked whole.
        assert [r[1] for r in got][:2] == ["***@example.com"] * 2
        assert all(str(r[2]) == "***" for r in got)


def test_ed25519_login_over_verified_tls(stack: MysqlStack) -> None:
    result = stack.cli(
        "exec",
        "my-ed",
        "-c",
        "SELECT CURRENT_USER(), VARIABLE_VALUE <> '' FROM information_schema.SESSION_STATUS"
        " WHERE VARIABLE_NAME = 'Ssl_cipher'",
        "-o",
        "json",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == [["edapp@%", 1]]


def test_sqlalchemy_and_aiomysql(stack: MysqlStack, port: int, table: str) -> None:
    import asyncio

    import aiomysql
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"mysql+pymysql://x:y@127.0.0.1:{port}/app")
    with engine.connect() as conn:
        count = conn.execute(sqlalchemy.text(f"SELECT COUNT(*) FROM {table}")).scalar()
        assert count == 3
        row = conn.execute(
            sqlalchemy.text(f"SELECT email FROM {table} WHERE id = :id"), {"id": 1}
        ).one()
        assert row == ("ann@example.com",)
    engine.dispose()

    async def run() -> list[tuple[int]]:
        conn = await aiomysql.connect(host="127.0.0.1", port=port, user="x", password="y", db="app")
        try:
            async with conn.cursor() as cur:
                await cur.execute(f"SELECT id FROM {table} ORDER BY id")
                return list(await cur.fetchall())
        finally:
            conn.close()

    assert asyncio.run(run()) == [(1,), (2,), (3,)]


def test_a_client_speaking_caching_sha2_logs_in(stack: MysqlStack, port: int) -> None:
    conn = connector(port, auth_plugin="caching_sha2_password")
    try:
        cur = conn.cursor()
        cur.execute("SELECT CURRENT_USER()")
        assert cur.fetchall() == [("app@%",)]
    finally:
        conn.close()


def test_fifty_concurrent_sessions(stack: MysqlStack, port: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(n: int) -> tuple[int, int]:
        with connect(port) as conn, conn.cursor() as cur:
            cur.execute("SELECT %s, CONNECTION_ID()", (n,))
            value, thread = cur.fetchone()  # type: ignore[misc]
            return int(value), int(thread)

    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(one, range(50)))
    assert [value for value, _ in answers] == list(range(50))
    assert len({thread for _, thread in answers}) == 50  # one target connection each


def test_a_long_query_is_cancelled_with_kill_query(
    stack: MysqlStack, port: int, mariadb: MariadbServer
) -> None:
    import threading
    import time

    outcome: list[object] = []
    with connect(port) as conn:
        thread_id = conn.thread_id()

        def long() -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT SLEEP(60)")
                    outcome.append(cur.fetchall())
            except pymysql.err.OperationalError as exc:
                outcome.append(exc.args[0])

        runner = threading.Thread(target=long)
        started = time.monotonic()
        runner.start()
        time.sleep(1)
        with connect(port) as other, other.cursor() as cur:
            cur.execute(f"KILL QUERY {thread_id}")
        runner.join(30)
        assert time.monotonic() - started < 30
    assert not runner.is_alive()
    # SLEEP() interrupted by KILL QUERY returns 1 rather than failing (1317 elsewhere).
    assert outcome in ([((1,),)], [1317])
    cancels = [e for e in stack.events(stack.last_seq() - 20) if e["type"] == "db.cancel"]
    assert cancels and cancels[-1]["request"]["statement"] == f"KILL QUERY {thread_id}"


def _agent_entries(mariadb: MariadbServer, skip: int) -> list[tuple[str, str]]:
    """(command, text) the agent's connections ran, after the first `skip` log entries."""
    entries = mariadb.general_log()
    agents = {
        e.connection
        for e in entries
        if e.command == "Connect" and e.text.split("@")[0] in ("app", "edapp")
    }
    return [
        (e.command, e.text)
        for e in entries[skip:]
        if e.connection in agents and e.command in ("Query", "Prepare", "Execute", "Init DB")
    ]


def _covers(text: str, pieces: list[str]) -> bool:
    """Whether `pieces`, in order, make up `text` but for whitespace and semicolons."""
    rest, at = [], 0
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0:
            return False
        rest.append(text[at:found])
        at = found + len(piece)
    rest.append(text[at:])
    return all(not part.strip(" \t\n;") for part in rest)


def _covers_prefix(text: str, pieces: list[str]) -> bool:
    """Whether `pieces`, in order, make up the start of `text` (whitespace, `;` between)."""
    at = 0
    for piece in pieces:
        found = text.find(piece, at)
        if found < 0 or text[at:found].strip(" \t\n;"):
            return False
        at = found + len(piece)
    return True


def _executed(template: str, logged: str, params: list[str | None]) -> bool:
    """Whether the server's logged Execute is `template` with `params` in its places."""
    pieces = template.split("?")
    at = 0
    for index, piece in enumerate(pieces):
        found = logged.find(piece, at)
        if found < 0:
            return False
        at = found + len(piece)
        if index < len(params):
            value = params[index]
            shown = "NULL" if value is None else value
            if shown not in logged[at:]:
                return False
    return True


def test_every_statement_the_server_ran_has_its_event(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    """Reconciliation: the general log, entry by entry, against the trail's db.query events."""
    skip = len(mariadb.general_log())
    after = stack.last_seq()
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with connect(port, client_flag=flags) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM {table}; SELECT 'a;b' AS semi /* ; */")
        while cur.nextset():
            pass
        with pytest.raises(pymysql.err.OperationalError):
            cur.execute(f"TRUNCATE {table}")
        cur.execute(f"UPDATE {table} SET born = NULL WHERE id = 1")
        conn.select_db("app")
        cur.execute("SELECT 1 # a comment\n")
    conn2 = connector(port)
    try:
        cur2 = conn2.cursor(prepared=True)
        cur2.execute(f"SELECT email FROM {table} WHERE id = %s AND email <> %s", (2, "z"))
        cur2.fetchall()
    finally:
        conn2.close()
    assert mariadb_cli(port, "SELECT 5").returncode == 0
    logged = _agent_entries(mariadb, skip)
    assert {command for command, _ in logged} == {"Query", "Init DB", "Prepare", "Execute"}
    events = stack.queries(after)
    allowed = [e for e in events if e["decision"]["result"] == "allow"]
    denied = [e for e in events if e["decision"]["result"] == "deny"]
    assert [e["request"]["statement"] for e in denied] == [f"TRUNCATE {table}"]
    pending = list(allowed)
    for command, text in logged:
        if command == "Query":
            # The server logs a multi-statement text once: its events, in order, make it up.
            taken: list[str] = []
            while pending and not (taken and _covers(text, taken)):
                candidate = pending[0]["request"]["statement"]
                if pending[0]["request"]["protocol"] not in ("query", "cancel"):
                    break
                if not _covers_prefix(text, [*taken, candidate]):
                    break
                taken.append(candidate)
                pending.pop(0)
            assert taken and _covers(text, taken), (text, taken)
        elif command == "Init DB":
            event = pending.pop(0)
            assert event["request"] == {"statement": f"USE `{text}`", "protocol": "init_db"}
        elif command == "Prepare":
            event = pending.pop(0)
            assert event["request"]["protocol"] == "prepare"
            assert event["request"]["statement"] == text
        else:  # Execute
            event = pending.pop(0)
            assert event["request"]["protocol"] == "execute"
            assert _executed(event["request"]["statement"], text, event["request"]["params"])
    assert pending == []  # and every allowed event ran


def test_a_parameter_sent_as_long_data(stack: MysqlStack, port: int) -> None:
    import io

    after = stack.last_seq()
    conn = connector(port)
    try:
        cur = conn.cursor(prepared=True)
        cur.execute("SELECT LENGTH(?), ?", (io.BytesIO(b"x" * 100_000), 7))
        assert cur.fetchall() == [(100_000, 7)]
    finally:
        conn.close()
    executes = [e for e in stack.queries(after) if e["request"]["protocol"] == "execute"]
    assert executes[-1]["request"]["params"] == ["(long data)", "7"]


def test_load_data_local_only_where_the_connection_allows_it(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str, tmp_path: object
) -> None:
    from pathlib import Path

    data = Path(str(tmp_path)) / "rows.tsv"
    data.write_text("10\tten@example.com\t111-11-1111\n11\televen\t222-22-2222\n")
    load = f"LOAD DATA LOCAL INFILE '{data}' INTO TABLE {table} (id, email, ssn)"
    with connect(port, local_infile=True) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(load)
        assert refused.value.args[0] == 1142
        assert "LOAD DATA LOCAL" in refused.value.args[1]
    assert load not in mariadb.queries()
    # LOCAL in an executable comment is LOCAL to the server.
    for hidden in ("/*!50000 LOCAL */", "/*M!100000 LOCAL */"):
        with connect(port, local_infile=True) as conn, conn.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as refused:
                cur.execute(load.replace("LOCAL", hidden))
            assert refused.value.args[0] == 1142, refused.value
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "3"
    with (
        stack.listening("my-files") as files_port,
        connect(files_port, local_infile=True) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(load)
        assert cur.rowcount == 2
        conn.commit()
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "5"


def test_ctrl_c_in_exec_kills_the_query_on_the_server(
    stack: MysqlStack, mariadb: MariadbServer
) -> None:
    """The first Ctrl-C cancels the statement (KILL QUERY from the agent) and `exec` prints
    what the server answered; the session goes on to its end."""
    marker = f"c_{uuid.uuid4().hex[:10]}"
    skip, before = len(mariadb.general_log()), stack.last_seq()
    command = ["exec", "my", "-c", f"SELECT SLEEP(60) AS {marker}", "-o", "json"]
    with gatehouse_running(command, env=stack.controlplane.cli_env) as running:
        started = wait_until(lambda: any(marker in e.text for e in mariadb.general_log()[skip:]))
        assert started, "the statement never reached the server"
        running.send_signal(signal.SIGINT)
        out, err = running.communicate(timeout=50)
    assert "Cancel request sent" in err
    kills = [e.text for e in mariadb.general_log()[skip:] if e.text.startswith("KILL QUERY")]
    assert len(kills) == 1
    # SLEEP() interrupted by KILL QUERY returns 1 rather than failing (1317 elsewhere).
    if running.returncode == 0:
        assert json.loads(out)["rows"] == [[1]]
    else:
        assert "ERROR 1317" in err
    assert [e["type"] for e in stack.events(before) if e["type"] == "db.cancel"] == ["db.cancel"]


def _refused_whole(
    stack: MysqlStack,
    port: int,
    mariadb: MariadbServer,
    table: str,
    setting: str,
    sql: str,
    then: str = "SELECT 1",
) -> tuple[str, list[dict[str, Any]], list[tuple[Any, ...]]]:
    """In one multi-statement session: `setting`, then `sql` (refused, recorded whole as one
    unsplit event, its DROP never at the server), then `then`. Returns the refusal's message,
    the events after `sql`'s, and the result sets of `then`."""
    after = stack.last_seq()
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    with connect(port, client_flag=flags) as conn, conn.cursor() as cur:
        cur.execute(setting)
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(sql)
        assert refused.value.args[0] == 1142
        cur.execute(then)
        results = [cur.fetchall()]
        while cur.nextset():
            results.append(cur.fetchall())
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "3"
    assert not [q for q in mariadb.queries() if "DROP" in q.upper() and table in q]
    events = [e for e in stack.queries(after) if not e["request"]["statement"].startswith("SET")]
    assert events[0]["request"] == {"statement": sql, "protocol": "query", "unsplit": True}
    assert events[0]["decision"]["result"] == "deny"
    return str(refused.value.args[1]), events[1:], results


def test_a_text_split_differently_under_no_backslash_escapes_is_one_event(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    """Read by default, the text is SELECT '\\'' then a SELECT of one string; under the
    session's NO_BACKSLASH_ESCAPES the server reads a SELECT, then DROP TABLE, then a comment.
    Decided piece by piece on the default split, the DROP would run."""
    sql = f"SELECT '\\''; SELECT '; DROP TABLE {table}; -- '"
    then = f"SELECT 'ok\\\\'; SELECT COUNT(*) FROM {table}"  # two statements, either way
    setting = "SET SESSION sql_mode = 'NO_BACKSLASH_ESCAPES'"
    _, events, results = _refused_whole(stack, port, mariadb, table, setting, sql, then)
    assert results == [(("ok\\\\",),), ((3,),)]
    # Where every reading ends its statements at the same places, they are split as before.
    assert _statements(events) == ["SELECT 'ok\\\\'", f"SELECT COUNT(*) FROM {table}"]


def test_a_text_that_gbk_reads_differently_is_refused_under_guardrails(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    """Under SET NAMES gbk the server reads the last byte of 中 (UTF-8 E4 B8 AD) and the
    backslash after it as one character, so the escaped backslash becomes an escaped quote:
    the first string runs on to the second statement's quote, and DROP TABLE is a statement.
    (PyMySQL still sends UTF-8: the server reads it as GBK.)"""
    sql = f"SELECT '中\\\\'; SELECT '; DROP TABLE {table}; -- '"
    message, _, _ = _refused_whole(stack, port, mariadb, table, "SET NAMES gbk", sql)
    assert "GBK" in message


def test_a_bracket_that_gbk_takes_in_under_mssql_is_refused(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    """Under sql_mode MSSQL `[…]` is an identifier; under GBK the last byte of 中 takes the
    `]` in, so the identifier runs on to the `]` in the second statement's string, whose
    quote then ends it: DROP TABLE is a statement."""
    sql = f"SELECT 1 AS [中]; SELECT ']; DROP TABLE {table}; -- '"
    setting = "SET NAMES gbk, @@session.sql_mode = 'MSSQL'"
    message, _, _ = _refused_whole(stack, port, mariadb, table, setting, sql)
    assert "GBK" in message


def test_a_text_that_ansi_quotes_reads_differently_is_one_event(
    stack: MysqlStack, port: int, mariadb: MariadbServer, table: str
) -> None:
    """Under ANSI_QUOTES "\\" is an alias (a backslash escapes nothing in it), so the DROP
    that both other readings keep inside a string is a statement the server runs."""
    sql = "SELECT '\\'\"' AS \"\\\"; DROP TABLE " + table + '; -- "'
    then = 'SELECT "id" FROM ' + table + " WHERE id = 2; SELECT 'a\"b'"
    setting = "SET SESSION sql_mode = 'ANSI_QUOTES'"
    message, events, results = _refused_whole(stack, port, mariadb, table, setting, sql, then)
    assert 'guardrail "no-destructive"' in message
    assert results == [((2,),), (('a"b',),)]
    assert _statements(events) == [f'SELECT "id" FROM {table} WHERE id = 2', "SELECT 'a\"b'"]


def _attempt(
    port: int, mariadb: MariadbServer, table: str, sql: str, sql_mode: str = ""
) -> tuple[str, pymysql.err.MySQLError | None]:
    """Send `sql` as one multi-statement text (under `sql_mode`, if given): how many rows the
    table has after it ("gone" when it was dropped), and the error the client got."""
    flags = pymysql.constants.CLIENT.MULTI_STATEMENTS
    refused = None
    with connect(port, client_flag=flags, autocommit=True) as conn, conn.cursor() as cur:
        if sql_mode:
            cur.execute(f"SET SESSION sql_mode = '{sql_mode}'")
        try:
            cur.execute(sql)
            while cur.nextset():
                pass
        except pymysql.err.MySQLError as exc:
            refused = exc
    count = mariadb.admin(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_name = '" + table + "'"
    ).strip()
    rows = (
        mariadb.admin(f"SELECT COUNT(email) FROM app.{table}").strip() if count == "1" else "gone"
    )
    return rows, refused


# A version-gated comment whose version is above the server's (``/*!999999 …*/``, MariaDB's
# ``/*M!999999 …*/``) is a plain comment to the server: its text is skipped. The guard reads
# every text with each such comment run and skipped, so what it hides cannot be a denied
# statement the server runs. One the server runs is code wherever it stands: in front of a
# statement's first token, or alone between two separators.
@pytest.mark.parametrize(
    "template",
    [
        "/*!50000 TRUNCATE */ {t}",
        "SELECT 1; /*!50000 DELETE FROM {t} WHERE */ 1 = 1",
        "SELECT 1; /*!50000 DROP TABLE {t} */; SELECT 2",
        # One statement: the guard reads a DELETE with a WHERE; the server an unbounded one.
        "DELETE FROM {t} /*!999999 WHERE id = 1 */",
        # MariaDB's own marker, an unbounded UPDATE.
        "UPDATE {t} SET email = NULL /*M!999999 WHERE id = 1 */",
        # Multi-statements: the guard reads one SELECT of a string; the server a SELECT, then
        # DROP TABLE, then a comment.
        "SELECT 1 /*!999999 ' */; DROP TABLE {t}; -- ' */",
    ],
)
def test_a_version_gated_comment_does_not_hide_a_denied_statement(
    stack: MysqlStack,
    port: int,
    mariadb: MariadbServer,
    table: str,
    template: str,
) -> None:
    rows, refused = _attempt(port, mariadb, table, template.format(t=table))
    ran = [
        q
        for q in mariadb.queries()
        if table in q and q.split()[0] in ("SELECT", "DELETE", "UPDATE")
    ]
    assert rows == "3", f"the server ran {ran!r}; the gateway let it through ({refused!r})"
    assert refused is not None and refused.args[0] == 1142


# Texts the gateway once read otherwise than the server, each hiding a denied statement: a
# quote in a line comment (`-- '`, `# '`) that the scan for executable comments took for a
# string; an executable comment inside what only the default sql_mode reads as a string;
# `--` before a non-ASCII space, a comment to the tokenizer but two minus signs to the server;
# EXECUTE IMMEDIATE; a compound statement MariaDB runs outside any stored program; a stored
# procedure's body.
@pytest.mark.parametrize(
    ("setting", "template"),
    [
        ("", "SELECT 1; -- '\n/*!50000 DROP TABLE {t} */"),
        ("", "SELECT 1; # '\n/*!50000 DROP TABLE {t} */"),
        ("", "SELECT 1; # '\n/*!50000 DELETE FROM {t} */"),
        ("NO_BACKSLASH_ESCAPES", "SELECT 'a\\'; /*!50000 DROP TABLE {t} */ -- '"),
        ("ANSI_QUOTES", 'SELECT 1 AS "a\\"; /*!50000 DROP TABLE {t} */ -- "'),
        ("", "SELECT 2 --\u00a0x FROM (SELECT 1 AS \u00a0x) d; DROP TABLE {t}"),
        ("", "SELECT 2 --\u3000x FROM (SELECT 1 AS \u3000x) d; DELETE FROM {t}"),
        ("", "SELECT 2 --/*!*/1; DROP TABLE {t}"),
        ("", "SELECT 2 --/*!50000*/1; TRUNCATE {t}"),
        ("", "EXECUTE IMMEDIATE 'DROP TABLE {t}'"),
        ("", "EXECUTE IMMEDIATE CONCAT('DELETE FROM ', '{t}')"),
        ("", "BEGIN NOT ATOMIC DROP TABLE {t}; END"),
        ("", "IF 1 THEN DELETE FROM {t}; END IF"),
        ("", "FOR i IN 1..1 DO DROP TABLE {t}; END FOR"),
        ("", "CASE WHEN 1 THEN UPDATE {t} SET email = NULL; END CASE"),
        ("", "REPEAT DROP TABLE {t}; UNTIL 1 END REPEAT"),
        ("", "WHILE (SELECT COUNT(*) FROM {t}) DO DELETE FROM {t}; END WHILE"),
        # sql_mode MSSQL: `[…]` is an identifier.
        ("MSSQL", "SELECT 1 AS [a']; DROP TABLE {t}; -- ']"),
        ("MSSQL", "SELECT 1 AS [a]] -- ]; /*!50000 DELETE FROM {t} */"),
        # SET STATEMENT … FOR runs the statement after FOR.
        ("", "SET STATEMENT max_statement_time = 100 FOR DROP TABLE {t}"),
        ("", "SET STATEMENT sql_mode = '' FOR DELETE FROM {t}"),
        # MariaDB drops the table it replaces.
        ("", "CREATE OR REPLACE TABLE {t} (id INT, email VARCHAR(80))"),
        # A stored routine runs its body when called: the guard reads the body on CREATE.
        ("", "CREATE PROCEDURE p_{t}() DROP TABLE {t}; CALL p_{t}()"),
        ("", "CREATE PROCEDURE q_{t}() BEGIN DELETE FROM {t}; END; CALL q_{t}()"),
        ("", "CREATE PROCEDURE r_{t}() EXECUTE IMMEDIATE 'TRUNCATE {t}'; CALL r_{t}()"),
        ("ORACLE", "BEGIN DROP TABLE {t}; END"),
        ("ORACLE", "DECLARE x INT; BEGIN DELETE FROM {t}; END"),
    ],
)
def test_a_statement_the_server_reads_otherwise_is_not_let_through(
    stack: MysqlStack,
    port: int,
    mariadb: MariadbServer,
    table: str,
    setting: str,
    template: str,
) -> None:
    rows, refused = _attempt(port, mariadb, table, template.format(t=table), setting)
    assert rows == "3", f"the server ran it; the gateway let it through ({refused!r})"
    assert refused is not None and refused.args[0] == 1142, refused
