"""Readable tables by default, one JSON document with `-o json`."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any


class Format(StrEnum):
    table = "table"
    json = "json"


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    if not rows and empty:
        console.print(empty)
        return
    table = Table(*headers, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def emit(
    fmt: Format,
    document: Any,
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    empty: str = "",
) -> None:
    if fmt is Format.json:
        emit_json(document)
    else:
        emit_table(headers, rows, empty)
