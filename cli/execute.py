"""`gatehouse exec NAME -c SQL | -- CMD [ARGS...]`: one request through the gateway, output on
stdout.

The session is opened first and its `opened` frame names the connection's type: SQL for a
database, a command for `ssh` and `shell` (stdin streamed, stdout and stderr kept apart, the
command's exit status returned). One round trip, no lookup before it: AI agents run this
again and again.

So that they do not pay for typer (with click and pydantic, more than the rest of the
command), `cli.main` gives an ordinary command line to `parse` here and runs `execute`
without building the typer app. `parse` accepts only the unambiguous spellings of the
options below and returns None for anything else (--help, a usage error, `-nc`, a repeated
option...), which then goes through the typer command from `command()` as every verb does.
Both end in `execute`; on the command lines `parse` accepts they produce the same values.

This module has no `from __future__ import annotations`: the typer signature is made inside
`command()`, where `typer` is a local name, and typer evaluates annotations in the module.
"""

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

from cli.errors import USAGE, CliError
from cli.output import Format, emit, emit_json

if TYPE_CHECKING:
    from cli.session import Opened
    from wire.term.codec import Start


def command() -> Callable[..., None]:
    """`exec` as a typer command (help, parsing and usage errors: typer's)."""
    import typer

    from cli.options import ControlplaneOpt, OutputOpt

    def exec_(
        connection: Annotated[str, typer.Argument(help="Connection name.")],
        args: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="CMD",
                help="ssh and shell connections: the command and its arguments, after --.",
                show_default=False,
            ),
        ] = None,
        command: Annotated[
            str | None,
            typer.Option(
                "--command",
                "-c",
                help="SQL to run (postgres); for ssh and shell: a command line, as a remote "
                "shell reads it.",
            ),
        ] = None,
        no_stdin: Annotated[
            bool,
            typer.Option(
                "--no-stdin",
                "-n",
                help="ssh and shell: send no input; the command reads end of file at once "
                "(like ssh -n).",
            ),
        ] = False,
        controlplane: ControlplaneOpt = None,
        output: OutputOpt = Format.table,
    ) -> None:
        """Run one request through the gateway; it is recorded before it runs. For ssh and shell
        connections stdin is streamed to the command (until it ends, or the command does) and
        the command's exit status is gatehouse's.

        Example: gatehouse exec pg-prod -c 'select 41+1 as answer' -o json

        Example: tar c src | gatehouse exec web-1 -- tar x -C /srv/app
        """
        status = execute(connection, args, command, no_stdin, controlplane, output)
        if status:
            raise typer.Exit(status)

    return exec_


_OPTIONS = {  # a spelling click accepts → (parameter, whether it takes a value)
    "-c": ("command", True),
    "--command": ("command", True),
    "-o": ("output", True),
    "--output": ("output", True),
    "--controlplane": ("controlplane", True),
    "-n": ("no_stdin", False),
    "--no-stdin": ("no_stdin", False),
}


def parse(argv: Sequence[str]) -> dict[str, Any] | None:
    """`execute`'s arguments from the words after `exec`, as click would parse them; None
    when the words are anything but plainly well-formed (typer then parses, and explains)."""
    if not all(_encodable(word) for word in argv):
        return None  # undecodable bytes from the shell: typer says what it makes of them
    options: dict[str, str | bool] = {}
    positional: list[str] = []
    words = list(argv)
    while words:
        word = words.pop(0)
        if word == "--":
            positional += words
            break
        if len(word) < 2 or not word.startswith("-"):
            positional.append(word)
            continue
        # `--name=value`; a short option's `-c=x` or `-cx` is not recognised (typer decides).
        name, equals, attached = word.partition("=") if word.startswith("--") else (word, "", "")
        if name not in _OPTIONS:
            return None
        key, takes_value = _OPTIONS[name]
        value: str | bool
        if not takes_value:
            if equals:
                return None
            value = True
        elif equals:
            value = attached
        elif words and not words[0].startswith("-"):
            value = words.pop(0)
        else:
            return None  # no value, or one that looks like an option
        if key in options:
            return None  # given twice
        options[key] = value
    output = str(options.get("output", "table"))
    if not positional or not output.isascii() or output.lower() not in ("table", "json"):
        return None
    command = options.get("command")
    controlplane = options.get("controlplane")
    return {
        "connection": positional[0],
        "args": positional[1:] or None,
        "command": None if command is None else str(command),
        "no_stdin": bool(options.get("no_stdin", False)),
        "controlplane": None if controlplane is None else str(controlplane),
        "output": Format(output.lower()),
    }


def _encodable(word: str) -> bool:
    try:
        word.encode()
    except UnicodeEncodeError:
        return False
    return True


def execute(
    connection: str,
    args: list[str] | None,
    command: str | None,
    no_stdin: bool,
    controlplane: str | None,
    output: Format,
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
            channel, md, connection, "exec", f"gatehouse-cli/{__version__} exec"
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


def echo(text: str, err: bool = False) -> None:
    """typer.echo(text, err=err), without importing typer for plain ASCII text (all that
    typer would do differently is strip ANSI codes off a non-terminal and re-encode)."""
    if not text.isascii() or "\x1b" in text:
        import typer

        typer.echo(text, err=err)
        return
    stream = sys.stderr if err else sys.stdout
    stream.write(text + "\n")
    stream.flush()


async def _run_command(
    opened: "Opened", args: list[str], command: str | None, no_stdin: bool
) -> int:
    from cli import term

    start = command_start(args, command)
    source = None if no_stdin else term.read_fd(0)
    streams = term.StdStreams()
    async with term.TermSession(opened) as session:
        exit_ = await term.relay(session, start, source, streams)
    return term.exit_status(exit_, streams.said)


def command_start(args: list[str], command: str | None) -> "Start":
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
