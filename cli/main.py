"""The `gatehouse` command. Verbs import what they need when they run, so that `exec` — what
an AI agent calls again and again — does not pay for the control plane's imports.

Each verb's module is imported, and turned into a click command, only when that verb is
looked up: `gatehouse exec` loads cli.execute and nothing else; `gatehouse --help` (and a
mistyped verb's suggestions) load them all, as before.

`exec` goes further: a plain `exec` command line runs without typer at all (cli.execute
explains), since typer, click and pydantic cost more than the rest of the command."""

from __future__ import annotations

import importlib
import os
import sys

# gRPC's fork handlers run in a child forked while gRPC threads work, and crash it now and
# then (SIGSEGV before exec). The agent forks for `shell` commands (uvloop's spawn is a real
# fork); nothing here needs gRPC in a child. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import errno
from collections.abc import Iterator, MutableMapping
from typing import IO, TYPE_CHECKING, Any, Generic, TextIO, TypeVar, cast

from cli.errors import USAGE, CliError

if TYPE_CHECKING:
    import typer
    from typer.models import CommandInfo, TyperInfo

Command = TypeVar("Command")
# Modules only the control plane's extra installs (`pip install 'gatehouse[controlplane]'`).
CONTROLPLANE_EXTRA = ("sqlmodel", "sqlalchemy", "alembic", "pglast", "psycopg", "joserfc")

VERBS = (
    # Commands first, then groups: the order `gatehouse --help` lists them in.
    *("exec", "connect", "ssh", "login", "logout", "whoami"),
    *("controlplane", "agent", "admin", "sessions", "connections", "tokens", "reviews", "audit"),
)


class _Verbs(MutableMapping[str, Command], Generic[Command]):
    """The root group's commands: every verb's name, its command built on first lookup.

    Generic in the command type, which typer keeps in its private copy of click: the root
    group's own `commands` mapping gives it, so nothing here names it."""

    def __init__(self, built: MutableMapping[str, Command]) -> None:
        self._built = dict(built)

    def __getitem__(self, name: str) -> Command:
        if name not in self._built:
            if name not in VERBS:
                raise KeyError(name)
            self._built[name] = cast("Command", _build(name))
        return self._built[name]

    def __setitem__(self, name: str, command: Command) -> None:
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from VERBS
        yield from (name for name in self._built if name not in VERBS)

    def __len__(self) -> int:
        return len(VERBS) + sum(1 for name in self._built if name not in VERBS)

    def __contains__(self, name: object) -> bool:
        return name in VERBS or name in self._built


_app: typer.Typer | None = None


def __getattr__(name: str) -> Any:
    """`cli.main.app`, the typer app, made on first use: `exec` runs without it."""
    if name == "app":
        return _typer_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _typer_app() -> typer.Typer:
    global _app  # noqa: PLW0603 - made once, on first use
    if _app is not None:
        return _app
    import typer
    from typer.core import TyperGroup

    class LazyGroup(TyperGroup):
        """The root group, over `_Verbs`: listing names builds nothing."""

        def __init__(self, **attrs: Any) -> None:
            super().__init__(**attrs)
            self.commands = _Verbs(self.commands)

        def list_commands(self, ctx: object) -> list[str]:
            return list(self.commands)

    app = typer.Typer(
        name="gatehouse",
        help="Gatehouse: an access gateway that records every request before it reaches the "
        "target.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        cls=LazyGroup,
    )

    def show_version(value: bool) -> None:
        if value:
            typer.echo(f"gatehouse {installed_version()}")
            raise typer.Exit()

    # The option is a default value, not an Annotated annotation: annotations are strings
    # here (`from __future__ import annotations`) and typer is not a module-level name.
    @app.callback(no_args_is_help=True)
    def root(
        version: bool = typer.Option(
            False,
            "--version",
            callback=show_version,
            is_eager=True,
            help="Print the installed version and exit.",
        ),
    ) -> None:
        """Gatehouse: an access gateway that records every request before it reaches the
        target."""

    _app = app
    return _app


def installed_version() -> str:
    """The installed distribution's version (its metadata); the source's own in a checkout
    that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gatehouse")
    except PackageNotFoundError:
        from gatehouse import __version__

        return __version__


# Verbs that are groups of commands: where each one's typer app lives.
_GROUPS: dict[str, tuple[str, str]] = {
    "controlplane": ("cli.serve", "controlplane_app"),
    "agent": ("cli.agentrun", "agent_app"),
    "admin": ("cli.admin", "admin_app"),
    "sessions": ("cli.sessions", "sessions_app"),
    "connections": ("cli.connections", "connections_app"),
    "tokens": ("cli.tokens", "tokens_app"),
    "reviews": ("cli.reviews", "reviews_app"),
    "audit": ("cli.audit", "audit_app"),
}


def _attach(name: str) -> CommandInfo | TyperInfo:
    """Import verb `name` and register it on the app; its registration, once."""
    app = _typer_app()
    for registered in app.registered_commands:
        if registered.name == name:
            return registered
    for group in app.registered_groups:
        if group.name == name:
            return group
    if name == "exec":
        from cli import execute

        app.command("exec")(execute.command())
    elif name == "connect":
        from cli.connect import connect

        app.command("connect")(connect)
    elif name == "ssh":
        from cli.ssh import ssh

        app.command("ssh")(ssh)
    elif name in ("login", "logout", "whoami"):
        from cli import login

        app.command(name)(getattr(login, name))
    elif name in _GROUPS:
        module, attribute = _GROUPS[name]
        app.add_typer(getattr(importlib.import_module(module), attribute), name=name)
        if name == "sessions":
            from cli.replay import sessions_replay
            from cli.sessions import sessions_app

            if not any(c.name == "replay" for c in sessions_app.registered_commands):
                sessions_app.command("replay")(sessions_replay)
    else:
        raise KeyError(name)
    return _attach(name)


def _build(name: str) -> object:
    """Verb `name` as a click command, built as typer builds the root group's commands."""
    import typer.main
    from typer.models import CommandInfo

    app = _typer_app()
    info = _attach(name)
    if isinstance(info, CommandInfo):
        return typer.main.get_command_from_info(
            info,
            pretty_exceptions_short=app.pretty_exceptions_short,
            rich_markup_mode=app.rich_markup_mode,
        )
    return typer.main.get_group_from_info(
        info,
        pretty_exceptions_short=app.pretty_exceptions_short,
        rich_markup_mode=app.rich_markup_mode,
        suggest_commands=app.suggest_commands,
    )


def _register() -> None:
    """Register every verb on `app` now (for callers that invoke `app` itself, e.g. tests)."""
    for name in VERBS:
        _attach(name)


def run() -> None:
    """Entry point: run the app, turning CliError into its message and exit status."""
    exec_arguments = _plain_exec(sys.argv[1:])
    try:
        try:
            if exec_arguments is None:
                import typer.main

                typer.main.get_group(_typer_app())()
            else:
                _exec(exec_arguments)
        except CliError as exc:
            message = exc.message
            if not message.startswith(("ERROR", "FATAL")):
                message = f"error: {message}"
            from cli.execute import echo

            echo(message, err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            sys.exit(130)
        except ModuleNotFoundError as exc:
            if exc.name is None or exc.name.partition(".")[0] not in CONTROLPLANE_EXTRA:
                raise
            from cli.execute import echo

            echo(
                f"error: this needs the control plane's dependencies (module {exc.name} is "
                "not installed): pip install 'gatehouse[controlplane]'",
                err=True,
            )
            sys.exit(USAGE)
    except SystemExit as done:
        if exec_arguments is not None:
            _exit_now(done)
        raise


def _plain_exec(argv: list[str]) -> dict[str, Any] | None:
    """The arguments of a plain `exec` command line, which runs without typer; None when
    typer must parse it (another verb, help, usage errors, anything unusual, completion)."""
    if argv[:1] != ["exec"] or any(
        key.startswith("_") and key.endswith("_COMPLETE") for key in os.environ
    ):
        return None
    from cli import execute

    return execute.parse(argv[1:])


def _exec(arguments: dict[str, Any]) -> None:
    """Run `exec` and end as typer's main would have: its exit status, 130 for Ctrl-C, 1
    when stdout's reader went away."""
    from cli import execute

    try:
        status = execute.execute(**arguments)
    except KeyboardInterrupt:
        sys.exit(130)
    except EOFError:
        from cli.execute import echo

        echo("", err=True)
        echo("Aborted.", err=True)
        sys.exit(1)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        sys.stdout = cast(TextIO, _QuietFlush(sys.stdout))
        sys.stderr = cast(TextIO, _QuietFlush(sys.stderr))
        sys.exit(1)
    sys.exit(status)


class _QuietFlush:
    """A stream whose reader went away: flushing it (at exit) says nothing more, as click's
    own wrapper does for typer's verbs, instead of Python's "Exception ignored" and status 120."""

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


def _exit_now(done: SystemExit) -> None:
    """End the process at once with `done`'s status, once stdout and stderr are flushed.

    Python's own shutdown takes 30-50 ms here (more on a loaded machine), spent tearing down
    grpc, protobuf and asyncio module by module; exec has nothing left to clean up: the
    channel and the event loop are closed, the executor's threads joined, and it registers
    no atexit handlers. Anything unusual (a status that is not a number, a flush that fails)
    returns, so that Python ends the process as it always would (a failed flush: 120)."""
    code = done.code
    if code is not None and not isinstance(code, int):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)


if __name__ == "__main__":
    run()
