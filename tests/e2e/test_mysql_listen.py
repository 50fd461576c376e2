"""`--mysql-listen`: PyMySQL and the mariadb CLI straight to the control plane, the connection's
name as database and a token as password; over TLS against the control plane's CA, and over
plaintext loopback on a `--dev` control plane (caching_sha2_password's RSA exchange). Judged by
the audit trail and by MariaDB's general query log."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymysql
import pytest

from devenv.mariadb import MariadbServer
from tests.e2e import mysqlgate
from tests.e2e.conftest import hasty_listener, read_until_closed
from tests.e2e.mysqlgate import MysqlStack
from wire.mysql import messages as mymsg
from wire.mysql.constants import (
    AUTH_MORE_DATA,
    CACHING_SHA2_PASSWORD,
    SHA2_FULL_AUTH,
    Capability,
    Command,
)
from wire.mysql.packets import encode

WRONG = "ghu_not-a-real-token"


@pytest.fixture(scope="module")
def tls_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariadbServer
) -> Iterator[MysqlStack]:
    started = mysqlgate.start(tmp_path_factory.mktemp("mylisten-tls"), mariadb, tls=True)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def dev_stack(
    tmp_path_factory: pytest.TempPathFactory, mariadb: MariadbServer
) -> Iterator[MysqlStack]:
    started = mysqlgate.start(tmp_path_factory.mktemp("mylisten-dev"), mariadb)
    yield started
    started.stop()


@pytest.fixture
def table(mariadb: MariadbServer) -> Iterator[str]:
    """A table with two rows (made directly: not in the general log)."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    mariadb.admin(
        f"CREATE TABLE app.{name} (id INT PRIMARY KEY, email VARCHAR(80));"
        f" INSERT INTO app.{name} VALUES (1, 'ann@example.com'), (2, 'bob@example.com')"
    )
    yield name
    mariadb.admin(f"DROP TABLE IF EXISTS app.{name}")


def connect(stack: MysqlStack, **extra: Any) -> pymysql.connections.Connection:  # type: ignore[type-arg]
    cp = stack.controlplane
    options: dict[str, Any] = {"user": "anyone", "password": cp.token, "database": "my"}
    if cp.tls:
        options["ssl"] = {"ca": str(cp.ca_file), "check_hostname": True}
    options.update(extra)
    return pymysql.connect(host="127.0.0.1", port=cp.mysql_port, connect_timeout=20, **options)


def mariadb_cli(stack: MysqlStack, sql: str, password: str | None = None) -> Any:
    cp = stack.controlplane
    command = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(cp.mysql_port)]
    command += ["-u", "anyone", f"-p{password or cp.token}", "-D", "my", "-N", "-B"]
    if cp.tls:
        command += [f"--ssl-ca={cp.ca_file}", "--ssl-verify-server-cert"]
    return subprocess.run(
        [*command, "-e", sql], capture_output=True, text=True, timeout=60, check=False
    )


def new_events(stack: MysqlStack, after: int, kind: str) -> list[dict[str, Any]]:
    return [e for e in stack.events(after) if e["type"] == kind]


@pytest.mark.parametrize("name", ["tls_stack", "dev_stack"])
def test_pymysql_queries_are_recorded_and_reach_the_server(
    name: str, request: pytest.FixtureRequest, mariadb: MariadbServer, table: str
) -> None:
    stack: MysqlStack = request.getfixturevalue(name)
    after = stack.last_seq()
    marker = uuid.uuid4().hex[:8]
    with connect(stack) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT email, '{marker}' FROM {table} WHERE id = %s", (2,))
        assert cur.fetchall() == (("bob@example.com", marker),)
        cur.execute("SELECT CURRENT_USER(), DATABASE()")
        assert cur.fetchone() == ("app@%", "app")  # the agent's credential, the target's db
    statement = f"SELECT email, '{marker}' FROM {table} WHERE id = 2"
    assert statement in mariadb.queries()
    (start,) = new_events(stack, after, "session.start")
    assert start["source"]["client"].endswith(" via mysql-listen")
    assert start["connection"]["name"] == "my"
    assert statement in [e["request"]["statement"] for e in new_events(stack, after, "db.query")]
    results = new_events(stack, after, "db.result")
    assert any(e["result"].get("rows") == 1 for e in results)


def test_pymysql_refuses_a_plaintext_login_on_a_production_control_plane(
    tls_stack: MysqlStack,
) -> None:
    after = tls_stack.last_seq()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(tls_stack, ssl=None, ssl_disabled=True)
    assert refused.value.args[0] == 3159
    assert "TLS required" in refused.value.args[1]
    assert new_events(tls_stack, after, "session.start") == []


@pytest.mark.parametrize("name", ["tls_stack", "dev_stack"])
def test_a_wrong_token_is_1045_and_an_auth_fail_event(
    name: str, request: pytest.FixtureRequest
) -> None:
    stack: MysqlStack = request.getfixturevalue(name)
    after = stack.last_seq()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(stack, password=WRONG)
    assert refused.value.args[0] == 1045
    assert "password authentication failed" in refused.value.args[1]
    reason = "the token is not known to this control plane"
    (fail,) = [e for e in new_events(stack, after, "auth.fail") if e["reason"] == reason]
    assert fail["source"]["ip"] == "127.0.0.1"
    assert WRONG not in str(fail)
    assert new_events(stack, after, "session.start") == []


def test_a_forged_token_and_an_unknown_connection_are_refused(tls_stack: MysqlStack) -> None:
    forged = tls_stack.controlplane.token[:-4] + "AAAA"
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(tls_stack, password=forged)
    assert refused.value.args[0] == 1045
    with pytest.raises(pymysql.err.OperationalError) as unknown:
        connect(tls_stack, database="nope")
    assert unknown.value.args[0] == 1049
    assert "gatehouse connections list" in unknown.value.args[1]


@pytest.mark.parametrize("name", ["tls_stack", "dev_stack"])
def test_the_mariadb_cli(name: str, request: pytest.FixtureRequest, table: str) -> None:
    stack: MysqlStack = request.getfixturevalue(name)
    after = stack.last_seq()
    result = mariadb_cli(stack, f"SELECT email FROM {table} WHERE id = 1; SELECT 7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ann@example.com", "7"]
    statements = [e["request"]["statement"] for e in new_events(stack, after, "db.query")]
    assert f"SELECT email FROM {table} WHERE id = 1" in statements
    result = mariadb_cli(stack, "SELECT 1", password=WRONG)
    assert result.returncode == 1
    assert "ERROR 1045 (28000)" in result.stderr


def test_a_guardrail_refusal_never_reaches_the_server(
    tls_stack: MysqlStack, mariadb: MariadbServer, table: str
) -> None:
    with connect(tls_stack) as conn, conn.cursor() as cur:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            cur.execute(f"DROP TABLE {table}")
        assert refused.value.args[0] == 1142
        assert 'guardrail "no-destructive"' in refused.value.args[1]
        cur.execute(f"SELECT COUNT(*) FROM {table}")  # the session goes on
        assert cur.fetchone() == (2,)
    assert not [q for q in mariadb.queries() if table in q and "DROP" in q.upper()]
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "2"


def test_metrics_count_the_listeners_connections(tls_stack: MysqlStack) -> None:
    cp = tls_stack.controlplane
    with connect(tls_stack) as conn, conn.cursor() as cur:
        cur.execute("SELECT 1")
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    url = f"https://127.0.0.1:{cp.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        lines = response.read().decode().splitlines()
    values = {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in lines)
        if name.startswith("gatehouse_mysql_listen_")
    }
    assert values["gatehouse_mysql_listen_connections_total"] >= 1
    assert 'gatehouse_mysql_listen_refused_total{reason="plaintext"}' in values


def test_mysql_clear_password_over_tls(tls_stack: MysqlStack) -> None:
    cp = tls_stack.controlplane
    command = ["mariadb", "--no-defaults", "-h", "127.0.0.1", "-P", str(cp.mysql_port)]
    command += ["-u", "anyone", f"-p{cp.token}", "-D", "my", "-N", "-B"]
    command += [f"--ssl-ca={cp.ca_file}", "--ssl-verify-server-cert"]
    command += ["--default-auth=mysql_clear_password", "-e", "SELECT 'clear'"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["clear"]


def test_a_connection_of_another_type_is_refused_before_it_starts(
    tls_stack: MysqlStack, tmp_path: Path
) -> None:
    policy = mysqlgate.POLICY.format(
        agent=mysqlgate.AGENT, port=tls_stack.server.port, ca=tls_stack.server.ca_file
    ).replace(
        "connections:\n",
        "connections:\n  - name: pg-elsewhere\n    type: postgres\n"
        f"    agent: {mysqlgate.AGENT}\n"
        "    target: {host: 127.0.0.1, port: 5432, database: x, user: x}\n",
        1,
    )
    path = tmp_path / "policy.yaml"
    path.write_text(policy)
    applied = tls_stack.cli("admin", "apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr
    after = tls_stack.last_seq()
    with pytest.raises(pymysql.err.OperationalError) as refused:
        connect(tls_stack, database="pg-elsewhere")
    assert refused.value.args[0] == 1105
    assert "is of type postgres; this port speaks mysql" in refused.value.args[1]
    assert new_events(tls_stack, after, "session.start") == []


def _packet(sock: socket.socket) -> tuple[int, bytes]:
    """One packet from a raw MySQL connection: its sequence id and payload."""
    header = _exactly(sock, 4)
    return header[3], _exactly(sock, int.from_bytes(header[:3], "little"))


def _exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the gateway closed the connection"
        data += chunk
    return data


def _raw_login(sock: socket.socket, stack: MysqlStack, database: str | None, behind: bytes) -> None:
    """A client's login up to its last packet (the token, in clear on loopback), sent with
    `behind` in the same write, without waiting for the login's answer."""
    _packet(sock)  # the greeting
    caps = Capability.PROTOCOL_41 | Capability.SECURE_CONNECTION | Capability.DEPRECATE_EOF
    response = mymsg.handshake_response(
        capabilities=caps,
        user="anyone",
        auth_response=b"\x01" * 32,
        plugin=CACHING_SHA2_PASSWORD,
        database=database,
    )
    if database is None:  # through `gatehouse connect`: the agent takes any password
        sock.sendall(encode(response, 1) + behind)
        return
    sock.sendall(encode(response, 1))
    assert _packet(sock)[1] == bytes((AUTH_MORE_DATA, SHA2_FULL_AUTH))
    sock.sendall(encode(stack.controlplane.token.encode() + b"\x00", 3) + behind)


@pytest.mark.parametrize("path", ["mysql-listen", "connect"])
def test_a_command_sent_before_the_login_completed_never_reaches_the_server_unrecorded(
    path: str, dev_stack: MysqlStack, mariadb: MariadbServer, table: str
) -> None:
    """A hostile client does not wait for the OK that ends its login: it sends a command right
    behind its last login packet, while the agent is still logging in to the target."""
    after = dev_stack.last_seq()
    with contextlib.ExitStack() as stack:
        if path == "connect":
            port = stack.enter_context(dev_stack.listening())
            database = None
        else:
            port, database = dev_stack.controlplane.mysql_port, "my"
        sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        drop = encode(mymsg.command(Command.QUERY, f"DROP TABLE {table}".encode()), 0)
        _raw_login(sock, dev_stack, database, drop)
        answers: list[bytes] = []
        with contextlib.suppress(OSError, AssertionError):
            while True:
                answers.append(_packet(sock)[1])
    assert not [q for q in mariadb.queries() if table in q and "DROP" in q.upper()]
    assert mariadb.admin(f"SELECT COUNT(*) FROM app.{table}").strip() == "2"
    assert answers and answers[-1][:1] == b"\xff", answers
    refused = mymsg.parse_err(answers[-1]).message
    recorded = [e for e in dev_stack.queries(after) if table in str(e)]
    if "before its login" in refused:  # read before the login's end: the session ends
        assert recorded == []
    else:  # the login's end came first: decided like any command
        assert 'guardrail "no-destructive"' in refused
        assert [e["decision"]["result"] for e in recorded] == ["deny"]


def test_a_client_that_never_logs_in_through_connect_is_closed_at_the_deadline(
    dev_stack: MysqlStack, tmp_path: Path
) -> None:
    """`gatehouse connect` opens the session (and the agent its target connection) as soon as
    a client connects; a client that takes the greeting and never answers is closed at the
    handshake deadline like on every other listener, and its session ends."""
    with hasty_listener(dev_stack.controlplane, "my", tmp_path) as listener:
        after = dev_stack.last_seq()
        with socket.create_connection(("127.0.0.1", listener.port), timeout=20) as sock:
            assert _packet(sock)[1][:1] == b"\x0a"  # the target's greeting, through the session
            last, waited = read_until_closed(sock)
        assert waited < 8, f"still open after {waited:.0f} s"
        assert b"did not log in within 1 s" in last
        sessions = [e["type"] for e in dev_stack.events(after) if e["type"].startswith("session.")]
        assert sessions == ["session.start", "session.end"]


def test_a_field_list_is_recorded_and_decided_before_it_reaches_the_server(
    dev_stack: MysqlStack, mariadb: MariadbServer, table: str
) -> None:
    """COM_FIELD_LIST reads a table's columns as SHOW COLUMNS does: it is a request to the
    target like any statement, recorded first and decided by the guardrails."""
    after = dev_stack.last_seq()
    with socket.create_connection(("127.0.0.1", dev_stack.controlplane.mysql_port)) as sock:
        sock.settimeout(10)
        _raw_login(sock, dev_stack, "my", b"")
        assert _packet(sock)[1][:1] == b"\x00"  # the login's OK
        sock.sendall(encode(mymsg.command(Command.FIELD_LIST, table.encode() + b"\x00em%"), 0))
        columns = []
        while (payload := _packet(sock)[1])[:1] not in (b"\xfe", b"\xff"):
            columns.append(mymsg.parse_column(payload).name)
    assert columns == ["email"]
    assert [e.text for e in mariadb.general_log() if e.command == "Field List"][-1].startswith(
        table
    )
    (event,) = [e for e in dev_stack.queries(after) if table in e["request"]["statement"]]
    assert event["request"]["statement"] == f"SHOW COLUMNS FROM `{table}` LIKE 'em%'"
    assert event["request"]["protocol"] == "field_list"
    assert event["decision"]["result"] == "allow"
