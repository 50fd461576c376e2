"""The `gatehouse` command. Verbs import what they need when they run, so that `exec` — what
an AI agent calls again and again — does not pay for the control plane's imports.

Each verb's module is imported, and turned into a click command, only when that verb is
looked up: `gatehouse exec` loads cli.execute and nothing else; `gatehouse --help` (and a
mistyped verb's suggestions) load them all, as before."""

from __future__ import annotations

import os
import sys

# gRPC's fork handlers run in a child forked while gRPC threads work, and crash it now and
# then (SIGSEGV before exec). The agent forks for `shell` commands (uvloop's spawn is a real
# fork); nothing here needs gRPC in a child. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

from collections.abc import Iterator, MutableMapping
from typing import Any

import typer
import typer.main
from typer import _click
from typer.core import TyperGroup
from typer.models import CommandInfo, TyperInfo

from cli.errors import CliError


class _Verbs(MutableMapping[str, _click.Command]):
    """The root group's commands: every verb's name, its command built on first lookup."""

    def __init__(self, built: MutableMapping[str, _click.Command]) -> None:
        self._built = dict(built)

    def __getitem__(self, name: str) -> _click.Command:
        if name not in self._built:
            if name not in VERBS:
                raise KeyError(name)
            self._built[name] = _build(name)
        return self._built[name]

    def __setitem__(self, name: str, command: _click.Command) -> None:
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


class _LazyGroup(TyperGroup):
    """The root group, over `_Verbs`: listing names builds nothing."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = _Verbs(self.commands)

    def list_commands(self, ctx: _click.Context) -> list[str]:
        return list(self.commands)


app = typer.Typer(
    name="gatehouse",
    help="Gatehouse: an access gateway that records every request before it reaches the target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_LazyGroup,
)


def _attach(name: str) -> CommandInfo | TyperInfo:
    """Import verb `name` and register it on `app`; its registration, once."""
    for command in app.registered_commands:
        if command.name == name:
            return command
    for group in app.registered_groups:
        if group.name == name:
            return group
    if name == "exec":
        from cli.execute import exec_

        app.command("exec")(exec_)
    elif name == "connect":
        from cli.connect import connect

        app.command("connect")(connect)
    elif name == "ssh":
        from cli.ssh import ssh

        app.command("ssh")(ssh)
    elif name in ("login", "logout", "whoami"):
        from cli import login

        app.command(name)(getattr(login, name))
    elif name == "controlplane":
        from cli.serve import controlplane_app

        app.add_typer(controlplane_app, name="controlplane")
    elif name == "agent":
        from cli.serve import agent_app

        app.add_typer(agent_app, name="agent")
    elif name == "admin":
        from cli.admin import admin_app

        app.add_typer(admin_app, name="admin")
    elif name == "sessions":
        from cli.replay import sessions_replay
        from cli.sessions import sessions_app

        app.add_typer(sessions_app, name="sessions")
        if not any(c.name == "replay" for c in sessions_app.registered_commands):
            sessions_app.command("replay")(sessions_replay)
    elif name == "connections":
        from cli.connections import connections_app

        app.add_typer(connections_app, name="connections")
    elif name == "tokens":
        from cli.tokens import tokens_app

        app.add_typer(tokens_app, name="tokens")
    elif name == "reviews":
        from cli.reviews import reviews_app

        app.add_typer(reviews_app, name="reviews")
    elif name == "audit":
        from cli.audit import audit_app

        app.add_typer(audit_app, name="audit")
    else:
        raise KeyError(name)
    return _attach(name)


VERBS = (
    # Commands first, then groups: the order `gatehouse --help` lists them in.
    *("exec", "connect", "ssh", "login", "logout", "whoami"),
    *("controlplane", "agent", "admin", "sessions", "connections", "tokens", "reviews", "audit"),
)


def _build(name: str) -> _click.Command:
    """Verb `name` as a click command, built as typer builds the root group's commands."""
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
    try:
        typer.main.get_group(app)()
    except CliError as exc:
        message = exc.message
        if not message.startswith(("ERROR", "FATAL")):
            message = f"error: {message}"
        typer.echo(message, err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run()
