"""Password literals leave the recorded statement text; everything else stays byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.policy.statement_secrets import held_secret, redact_statement, withheld

SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        (f"create role bob login password '{SECRET}'", "create role bob login password '***'"),
        (
            f"CREATE USER bob WITH ENCRYPTED PASSWORD '{SECRET}'",
            "CREATE USER bob WITH ENCRYPTED PASSWORD '***'",
        ),
        (
            f"alter role bob password '{SECRET}' valid until 'infinity'",
            "alter role bob password '***' valid until 'infinity'",
        ),
        (f"alter user bob with password E'{SECRET}\\''", "alter user bob with password '***'"),
        (f"alter role bob password $p${SECRET}$p$", "alter role bob password '***'"),
        ("alter role bob password 'hun'\n'ter2-Zq9'", "alter role bob password '***'"),
        (
            f"/* c */ Alter /* x */ ROLE bob PassWord '{SECRET}'",
            "/* c */ Alter /* x */ ROLE bob PassWord '***'",
        ),
        (
            f"create user mapping for bob server s options (user 'bob', password '{SECRET}')",
            "create user mapping for bob server s options (user 'bob', password '***')",
        ),
        (
            f"alter user mapping for current_user server s options (set password '{SECRET}')",
            "alter user mapping for current_user server s options (set password '***')",
        ),
        (
            f"create server s foreign data wrapper pg options (host 'h', \"password\" '{SECRET}')",
            "create server s foreign data wrapper pg options (host 'h', \"password\" '***')",
        ),
        (
            f"select dblink_connect('c1', 'host=db user=u password={SECRET}')",
            "select dblink_connect('***', '***')",
        ),
        (
            f"select * from dblink('dbname=x password={SECRET}', 'select 1') as t(a int)",
            "select * from dblink('***', '***') as t(a int)",
        ),
        (
            f"create subscription sub connection 'host=h password={SECRET}' publication p",
            "create subscription sub connection '***' publication p",
        ),
        (
            f"select my_connect('host=h password={SECRET}')",
            "select my_connect('***')",
        ),
        (
            f"select 1; create role é password '{SECRET}'; select 'ü'",
            "select 1; create role é password '***'; select 'ü'",
        ),
    ],
)
def test_secret_literals_are_masked(sql: str, expected: str) -> None:
    redacted = redact_statement(sql)
    assert redacted == expected
    assert SECRET not in redacted
    assert "hun" not in redacted


@pytest.mark.parametrize(
    "sql",
    [
        "select 'password' as word",
        "select password from users where id = 1",
        "create role bob login",
        "alter role bob password null",
        "select 'a\\b'",
        "select dblink_is_busy_name from t",
    ],
)
def test_statements_without_a_secret_are_unchanged(sql: str) -> None:
    assert redact_statement(sql) == sql


def test_a_password_the_server_would_refuse_as_a_parameter_is_still_masked() -> None:
    # PostgreSQL takes no parameters in utility statements: this does not parse, and goes.
    assert redact_statement("alter role bob password $1") == "alter role bob password ***"


@pytest.mark.parametrize(
    "sql",
    [
        f"create rol bob password '{SECRET}'",  # does not parse: every literal goes
        f"alter role bob password '{SECRET}",  # does not even scan: everything after the word
        f"alter role bob password {SECRET}",
    ],
)
def test_unparseable_text_mentioning_a_password_is_redacted_conservatively(sql: str) -> None:
    assert SECRET not in redact_statement(sql)


@given(st.text(max_size=60))
def test_any_text_is_handled_without_an_exception(text: str) -> None:
    redacted = redact_statement(text)
    assert isinstance(redacted, str)
    if "password" not in text.lower():
        assert redacted == text or "'***'" in redacted


@pytest.mark.parametrize(
    "sql",
    [
        # Off: the literal q' and an ALTER ROLE; on: one literal up to "password ", then the
        # secret outside any literal (and a syntax error).
        f"select 'q\\''; alter role r password '{SECRET}'; -- '",
        # On: a literal, then the ALTER ROLE; off: one literal up to the last quote.
        f"select 'x\\'; alter role r password '{SECRET}'; --'",
        # Off: the password literal ends at the second quote and the secret follows it.
        f"alter role r password 'a\\' || '{SECRET}'",
        f"alter role r password 'se\\cret{SECRET}'",
        f"select 'x\\', 'y' password '{SECRET}'",
    ],
)
def test_no_part_of_a_password_is_kept_under_either_reading_of_a_backslash(sql: str) -> None:
    """standard_conforming_strings may be off (a reload reports it late): both readings count."""
    redacted = redact_statement(sql)
    assert SECRET not in redacted
    assert "hunter" not in redacted and "Zq9" not in redacted


def test_a_backslash_that_both_readings_split_alike_keeps_the_rest() -> None:
    sql = "select 'a\\b' as v, 1"
    assert redact_statement(sql) is sql


@pytest.mark.parametrize(
    "sql",
    [
        f"do $$ begin alter role bob password '{SECRET}'; end $$",
        f"DO LANGUAGE plpgsql 'begin alter role bob password ''{SECRET}''; end'",
        f"do $$ begin execute format('alter role bob password %L', '{SECRET}'); end $$",
        f"create function f() returns void language sql as $$ alter role bob password '{SECRET}'"
        " $$",
        f"create or replace procedure p() language plpgsql as $b$ begin "
        f"perform dblink_connect('host=h password={SECRET}'); end $b$",
    ],
)
def test_a_password_in_code_the_statement_runs_is_masked(sql: str) -> None:
    """A DO block or a function body is a literal the parser does not read: a password in it
    runs all the same (now, or when the function is called)."""
    redacted = redact_statement(sql)
    assert SECRET not in redacted
    assert "hunter" not in redacted


def test_code_without_a_secret_is_kept() -> None:
    sql = "do $$ begin perform 1; end $$; alter role bob password null"
    assert redact_statement(sql) == sql


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (f'syntax error at or near "{SECRET}"', "syntax error at or near ***"),
        (
            f'unterminated quoted string at or near "\'{SECRET}"',
            "unterminated quoted string at or near ***",
        ),
        (
            f"You have an error in your SQL syntax; check the manual for the right syntax to use "
            f"near '{SECRET}' at line 1",
            "You have an error in your SQL syntax; check the manual for the right syntax to use "
            "near ***",
        ),
        ("syntax error at end of input", "syntax error at end of input"),
    ],
)
def test_a_message_about_a_statement_that_held_a_secret_stops_at_its_first_quote(
    message: str, expected: str
) -> None:
    assert withheld(message) == expected
    assert held_secret(redact_statement(f"alter role bob password {SECRET}"))
    assert not held_secret("alter role bob password null")


@pytest.mark.parametrize(
    "sql",
    [
        f"alter system set primary_conninfo = 'postgresql://rep:{SECRET}@primary:5432/app'",
        f"select my_connect('postgres://u:{SECRET}@h/db?sslmode=require')",
        f"select dblink_exec('postgresql:///app?password={SECRET}', 'select 1')",
        f"alter system set primary_conninfo = 'postgresql://h/db?password={SECRET}'",
    ],
)
def test_a_connection_uri_with_a_password_is_masked(sql: str) -> None:
    """libpq reads a connection string as a URI too: its password is in the userinfo or in
    a `password` parameter."""
    redacted = redact_statement(sql)
    assert SECRET not in redacted
    assert "hunter" not in redacted
