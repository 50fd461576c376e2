"""Password literals leave a MySQL statement's recorded text, however the server reads it."""

from __future__ import annotations

import pytest

from controlplane.policy.mysql_sql import redact

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (f"CREATE USER bob IDENTIFIED BY '{SECRET}'", "CREATE USER bob IDENTIFIED BY '***'"),
        (f'SET PASSWORD FOR bob = PASSWORD("{SECRET}")', "SET PASSWORD FOR bob = PASSWORD('***')"),
        (
            f"CHANGE MASTER TO MASTER_PASSWORD='{SECRET}', MASTER_HOST='h'",
            "CHANGE MASTER TO MASTER_PASSWORD='***', MASTER_HOST='***'",
        ),
        ("SELECT password FROM accounts", "SELECT password FROM accounts"),
    ],
)
def test_password_literals_are_masked(sql: str, expected: str) -> None:
    assert redact(sql) == expected


@pytest.mark.parametrize(
    "sql",
    [
        # Executable comments: MySQL and MariaDB run what is in them.
        f"/*!CREATE USER bob IDENTIFIED BY '{SECRET}'*/",
        f"CREATE USER bob /*!50700 IDENTIFIED BY '{SECRET}' */",
        f"/*M!100100 ALTER USER bob IDENTIFIED BY '{SECRET}' */",
        f"SET PASSWORD = /*!PASSWORD('{SECRET}')*/",
        # NO_BACKSLASH_ESCAPES: 'x\' ends the first literal, and the password is the next one.
        f"CREATE USER bob IDENTIFIED BY 'x\\' '{SECRET}' -- '",
    ],
)
def test_a_password_is_masked_in_every_reading_the_server_may_make(sql: str) -> None:
    redacted = redact(sql)
    assert SECRET not in redacted
    assert "hunter" not in redacted and "Zq9" not in redacted


def test_an_executable_comment_keeps_its_place() -> None:
    assert (
        redact(f"CREATE USER bob /*!50700 IDENTIFIED BY '{SECRET}' */")
        == "CREATE USER bob /*!50700 IDENTIFIED BY '***' */"
    )


@pytest.mark.parametrize(
    "sql",
    [
        f"CREATE USER bob IDENTIFIED BY {SECRET}",
        f"ALTER USER bob IDENTIFIED WITH mysql_native_password BY {SECRET}",
        f"ALTER USER bob IDENTIFIED VIA ed25519 USING {SECRET}",
        f"SET PASSWORD FOR bob = {SECRET}",
        f"CHANGE MASTER TO MASTER_PASSWORD={SECRET}",
        f"CREATE USER bob IDENTIFIED BY `{SECRET}`",
        "SET PASSWORD = PASSWORD(20250101)",
    ],
)
def test_a_password_typed_without_its_quotes_is_masked(sql: str) -> None:
    """The server refuses it, but it was sent, and it is the password all the same."""
    redacted = redact(sql)
    assert SECRET not in redacted and "20250101" not in redacted
    assert "***" in redacted


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT password FROM accounts ORDER BY id", "SELECT password FROM accounts ORDER BY id"),
        ("SET PASSWORD = ?", "SET PASSWORD = ?"),
        (
            "ALTER USER bob IDENTIFIED BY PASSWORD '*01'",
            "ALTER USER bob IDENTIFIED BY PASSWORD '***'",
        ),
    ],
)
def test_what_stands_where_a_password_may_is_kept_when_it_is_none(sql: str, expected: str) -> None:
    assert redact(sql) == expected
