"""What a SQL text does to the session's names: PREPARE, EXECUTE, DEALLOCATE, cursors, DISCARD.

The prepared-statement namespace is shared by the protocol's Parse and SQL ``PREPARE``; the
portal namespace by the protocol's Bind and SQL ``DECLARE … CURSOR``. The inspector must know
which names a text creates, drops or uses, statement by statement (a simple Query may hold
several), to record what a name stands for and to refuse a name it does not know
(decision 0010). The text is read with pglast, the server's own grammar; most texts hold none
of the keywords and are never parsed here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

# Texts without any of these words cannot touch a name (keywords are ASCII, and a comment or a
# string only makes a false positive, never a miss).
_MAY_NAME: Final = re.compile(r"(?i)prepare|execute|deallocate|declare|fetch|move|close|discard")
CURSOR_OPT_HOLD: Final = 0x0020  # PostgreSQL's parsenodes.h: DECLARE … WITH HOLD


@dataclass(frozen=True, slots=True)
class Effect:
    """What one statement does to the names once the server completed it.

    ``op``: "prepare" / "deallocate" (statements), "declare" / "close" (portals), "discard"
    (DISCARD ALL: every statement and portal). ``name`` None means ALL.
    """

    op: str
    name: str | None = None
    # prepare/declare: the text the name stands for, the whole PREPARE or DECLARE statement, as
    # PostgreSQL itself reports it (pg_prepared_statements, pg_cursors, its statement log)
    text: str = ""
    holdable: bool = False  # declare: WITH HOLD survives its transaction


@dataclass(frozen=True, slots=True)
class SqlStatement:
    """One statement of a text: what it creates or drops, and which names it runs."""

    text: str
    effect: Effect | None = None
    executes: tuple[str, ...] = ()  # prepared statements it runs (EXECUTE, also nested)
    fetches: str | None = None  # the cursor a FETCH or MOVE reads


def statements(sql: str) -> list[SqlStatement] | None:
    """Every statement of ``sql`` when one may touch a name, else []; [] too when it does not
    parse (the server refuses it as well; the guard denies unparseable text on its own).
    None when its tree is nested too deeply to read: which names it uses is not known."""
    if _MAY_NAME.search(sql) is None:
        return []
    try:
        tree = json.loads(parse_sql_json(sql))
        raw = sql.encode("utf-8")
        found = []
        for entry in tree.get("stmts", []):
            start = entry.get("stmt_location", 0)
            length = entry.get("stmt_len", 0)
            text = raw[start : start + length if length else len(raw)].decode("utf-8").strip()
            found.append(_statement(text, entry.get("stmt", {})))
    except RecursionError:
        return None
    except (ParseError, ValueError):
        return []
    return found


def _statement(text: str, node: dict[str, Any]) -> SqlStatement:
    (kind, body), *_ = node.items() if node else (("", {}),)
    executes = tuple(_executes(node))
    if kind == "PrepareStmt":
        effect = Effect("prepare", body.get("name", ""), text)
    elif kind == "DeallocateStmt":
        effect = Effect("deallocate", None if body.get("isall") else body.get("name"))
    elif kind == "DeclareCursorStmt":
        holdable = bool(body.get("options", 0) & CURSOR_OPT_HOLD)
        effect = Effect("declare", body.get("portalname", ""), text, holdable)
    elif kind == "ClosePortalStmt":
        effect = Effect("close", body.get("portalname"))
    elif kind == "DiscardStmt" and body.get("target") == "DISCARD_ALL":
        effect = Effect("discard")
    else:
        effect = None
    fetches = body.get("portalname", "") if kind == "FetchStmt" else None
    return SqlStatement(text, effect, executes, fetches)


def _executes(node: Any) -> Iterator[str]:
    """Names of every EXECUTE in a parse tree (EXPLAIN ANALYZE EXECUTE, CREATE TABLE AS …)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "ExecuteStmt" and isinstance(value, dict):
                yield str(value.get("name", ""))
            yield from _executes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _executes(item)
