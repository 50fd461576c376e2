"""`gatehouse agent run`: settings from flags, GATEHOUSE_*, a config file; then the agent."""

from __future__ import annotations

from typing import Any

from agent.settings import AgentSettings, AgentSettingsError
from cli import config
from cli.errors import USAGE, CliError
from cli.parser import Opt


def options() -> tuple[Opt, ...]:
    """One option per key of the agent's settings, and --config."""
    return config.options(AgentSettings)


def agent_run(**given: Any) -> None:
    """Build the settings (flags > GATEHOUSE_* > --config file > defaults), then run; plaintext
    only to a loopback control plane."""
    from agent.runner import AgentFatal, run_agent
    from cli.logs import setup_logging
    from cli.rpc import run
    from wire.addresses import is_loopback

    settings = config.settings_from(AgentSettings, given)
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
