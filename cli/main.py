"""The `gatehouse` command: one parser for every verb (cli.parser over the table in
cli.commands), and the one place where a failure becomes a message and an exit status.

A verb's module is imported only when that verb runs: `gatehouse exec` — what an AI agent
calls again and again — loads cli.execute and what it needs, never another verb's imports
(docs/decisions/0022)."""

from __future__ import annotations

import os
import sys

# gRPC's fork handlers run in a child forked while gRPC threads work, and crash it now and
# then (SIGSEGV before exec). The agent forks for `shell` commands (uvloop's spawn is a real
# fork); nothing here needs gRPC in a child. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import errno
from collections.abc import Sequence
from typing import IO, Any, TextIO, cast

from cli.errors import USAGE, CliError
from cli.output import echo

# Modules only the control plane's extra installs (`pip install 'gatehouse[controlplane]'`).
CONTROLPLANE_EXTRA = ("sqlmodel", "sqlalchemy", "alembic", "pglast", "psycopg", "joserfc")


def installed_version() -> str:
    """The installed distribution's version (its metadata); the source's own in a checkout
    that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gatehouse")
    except PackageNotFoundError:
        from gatehouse import __version__

        return __version__


def main(argv: Sequence[str]) -> int:
    """Run one command line; its exit status. Everything it prints about a failure is
    printed here, once."""
    return _main(argv)[0]


def run() -> None:
    """Entry point (`gatehouse`, `python -m cli.main`)."""
    status, at_once = _main(sys.argv[1:])
    if at_once:
        _exit_now(status)
    sys.exit(status)


def _main(argv: Sequence[str]) -> tuple[int, bool]:
    """(exit status, whether the command ends the process at once: Command.exit_at_once)."""
    from cli import parser
    from cli.commands import ROOT

    at_once = False
    try:
        invocation = parser.resolve(ROOT, argv, version=installed_version)
        at_once = invocation.command.exit_at_once
        status = parser.load(invocation.command.handler)(**invocation.arguments)
    except parser.Exit as done:
        return done.status, False
    except parser.UsageError as exc:
        sys.stderr.write(exc.usage)
        _say(exc)
        return exc.exit_code, at_once
    except CliError as exc:
        _say(exc)
        return exc.exit_code, at_once
    except KeyboardInterrupt:
        return 130, at_once
    except EOFError:  # a prompt's input ended
        echo("", err=True)
        echo("Aborted.", err=True)
        return 1, at_once
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in CONTROLPLANE_EXTRA:
            raise
        echo(
            f"error: this needs the control plane's dependencies (module {exc.name} is not "
            "installed): pip install 'gatehouse[controlplane]'",
            err=True,
        )
        return USAGE, at_once
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # Whoever read our output went away (`| head`): nothing more to say, and nothing at
        # exit either, where Python would print "Exception ignored" and end with 120.
        sys.stdout = cast(TextIO, _QuietFlush(sys.stdout))
        sys.stderr = cast(TextIO, _QuietFlush(sys.stderr))
        return 1, at_once
    return int(status or 0), at_once


def _say(exc: CliError) -> None:
    message = exc.message
    if not message.startswith(("ERROR", "FATAL")):  # a database's own error reads as psql's
        message = f"error: {message}"
    echo(message, err=True)


class _QuietFlush:
    """A stream whose reader went away: flushing it (at exit) says nothing more."""

    def __init__(self, wrapped: IO[str]) -> None:
        self._wrapped = wrapped

    def flush(self) -> None:
        try:
            self._wrapped.flush()
        except OSError as exc:
            if exc.errno != errno.EPIPE:
                raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _exit_now(code: int) -> None:
    """End the process at once with `code`, once stdout and stderr are flushed.

    Python's own shutdown takes 30-50 ms here (more on a loaded machine), spent tearing down
    grpc, protobuf and asyncio module by module; `exec` has nothing left to clean up: the
    channel and the event loop are closed, the executor's threads joined, and it registers
    no atexit handlers. A flush that fails returns, so that Python ends the process as it
    always would (a failed flush: 120)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code)


if __name__ == "__main__":
    run()
