"""Which names a SQL text creates, drops and runs, statement by statement, and whether running
it may run user-defined code (decision 0010)."""

import pytest

from controlplane.relay.pg.sql import (
    DEPENDS_ON_SETTINGS,
    UNCERTAIN_NAME,
    Effect,
    SqlStatement,
    Unreadable,
    statements,
)


def read(sql: str) -> list[SqlStatement]:
    found = statements(sql)
    assert not isinstance(found, Unreadable), found
    return found


def test_texts_without_a_naming_keyword_are_one_statement_that_runs_code() -> None:
    text = "select 1; insert into t values (2)"
    assert statements(text) == [SqlStatement(text, runs_code=True, planned=True)]


def test_prepare_execute_and_deallocate() -> None:
    found = statements("PREPARE P(int) AS select $1; EXECUTE p(1); DEALLOCATE p; DEALLOCATE ALL")
    assert found == [
        SqlStatement(
            "PREPARE P(int) AS select $1",
            Effect("prepare", "p", "PREPARE P(int) AS select $1"),
            runs_code=False,
            planned=False,
        ),
        SqlStatement("EXECUTE p(1)", executes=("p",), planned=False),
        SqlStatement("DEALLOCATE p", Effect("deallocate", "p"), runs_code=False, planned=False),
        SqlStatement("DEALLOCATE ALL", Effect("deallocate", None), runs_code=False, planned=False),
    ]


def test_an_execute_nested_in_another_statement_is_found() -> None:
    [explain, create] = read("explain analyze execute a; create table x as execute b")
    assert explain.executes == ("a",)
    assert create.executes == ("b",)


def test_cursors() -> None:
    found = read(
        'DECLARE c CURSOR WITH HOLD FOR select 1; DECLARE "D" CURSOR FOR select 2;'
        " FETCH 2 FROM c; MOVE d; CLOSE c; CLOSE ALL; DISCARD ALL"
    )
    assert [s.effect for s in found] == [
        Effect("declare", "c", "DECLARE c CURSOR WITH HOLD FOR select 1", holdable=True),
        Effect("declare", "D", 'DECLARE "D" CURSOR FOR select 2'),
        None,
        None,
        Effect("close", "c"),
        Effect("close", None),
        Effect("discard"),
    ]
    assert [s.fetches for s in found[2:4]] == ["c", "d"]


def test_statement_texts_are_cut_by_bytes_of_utf8() -> None:
    found = read("select 'éé'; PREPARE p AS select 'ü'")
    assert [s.text for s in found] == ["select 'éé'", "PREPARE p AS select 'ü'"]


def test_an_unparseable_text_names_nothing_and_a_too_deep_one_is_unknown() -> None:
    assert statements("PREPARE p AS selec 1") == [SqlStatement("PREPARE p AS selec 1")]
    deep = "select " + "array[" * 1000 + "1" + "]" * 1000 + " as close"
    found = statements(deep)
    assert isinstance(found, Unreadable) and found.too_complex


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "start transaction isolation level serializable",
        "SAVEPOINT a",
        "release a",
        "ROLLBACK",
        "abort",
        "rollback to savepoint a",
        "SET search_path = public",
        "set local standard_conforming_strings = off",
        "RESET ALL",
        "SHOW client_encoding",
        "CLOSE c",
        "CLOSE ALL",
        "DEALLOCATE p",
        "PREPARE p AS select f()",
    ],
)
def test_statements_that_evaluate_nothing_run_no_code(sql: str) -> None:
    [statement] = read(sql)
    assert not statement.runs_code
    assert not statement.planned


@pytest.mark.parametrize(
    "sql",
    [
        "COMMIT",  # deferred triggers, and the queries of holdable cursors
        "end",
        "prepare transaction 'x'",
        "FETCH 1 FROM c",  # the cursor's query
        "MOVE c",
        "DECLARE c CURSOR FOR select 1",  # planned on the spot
        "EXECUTE p",
        "DO $$ begin null; end $$",
        "CALL p()",
        "DISCARD ALL",
        "set constraints all immediate",  # fires deferred triggers now
        "/* a comment first */ BEGIN",  # not read: taken to run code
    ],
)
def test_other_statements_may_run_code(sql: str) -> None:
    [statement] = read(sql)
    assert statement.runs_code


def test_a_bind_plans_queries_not_utility_statements() -> None:
    assert [s.planned for s in read("FETCH 1 FROM c; CLOSE c; select x from t; execute p")] == [
        False,
        False,
        True,
        False,
    ]


@pytest.mark.parametrize(
    "sql",
    ["select 1", "SELECT 1 AS one, 'x', NULL, -2.5, true", '  select\n1 as "a b"'],
)
def test_a_select_of_literals_runs_no_code_and_plans_nothing(sql: str) -> None:
    """Drivers' liveness checks (`select 1`) between the reads of a portal keep it proven."""
    [statement] = read(sql)
    assert not statement.runs_code
    assert not statement.planned


@pytest.mark.parametrize(
    "sql",
    [
        "select $1",  # its type may be user-defined (an output function, a domain's CHECK)
        "select 1 + 1",  # an operator is a function, maybe a user's
        "select '1'::money",  # a cast
        "select now()",
        "select 1 from t",  # a view, row-level security
        "select 1 where true",
        "select 1 into t",  # CREATE TABLE AS: event triggers
        "select 1 limit 1",
        "select 1 for update",
        "select 1 union select 2",
        "select 1; select 2 + 2",
        'select 1 collate "C"',
        "select x",  # a column of nothing is an error, never code: still not read as code-free
        "select 1 -- (",  # a parenthesis is never read further
        "select " + "1, " * 100 + "1",  # longer than read
    ],
)
def test_a_select_of_anything_else_may_run_code(sql: str) -> None:
    assert any(statement.runs_code for statement in read(sql))


def test_names_read_the_same_with_standard_conforming_strings_off_are_kept() -> None:
    text = "PREPARE p AS select 'C:\\temp'; EXECUTE p"
    found = read(text)
    # The texts are the client's, not the other reading's (which put an E before the literal).
    assert [s.text for s in found] == ["PREPARE p AS select 'C:\\temp'", "EXECUTE p"]
    # (A SELECT of a constant: a Bind and Execute of p run no code.)
    prepared = Effect("prepare", "p", "PREPARE p AS select 'C:\\temp'", runs_code=False)
    assert found[0].effect == prepared


def test_names_that_differ_with_standard_conforming_strings_off_are_unreadable() -> None:
    """A configuration reload can turn the setting off before the next statement, and the server
    says so only after it ran: the names must not depend on it."""
    # On: one SELECT of a literal. Off: a SELECT, then a PREPARE that replaces s1.
    hidden = "select 'a\\''; prepare s1 as select 'swapped'; --'"
    assert statements(hidden) == Unreadable(DEPENDS_ON_SETTINGS)
    # Off it is a SELECT and a DROP, but no name changes: for the guard to decide.
    dropped = "select 'a\\''; drop table t; --'"
    assert statements(dropped) == [SqlStatement(dropped)]


@pytest.mark.parametrize(
    ("sql", "runs_code"),
    [
        ("prepare p as select 1, 'a'", False),
        ("prepare p as select f()", True),
        ("prepare p(int) as select $1", True),  # a parameter's type may be a domain
        ("prepare p as select * from t", True),
        ("prepare p as insert into t values (1)", True),
    ],
)
def test_whether_a_statement_sql_prepared_runs_code_is_its_query_s(
    sql: str, runs_code: bool
) -> None:
    """A Bind and Execute of the name run the query inside, not the PREPARE (which runs none)."""
    [statement] = read(sql)
    assert not statement.runs_code
    assert statement.effect is not None and statement.effect.runs_code is runs_code


@pytest.mark.parametrize(
    "sql",
    [
        f"PREPARE {'a' * 62}\u00e9 AS select 1",  # cut here to the 62 a's, kept whole in LATIN1
        f"EXECUTE {'a' * 62}",
        f"DECLARE {'c' * 60} CURSOR FOR select 1",
        "FETCH \u00e9",
        'CLOSE "\u00c9"',  # a single-byte database downcases É unquoted; libpg_query does not
        "DEALLOCATE U&\"!00e9\" UESCAPE '!'",
        f"explain analyze execute {'e' * 61}",
    ],
)
def test_a_name_the_server_may_keep_otherwise_is_unreadable(sql: str) -> None:
    assert statements(sql) == Unreadable(UNCERTAIN_NAME)


def test_short_ascii_names_and_non_ascii_text_elsewhere_are_read() -> None:
    [prepare] = read(f"PREPARE {'p' * 59} AS select '\u00e9'")
    assert prepare.effect is not None
    assert prepare.effect.name == "p" * 59
