"""Options and helpers every verb shares: where the control plane is, output format, running
a coroutine, and calling the control plane with errors explained (`run` and `call` live in
cli.rpc, which `exec` uses without typer; they are re-exported here for the verbs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cli.output import Format
from cli.rpc import call, run

__all__ = [
    "ControlplaneOpt",
    "DataDirOpt",
    "OutputOpt",
    "call",
    "parse_duration",
    "resolve_data_dir",
    "run",
    "setup_logging",
]

ControlplaneOpt = Annotated[
    str | None,
    typer.Option(
        "--controlplane",
        envvar="GATEHOUSE_CONTROLPLANE",
        help="host:port of the control plane's gRPC listener; picks the profile that names it.",
        show_default="the profile's (gatehouse login --controlplane), else 127.0.0.1:8443",
    ),
]
OutputOpt = Annotated[
    Format, typer.Option("--output", "-o", help="table (default) or json.", case_sensitive=False)
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="GATEHOUSE_DATA_DIR",
        help="State directory.",
        show_default="~/.local/share/gatehouse",
    ),
]


def resolve_data_dir(value: Path | None) -> Path:
    return (value or Path.home() / ".local" / "share" / "gatehouse").expanduser()


def setup_logging(verbose: bool, log_format: str = "text") -> None:
    from cli.logs import setup_logging as setup

    setup(verbose, log_format)


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `8h`, `90d` → seconds; the forms the policy file uses for TTLs."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        from cli.errors import USAGE, CliError

        raise CliError(f"{text!r} is not a duration: write e.g. 30m, 8h or 90d", USAGE)
    return int(number) * units[unit]
