"""The `gatehouse` command. Verbs import what they need when they run, so that `exec` — what
an AI agent calls again and again — does not pay for the control plane's imports."""

from __future__ import annotations

import os
import sys

# gRPC's fork handlers run in a child forked while gRPC threads work, and crash it now and
# then (SIGSEGV before exec). The agent forks for `shell` commands (uvloop's spawn is a real
# fork); nothing here needs gRPC in a child. Set before anything imports grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import typer

from cli.errors import CliError

app = typer.Typer(
    name="gatehouse",
    help="Gatehouse: an access gateway that records every request before it reaches the target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from cli.admin import admin_app
    from cli.audit import audit_app
    from cli.connect import connect
    from cli.connections import connections_app
    from cli.execute import exec_
    from cli.login import login, logout, whoami
    from cli.replay import sessions_replay
    from cli.reviews import reviews_app
    from cli.serve import agent_app, controlplane_app
    from cli.sessions import sessions_app
    from cli.ssh import ssh
    from cli.tokens import tokens_app

    app.command("exec")(exec_)
    app.command("connect")(connect)
    app.command("ssh")(ssh)
    app.command("login")(login)
    app.command("logout")(logout)
    app.command("whoami")(whoami)
    app.add_typer(controlplane_app, name="controlplane")
    app.add_typer(agent_app, name="agent")
    app.add_typer(admin_app, name="admin")
    app.add_typer(sessions_app, name="sessions")
    sessions_app.command("replay")(sessions_replay)
    app.add_typer(connections_app, name="connections")
    app.add_typer(tokens_app, name="tokens")
    app.add_typer(reviews_app, name="reviews")
    app.add_typer(audit_app, name="audit")


def run() -> None:
    """Entry point: run the app, turning CliError into its message and exit status."""
    _register()
    try:
        app()
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
