"""`gatehouse controlplane serve`: settings from flags, GATEHOUSE_*, a config file.

The control plane's entry point, and the only CLI module that imports it: the command table
(cli.commands) names this module only for the `controlplane` verb, and cli.main tells the
user which extra to install when its dependencies are missing.
"""

from __future__ import annotations

from typing import Any

from cli import config
from cli.errors import USAGE, CliError
from cli.parser import Opt
from controlplane.settings import Settings


def options() -> tuple[Opt, ...]:
    """One option per key of the control plane's settings, and --config."""
    return config.options(Settings)


def serve(**given: Any) -> None:
    """Build the settings (flags > GATEHOUSE_* > --config file > defaults), then serve."""
    from cli.logs import setup_logging
    from cli.rpc import run
    from controlplane.errors import GatehouseError
    from controlplane.server import serve as serve_settings

    settings = config.settings_from(Settings, given)
    try:
        settings.validate()
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    setup_logging(settings.verbose, settings.log_format)
    try:
        run(serve_settings(settings))
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot start the control plane: {exc}") from None
