"""MySQL's `describe` query writes the names it is given as hex literals: a quote or a
backslash in a name is a byte of the name, never SQL, whatever the server's sql_mode."""

from __future__ import annotations

from cli.mysql.mcp import describe_sql


def test_names_are_hex_literals_and_nothing_else_of_them_is_sql() -> None:
    schema, table = "app' OR '1'='1", "t\\'x"
    sql = describe_sql(schema, table)
    assert "OR '1'" not in sql and "t\\" not in sql
    assert "table_schema = X'" + schema.encode().hex() + "'" in sql
    assert "table_name = X'" + table.encode().hex() + "'" in sql


def test_without_names_only_the_system_schemas_are_left_out() -> None:
    sql = describe_sql(None, None)
    assert "X'" not in sql
    assert "NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')" in sql
