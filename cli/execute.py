"""`gatehouse exec NAME -c SQL`: one request through the gateway, output on stdout."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.options import ControlplaneOpt, OutputOpt, call
from cli.output import Format, emit, emit_json


def exec_(
    connection: Annotated[str, typer.Argument(help="Connection name.")],
    command: Annotated[str, typer.Option("--command", "-c", help="SQL to run.")],
    controlplane: ControlplaneOpt = None,
    output: OutputOpt = Format.table,
) -> None:
    """Run one request through the gateway; it is recorded before it runs.

    Example: gatehouse exec pg-prod -c 'select 41+1 as answer' -o json
    """
    from cli import pgexec, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> pgexec.Outcome:
        return await pgexec.run_sql(channel, md, connection, command)

    try:
        outcome = call(address, work)
    except pgexec.PgError as exc:
        for notice in exc.outcome.notices if exc.outcome else []:
            typer.echo(f"{notice.severity}:  {notice.message}", err=True)
        raise
    for notice in outcome.notices:
        typer.echo(f"{notice.severity}:  {notice.message}", err=True)
    _print_results(outcome, output)
    if outcome.error is not None:
        raise pgexec.PgError(outcome.error, outcome)


def _print_results(outcome: Any, output: Format) -> None:
    from cli import pgexec

    results: list[pgexec.ResultSet] = outcome.results
    if output is Format.json:
        documents = [r.as_json() for r in results]
        last = documents[-1] if documents else {"columns": [], "rows": [], "command": ""}
        document = dict(last)
        if len(documents) > 1:
            document["results"] = documents
        document["session_id"] = outcome.session_id
        emit_json(document)
        return
    for result in results:
        if result.columns:
            emit(output, None, [c.name for c in result.columns], pgexec.text_rows(result))
            count = len(result.rows)
            typer.echo(f"({count} row{'s' if count != 1 else ''})")
        else:
            typer.echo(result.command)
