"""`gatehouse controlplane serve`: settings from flags, GATEHOUSE_*, a config file."""

from __future__ import annotations

import os

import typer

from cli import config
from cli.errors import USAGE, CliError
from cli.options import run, setup_logging
from controlplane.settings import Settings

controlplane_app = typer.Typer(help="Run the control plane.", no_args_is_help=True)


def _serve(settings: Settings) -> None:
    from controlplane.errors import GatehouseError
    from controlplane.server import serve

    try:
        settings.validate()
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    setup_logging(settings.verbose, settings.log_format)
    try:
        run(serve(settings))
    except GatehouseError as exc:
        raise CliError(str(exc), USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot start the control plane: {exc}") from None


controlplane_app.command("serve")(
    config.command(
        Settings,
        _serve,
        env=os.environ,
        doc="""Run the control plane: apply migrations, listen, relay and record.

    Every option is also a GATEHOUSE_* variable and a key of the --config file.

    Flags win over variables, variables over the file.

    Production (TLS on both listeners, CA and admin token made in DIR on first start):
      gatehouse controlplane serve --data-dir /var/lib/gatehouse --grpc-listen 0.0.0.0:8443
      --http-listen 0.0.0.0:8080 --public-addr gw.example.com

    Example: gatehouse controlplane serve --dev --data-dir ./data
    """,
    )
)
