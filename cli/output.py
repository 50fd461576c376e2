"""Readable tables by default, one JSON document with `-o json`."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from enum import StrEnum
from typing import Any


class Format(StrEnum):
    table = "table"
    json = "json"


def echo(text: str = "", err: bool = False) -> None:
    """A line on stdout (or stderr), flushed at once. Terminal sequences (from a server's
    message, say) reach only a terminal; a pipe or a file gets the text without them."""
    stream = sys.stderr if err else sys.stdout
    if "\x1b" in text and not _isatty(stream):
        text = re.sub(r"\033\[[;?0-9]*[a-zA-Z]", "", text)  # what click's echo stripped
    stream.write(text + "\n")
    stream.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def emit_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")


def emit_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str = "") -> None:
    plain = None if not rows and empty else plain_table(headers, rows)
    if plain is not None:
        sys.stdout.write(plain)
        sys.stdout.flush()
        return
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


_EMOJI_CODE = re.compile(r":\S*?:")
"""What rich may read as an emoji code (`:smile:`): such a cell is left to rich."""


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str | None:
    """`emit_table`'s output without importing rich, when that is certain to be rich's own:
    not on a terminal (no styles), every cell printable ASCII that rich reads as plain text
    (no markup, no emoji code), and the table no wider than rich's console (no wrapping).
    None otherwise."""
    if not headers or _rich_terminal():
        return None
    cells = [list(headers)]
    cells += [["" if v is None else str(v) for v in row] for row in rows]
    if any(len(row) != len(headers) or not all(map(_plain, row)) for row in cells):
        return None
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    if sum(widths) + 2 * (len(widths) - 1) > _rich_width():
        return None
    lines = (
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in cells
    )
    return "\n".join(lines) + "\n"


def _plain(cell: str) -> bool:
    if not cell.isascii() or not cell.isprintable() or "[" in cell:
        return False
    if ":" not in cell or not _EMOJI_CODE.search(cell):
        return True
    from rich.emoji import Emoji

    return Emoji.replace(cell) == cell


def _rich_terminal() -> bool:
    """Whether rich.console.Console() would write styles (or might: then rich renders)."""
    if "TTY_COMPATIBLE" in os.environ or "FORCE_COLOR" in os.environ:
        return True
    try:
        return sys.stdout.isatty()
    except ValueError:
        return True


def _rich_width() -> int:
    """rich.console.Console().width away from a terminal: $COLUMNS, else the first standard
    stream that is a terminal, else 80."""
    columns = os.environ.get("COLUMNS")
    if columns is not None and columns.isdigit():
        return int(columns)
    for fd in (0, 1, 2):
        try:
            return os.get_terminal_size(fd).columns or 80
        except (AttributeError, ValueError, OSError):
            continue
    return 80
