"""Options and helpers every verb shares: where the control plane is, output format, running
a coroutine, and calling the control plane with errors explained."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli.output import Format

T = TypeVar("T")

ControlplaneOpt = Annotated[
    str | None,
    typer.Option(
        "--controlplane",
        envvar="GATEHOUSE_CONTROLPLANE",
        help="host:port of the control plane's gRPC listener.",
        show_default="127.0.0.1:8443",
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


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One event loop for the whole command (uvloop where available)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        return asyncio.run(coro)
    return uvloop.run(coro)


def call(address: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open a channel to the control plane, run `work` on it, explain gRPC failures."""
    from cli import rpc

    async def main() -> T:
        async with rpc.channel(address) as channel:
            with rpc.explained(address):
                return await work(channel)

    return run(main())


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def parse_duration(text: str) -> int:
    """`90s`, `30m`, `8h`, `90d` → seconds; the forms the policy file uses for TTLs."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:]
    if unit not in units or not number.isdigit() or int(number) <= 0:
        from cli.errors import USAGE, CliError

        raise CliError(f"{text!r} is not a duration: write e.g. 30m, 8h or 90d", USAGE)
    return int(number) * units[unit]
