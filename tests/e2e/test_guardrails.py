"""Guardrails: a denied statement never reaches the database, the client gets a normal
ErrorResponse naming the rule, and the session stays usable."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from tests.e2e import pggate
from tests.e2e.conftest import Stack


@pytest.fixture
def guarded(own_stack: Stack) -> Iterator[Stack]:
    yield pggate.guard(
        own_stack,
        deny_statements=["DROP", "TRUNCATE", "ALTER"],
        deny_unbounded=["DELETE", "UPDATE"],
        deny_patterns=["(?i)pg_read_file"],
    )


def table(stack: Stack) -> str:
    name = f"g_{uuid.uuid4().hex[:8]}"
    created = stack.cli(
        "exec", "pg", "-c", f"create table {name}(id int); insert into {name} values (1), (2)"
    )
    assert created.returncode == 0, created.stderr
    return name


def denials(stack: Stack) -> list[dict[str, object]]:
    return [
        e
        for e in stack.events()
        if e["type"] == "db.query" and e["decision"]["result"] == "deny"  # type: ignore[index]
    ]


def test_denied_statement_never_reaches_the_database(guarded: Stack) -> None:
    name = table(guarded)
    sql = f"drop table {name}"
    result = guarded.cli("exec", "pg", "-c", sql)
    assert result.returncode == 1
    assert "42501" in result.stderr
    assert "no-destructive" in result.stderr
    assert guarded.pg.statement_log().count(sql) == 0
    (event,) = [e for e in denials(guarded) if e["request"]["statement"] == sql]  # type: ignore[index]
    assert event["decision"]["rule"] == "no-destructive"  # type: ignore[index]
    assert "DROP" in event["decision"]["reason"]  # type: ignore[index]
    assert not [e for e in guarded.events() if e.get("ref") == event["seq"]]
    still = guarded.cli("exec", "pg", "-c", f"select count(*) from {name}", "-o", "json")
    assert still.returncode == 0 and '"rows": [\n    [\n      2' in still.stdout


def test_delete_without_where_is_denied_and_with_where_allowed(guarded: Stack) -> None:
    name = table(guarded)
    assert guarded.cli("exec", "pg", "-c", f"delete from {name}").returncode == 1
    assert guarded.cli("exec", "pg", "-c", f"delete from {name} where id = 1").returncode == 0
    assert guarded.pg.statement_log().count(f"delete from {name}") == 0


def test_one_denied_statement_denies_the_whole_string(guarded: Stack) -> None:
    name = table(guarded)
    sql = f"insert into {name} values (3); truncate {name}"
    result = guarded.cli("exec", "pg", "-c", sql)
    assert result.returncode == 1
    assert guarded.pg.statement_log().count(sql) == 0
    count = guarded.cli("exec", "pg", "-c", f"select count(*) from {name}")
    assert "2" in count.stdout  # the insert before the TRUNCATE did not run either


def test_pattern_rule_and_extended_protocol_keep_the_session_usable(guarded: Stack) -> None:
    with pggate.listening(guarded) as listener:
        dsn = f"host=127.0.0.1 port={listener.port} dbname=pg user=x"
        with psycopg.connect(dsn, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no-destructive"):
                conn.execute("select pg_read_file(%s)", ("/etc/passwd",))
            # The same session goes on working.
            assert conn.execute("select %s::int", (7,)).fetchone() == (7,)
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute("alter table pg_class rename to x")
            assert conn.execute("select 8").fetchone() == (8,)
    reasons = [e["decision"]["reason"] for e in denials(guarded)]  # type: ignore[index]
    assert any("pg_read_file" in str(r) for r in reasons)
    assert guarded.pg.statement_log().count("select pg_read_file($1)") == 0
