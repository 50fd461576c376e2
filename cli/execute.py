"""`gatehouse exec NAME -c SQL | -- CMD [ARGS...]`: one request through the gateway, output on
stdout.

The session is opened first and its `opened` frame names the connection's type: SQL for a
database, a command for `ssh` and `shell` (stdin streamed, stdout and stderr kept apart, the
command's exit status returned). One round trip, no lookup before it: AI agents run this
again and again, so this module imports only what every `exec` needs (cli.commands declares
its options; cli.main runs it).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from cli.errors import USAGE, CliError
from cli.output import Format, echo, emit, emit_json

if TYPE_CHECKING:
    from cli.session import Opened
    from wire.term.codec import Start


def execute(
    connection: str,
    args: list[str],
    command: str | None,
    no_stdin: bool,
    controlplane: str | None,
    output: Format,
    no_wait: bool = False,
) -> int:
    """Run the request; returns the exit status (a command's own, 141 when our reader went
    away), raises CliError for a refusal or a usage error."""
    if command is not None and args:
        raise CliError("give either -c TEXT or -- CMD [ARGS...], not both", USAGE)
    if command is None and not args:
        raise CliError(
            f"nothing to run: gatehouse exec {connection} -c 'SQL' for a database, "
            f"gatehouse exec {connection} -- CMD [ARGS...] for ssh and shell",
            USAGE,
        )
    from cli import __version__, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> Any:
        from cli.session import TERMINAL_TYPES, open_session

        opened = await open_session(
            channel, md, connection, "exec", f"gatehouse-cli/{__version__} exec", no_wait=no_wait
        )
        if opened.connection_type in TERMINAL_TYPES:
            return await _run_command(opened, args or [], command, no_stdin)
        if args:
            opened.call.cancel()
            raise CliError(
                f"{connection} is a {opened.connection_type or 'database'} connection: give "
                f"the statement with -c, e.g. gatehouse exec {connection} -c 'select 1'",
                USAGE,
            )
        from cli import pgexec

        assert command is not None
        return await pgexec.run_sql_on(opened, command)

    try:
        outcome = rpc.call(address, work)
    except BrokenPipeError:
        # Whoever read our stdout stopped (`| head`): end quietly, as a shell command does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CliError as exc:
        for notice in _notices(exc):
            echo(f"{notice.severity}:  {notice.message}", err=True)
        raise
    if isinstance(outcome, int):
        return outcome
    for notice in outcome.notices:
        echo(f"{notice.severity}:  {notice.message}", err=True)
    _print_results(outcome, output)
    if outcome.error is not None:
        from cli import pgexec

        raise pgexec.PgError(outcome.error, outcome)
    return 0


async def _run_command(opened: Opened, args: list[str], command: str | None, no_stdin: bool) -> int:
    from cli import term

    start = command_start(args, command)
    source = None if no_stdin else term.read_fd(0)
    streams = term.StdStreams()
    async with term.TermSession(opened) as session:
        exit_ = await term.relay(session, start, source, streams)
    return term.exit_status(exit_, streams.said)


def command_start(args: list[str], command: str | None) -> Start:
    """What an ssh or shell connection runs: the words after `--` as an argv (ssh joins them
    with spaces, as `ssh host cmd args` does; shell runs them without a shell), or the `-c`
    text verbatim, as a remote shell reads it."""
    from wire.term.codec import Start

    return Start(argv=tuple(args)) if args else Start(command=command)


def _notices(exc: CliError) -> list[Any]:
    """A database error's notices, printed before it as psql does."""
    outcome = getattr(exc, "outcome", None)
    return list(outcome.notices) if outcome is not None else []


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
            echo(f"({count} row{'s' if count != 1 else ''})")
        else:
            echo(result.command)
