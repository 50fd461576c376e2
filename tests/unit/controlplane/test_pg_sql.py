"""Which names a SQL text creates, drops and runs, statement by statement (decision 0010)."""

from controlplane.relay.pg_sql import Effect, SqlStatement, statements


def test_texts_without_a_naming_keyword_are_not_parsed() -> None:
    assert statements("select 1; insert into t values (2)") == []


def test_prepare_execute_and_deallocate() -> None:
    found = statements("PREPARE P(int) AS select $1; EXECUTE p(1); DEALLOCATE p; DEALLOCATE ALL")
    assert found == [
        SqlStatement(
            "PREPARE P(int) AS select $1", Effect("prepare", "p", "PREPARE P(int) AS select $1")
        ),
        SqlStatement("EXECUTE p(1)", executes=("p",)),
        SqlStatement("DEALLOCATE p", Effect("deallocate", "p")),
        SqlStatement("DEALLOCATE ALL", Effect("deallocate", None)),
    ]


def test_an_execute_nested_in_another_statement_is_found() -> None:
    [explain, create] = statements("explain analyze execute a; create table x as execute b")
    assert explain.executes == ("a",)
    assert create.executes == ("b",)


def test_cursors() -> None:
    found = statements(
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
    found = statements("select 'éé'; PREPARE p AS select 'ü'")
    assert [s.text for s in found] == ["select 'éé'", "PREPARE p AS select 'ü'"]


def test_an_unparseable_text_names_nothing_and_a_too_deep_one_is_unknown() -> None:
    assert statements("PREPARE p AS selec 1") == []
    deep = "select " + "array[" * 1000 + "1" + "]" * 1000 + " as close"
    assert statements(deep) is None
