"""`gatehouse exec NAME -c SQL | -- CMD [ARGS...]`: one request through the gateway, output on
stdout.

The session is opened first and its `opened` frame names the connection's type, whose module
(cli/protocols.py) runs the request: SQL for a database (cli/pg/query.py), a command for
`ssh` and `shell` (cli/term/command.py). One round trip, no lookup before it: AI agents run
this again and again, so this module imports only what every `exec` needs and the one
protocol it speaks (cli.commands declares its options; cli.main runs it).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from cli.errors import USAGE, CliError
from cli.output import Format


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
    from cli import __version__, protocols, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    request = protocols.ExecRequest(connection, args, command, no_stdin, output)

    async def work(channel: Any) -> int:
        from cli.session import open_session

        opened = await open_session(
            channel, md, connection, "exec", f"gatehouse-cli/{__version__} exec", no_wait=no_wait
        )
        return await protocols.execute_for(opened.connection_type)(opened, request)

    try:
        return rpc.call(address, work)
    except BrokenPipeError:
        # Whoever read our stdout stopped (`| head`): end quietly, as a shell command does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
