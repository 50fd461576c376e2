"""`gatehouse agent run`: settings from flags, GATEHOUSE_*, a config file; then the agent."""

from __future__ import annotations

import os

import typer

from agent.settings import AgentSettings, AgentSettingsError
from cli import config
from cli.errors import USAGE, CliError
from cli.options import run, setup_logging

agent_app = typer.Typer(help="Run an agent next to your targets.", no_args_is_help=True)


def _run(settings: AgentSettings) -> None:
    from agent.runner import AgentFatal, run_agent
    from cli.rpc import is_loopback

    try:
        settings.validate()
    except AgentSettingsError as exc:
        raise CliError(str(exc), USAGE) from None
    for address in settings.addresses:
        if settings.insecure and not is_loopback(address):
            raise CliError(
                f"--insecure is refused for {address}: plaintext is allowed only to loopback",
                USAGE,
            )
    setup_logging(settings.verbose, settings.log_format)
    try:
        run(run_agent(settings))
    except AgentFatal as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot start the agent: {exc}") from None


agent_app.command("run")(
    config.command(
        AgentSettings,
        _run,
        env=os.environ,
        doc="""Run an agent: dial out to the control plane and open targets on its orders.

    Every option is also a GATEHOUSE_* variable and a key of the --config file.

    Flags win over variables, variables over the file.

    Example: gatehouse agent run --controlplane gw.example.com:8443 --token ghj_… --name vpc-1
    """,
    )
)
