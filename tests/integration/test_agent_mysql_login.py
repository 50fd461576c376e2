"""The agent's login to MariaDB with its own credential: native, ed25519, TLS, refusals."""

from __future__ import annotations

import asyncio

import pytest

from agent.mysql.login import Connection, MysqlTarget, TargetError, dial, login, shared_capabilities
from devenv.mariadb import MariadbServer
from tests.conftest import ED25519_PASSWORD, MYSQL_PASSWORD
from wire.mysql import messages as msg
from wire.mysql.constants import Capability, Command
from wire.mysql.packets import encode


async def _rows(conn: Connection, sql: bytes) -> list[list[bytes | None]]:
    """Run one query on a logged-in connection (DEPRECATE_EOF): its rows."""
    conn.writer.write(encode(msg.command(Command.QUERY, sql), 0))
    first = await conn.read()
    assert first.first != 0xFF, msg.parse_err(first.payload)
    columns = first.payload[0]
    for _ in range(columns):
        await conn.read()
    rows = []
    while (packet := await conn.read()).first != 0xFE:
        rows.append(msg.parse_text_row(packet.payload, columns))
    return rows


async def _current_user(target: MysqlTarget, password: str) -> tuple[str, str]:
    conn = await dial(target)
    caps = shared_capabilities(target, conn.greeting.capabilities, 0xFFFFFFFF)
    await login(conn, target, password, caps)
    [[user]] = await _rows(conn, b"SELECT CURRENT_USER()")
    [[_, cipher]] = await _rows(conn, b"SHOW SESSION STATUS LIKE 'Ssl_cipher'")
    conn.close()
    return (user or b"").decode(), "tls" if cipher else "plain"


def test_native_password_over_tls_by_default(mariadb: MariadbServer) -> None:
    target = MysqlTarget(mariadb.host, mariadb.port, "app", "app")
    user, tls = asyncio.run(_current_user(target, MYSQL_PASSWORD))
    assert user == "app@%"
    assert tls == "tls"


def test_ed25519_login_without_tls(mariadb: MariadbServer) -> None:
    target = MysqlTarget(mariadb.host, mariadb.port, "edapp", "app", tls="disable")
    user, tls = asyncio.run(_current_user(target, ED25519_PASSWORD))
    assert user == "edapp@%"
    assert tls == "plain"


def test_verify_full_checks_the_servers_certificate(mariadb: MariadbServer) -> None:
    good = MysqlTarget(
        "localhost", mariadb.port, "app", tls="verify-full", tls_ca=str(mariadb.ca_file)
    )
    assert asyncio.run(_current_user(good, MYSQL_PASSWORD)) == ("app@%", "tls")
    bad = MysqlTarget(mariadb.host, mariadb.port, "app", tls="verify-full")  # no CA given
    with pytest.raises(TargetError, match="login to the target failed"):
        asyncio.run(_current_user(bad, MYSQL_PASSWORD))


def test_a_wrong_password_is_the_servers_refusal(mariadb: MariadbServer) -> None:
    target = MysqlTarget(mariadb.host, mariadb.port, "edapp", tls="disable")
    with pytest.raises(TargetError) as caught:
        asyncio.run(_current_user(target, "wrong"))
    assert caught.value.code == 1045
    assert caught.value.sqlstate == "28000"


def test_an_unreachable_target_says_where(mariadb: MariadbServer) -> None:
    target = MysqlTarget("127.0.0.1", 1, "app")
    with pytest.raises(TargetError, match=r"could not connect to 127\.0\.0\.1:1"):
        asyncio.run(_current_user(target, MYSQL_PASSWORD))


def test_capabilities_never_include_compression_or_local_files() -> None:
    target = MysqlTarget("h", 1, "u")
    caps = shared_capabilities(target, 0xFFFFFFFF, 0xFFFFFFFF)
    assert not caps & Capability.COMPRESS
    assert not caps & Capability.LOCAL_FILES
    allowed = MysqlTarget("h", 1, "u", local_infile=True)
    assert shared_capabilities(allowed, 0xFFFFFFFF, 0xFFFFFFFF) & Capability.LOCAL_FILES
