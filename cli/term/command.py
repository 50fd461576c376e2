"""`gatehouse exec` on an ssh or shell connection: one command, stdin streamed, stdout and
stderr kept apart, and the command's exit status as ours."""

from __future__ import annotations

from cli.protocols import ExecRequest
from cli.session import Opened
from cli.term import stream as term
from wire.term.codec import Start


async def execute(opened: Opened, request: ExecRequest) -> int:
    start = command_start(request.args, request.command)
    source = None if request.no_stdin else term.read_fd(0)
    streams = term.StdStreams()
    async with term.TermSession(opened) as session:
        exit_ = await term.relay(session, start, source, streams)
    return term.exit_status(exit_, streams.said)


def command_start(args: list[str], command: str | None) -> Start:
    """What an ssh or shell connection runs: the words after `--` as an argv (ssh joins them
    with spaces, as `ssh host cmd args` does; shell runs them without a shell), or the `-c`
    text verbatim, as a remote shell reads it."""
    return Start(argv=tuple(args)) if args else Start(command=command)
