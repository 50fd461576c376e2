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

    # Piped output is for scripts and `grep`: never cut a value to fit a guessed width.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 4096)
    if not rows and empty:
        console.print(empty)
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for i, header in enumerate(headers):
        # An id is copied into the next command (`sessions replay ID`): it must stay whole.
        whole = max((len(str(row[i])) for row in rows), default=0) if header == "ID" else None
        table.add_column(header, no_wrap=whole is not None, min_width=whole)
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
