"""MCP's `query` and `describe` on MySQL (cli.protocols.SQL_TOOLS): the same session and
client as `gatehouse exec`, with a cap on rows."""

from __future__ import annotations

from typing import Any

from cli.errors import CliError
from cli.mysql import query as myexec
from cli.protocols import MAX_RESULT_BYTES, Catalogue
from cli.session import Opened

SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
DESCRIBE_SQL = """SELECT table_schema, table_name, column_name, column_type, is_nullable
FROM information_schema.columns
WHERE table_schema NOT IN ({system}){only}
ORDER BY table_schema, table_name, ordinal_position"""


async def query(
    opened: Opened, sql: str, params: list[str | None] | None, max_rows: int
) -> dict[str, Any]:
    """Columns, rows (at most `max_rows`, then `truncated`) and affected rows of the last
    result; every result under `results` when there were several."""
    if params is not None:
        opened.call.cancel()
        raise CliError("params are for postgres connections; on mysql, write the values in sql")
    found = await _run(opened, sql, max_rows)
    results = [{**r.as_json(), "truncated": r.truncated, "row_count": len(r.rows)} for r in found]
    last = results[-1] if results else {"columns": [], "rows": [], "affected_rows": None}
    document: dict[str, Any] = {**last, "session_id": opened.session_id}
    if len(results) > 1:
        document["results"] = results
    return document


async def describe(
    opened: Opened, schema: str | None, table: str | None, max_rows: int
) -> Catalogue:
    """information_schema's columns outside the system schemas."""
    found = await _run(opened, describe_sql(schema, table), max_rows)
    result = found[-1] if found else myexec.ResultSet()
    rows = [
        [None if v is None else v.decode("utf-8", "replace") for v in row] for row in result.rows
    ]
    return Catalogue(rows, result.truncated)


def describe_sql(schema: str | None, table: str | None) -> str:
    """The catalogue query, the names written as hex literals: they need no escaping, whatever
    the server's sql_mode says of backslashes (NO_BACKSLASH_ESCAPES), and compare exactly."""
    only = "".join(
        f"\n  AND {column} = {_hex(value)}"
        for column, value in (("table_schema", schema), ("table_name", table))
        if value is not None
    )
    system = ", ".join(f"'{name}'" for name in SYSTEM_SCHEMAS)
    return DESCRIBE_SQL.format(system=system, only=only)


def _hex(value: str) -> str:
    return f"X'{value.encode('utf-8').hex()}'"


async def _run(opened: Opened, sql: str, max_rows: int) -> list[myexec.ResultSet]:
    results, error = await myexec.run_sql_on(opened, sql, max_rows, MAX_RESULT_BYTES)
    if error is not None:
        raise myexec.MysqlError(error)
    return results
