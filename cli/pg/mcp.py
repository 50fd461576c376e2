"""MCP's `query` and `describe` on PostgreSQL (cli.protocols.SQL_TOOLS): the same session and
client as `gatehouse exec`, with parameters and a cap on rows."""

from __future__ import annotations

from typing import Any

from cli.errors import CliError
from cli.pg import query as pgexec
from cli.protocols import MAX_RESULT_BYTES, Catalogue
from cli.session import Opened

DESCRIBE_SQL = """select c.table_schema, c.table_name, c.column_name, c.data_type, c.is_nullable
from information_schema.columns c
where c.table_schema not in ('pg_catalog', 'information_schema')
  and ($1::text is null or c.table_schema = $1)
  and ($2::text is null or c.table_name = $2)
order by c.table_schema, c.table_name, c.ordinal_position"""


async def query(
    opened: Opened, sql: str, params: list[str | None] | None, max_rows: int
) -> dict[str, Any]:
    """Columns, rows (at most `max_rows`, then `truncated`) and the command tag of the last
    result; every result under `results` when there were several."""
    outcome = await _run(opened, sql, params, max_rows)
    results = [
        {**r.as_json(), "truncated": r.truncated, "row_count": len(r.rows)} for r in outcome.results
    ]
    last = results[-1] if results else {"columns": [], "rows": [], "command": ""}
    document: dict[str, Any] = {**last, "session_id": outcome.session_id}
    if len(results) > 1:
        document["results"] = results
    if outcome.notices:
        document["notices"] = [n.message for n in outcome.notices]
    return document


async def describe(
    opened: Opened, schema: str | None, table: str | None, max_rows: int
) -> Catalogue:
    """information_schema's columns outside the system schemas, the names as parameters."""
    outcome = await _run(opened, DESCRIBE_SQL, [schema, table], max_rows)
    result = outcome.results[-1] if outcome.results else pgexec.ResultSet()
    return Catalogue(pgexec.text_rows(result), result.truncated)


async def _run(
    opened: Opened, sql: str, params: list[str | None] | None, max_rows: int
) -> pgexec.Outcome:
    try:
        outcome = await pgexec.run_sql_on(opened, sql, params, max_rows, MAX_RESULT_BYTES)
    except ValueError as exc:  # a NUL in the text: the protocol cannot carry it
        opened.call.cancel()
        raise CliError(str(exc)) from None
    if outcome.error is not None:
        raise pgexec.PgError(outcome.error, outcome)
    return outcome
