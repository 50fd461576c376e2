"""What a SQL text does to the session's names: PREPARE, EXECUTE, DEALLOCATE, cursors, DISCARD,
and whether running it may run code the gateway cannot see.

The prepared-statement namespace is shared by the protocol's Parse and SQL ``PREPARE``; the
portal namespace by the protocol's Bind and SQL ``DECLARE … CURSOR``. The inspector must know
which names a text creates, drops or uses, statement by statement (a simple Query may hold
several), to record what a name stands for and to refuse a name it does not know
(decision 0010). The text is read with pglast, the server's own grammar; most texts hold none
of the keywords and are never parsed here.

User-defined code (a function called anywhere in a statement, a trigger, a DO block, a
procedure) can close a cursor and open another under the same name. Only a few utility
statements and a SELECT of literals provably run none; every other statement is taken to run
some.

The reading must not depend on ``standard_conforming_strings``: PostgreSQL reports a change of
it by a configuration reload only after the next statement ran. A text whose names differ when
the setting is off is unreadable; the guard reads both ways for the same reason.
"""

from __future__ import annotations

import bisect
import functools
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

from pglast.parser import ParseError, parse_sql_json

from controlplane.policy.guardrails import TooAmbiguous, nonstandard_reading

# Texts without any of these words cannot touch a name (keywords are ASCII, and a comment or a
# string only makes a false positive, never a miss).
_MAY_NAME: Final = re.compile(r"(?i)prepare|execute|deallocate|declare|fetch|move|close|discard")
# Statements that provably run no user-defined code start with one of these words; a text that
# starts otherwise (or with a comment) is taken to run some without being parsed.
_MAY_BE_CODE_FREE: Final = re.compile(
    r"(?i)\s*(?:begin|start|savepoint|release|rollback|abort|set|reset|show)\b"
)
# A SELECT of literals only (``select 1``, drivers' liveness checks) is parsed to see whether it
# runs code; one with a parenthesis (a call, a subquery) or longer than this never is.
_MAY_BE_LITERALS: Final = re.compile(r"(?is)\s*select\s[^()]{0,200}")
CURSOR_OPT_HOLD: Final = 0x0020  # PostgreSQL's parsenodes.h: DECLARE … WITH HOLD

# Statements that evaluate no expression, fire no trigger and plan nothing. COMMIT is not one:
# it fires deferred triggers and runs the queries of holdable cursors to keep their rows.
_CODE_FREE: Final = frozenset(
    {"VariableSetStmt", "VariableShowStmt", "ClosePortalStmt", "DeallocateStmt", "PrepareStmt"}
)
_CODE_FREE_TRANSACTIONS: Final = frozenset(
    {
        "TRANS_STMT_BEGIN",
        "TRANS_STMT_START",
        "TRANS_STMT_SAVEPOINT",
        "TRANS_STMT_RELEASE",
        "TRANS_STMT_ROLLBACK",
        "TRANS_STMT_ROLLBACK_TO",
    }
)
# What a protocol Bind plans (and so may run functions for): queries, not utility statements.
_PLANNED: Final = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})

TOO_DEEP: Final = (
    "the statement is nested too deeply for the gateway to read which prepared statements or "
    "cursors it uses"
)
TOO_AMBIGUOUS: Final = (
    "the statement has too many string literals that read differently when "
    "standard_conforming_strings is off for the gateway to read which names it uses"
)
# PostgreSQL keeps an identifier's first NAMEDATALEN - 1 = 63 bytes in the *database's*
# encoding (cut at one of its characters, or at any byte in SQL_ASCII), and downcases
# non-ASCII letters in a single-byte one; libpg_query keeps 63 bytes of UTF-8 and downcases
# ASCII only. In a LATIN1 or SQL_ASCII database, `PREPARE <62 a>é` is one name here (cut to
# the 62 a's) and another on the server (é is one byte there): a later `EXECUTE <62 a>` was
# recorded with its text and ran another. ASCII names are read the same everywhere, and a name
# libpg_query cut holds at least 60 bytes (a UTF-8 character has at most 4).
MAX_NAME_BYTES: Final = 59
UNCERTAIN_NAME: Final = (
    "the statement uses a prepared statement or cursor name that is not ASCII or is longer "
    f"than {MAX_NAME_BYTES} bytes, which PostgreSQL may keep as another name than the gateway "
    "reads (it cuts and downcases names in the database's encoding); use a shorter ASCII name"
)
DEPENDS_ON_SETTINGS: Final = (
    "the statement prepares, executes, declares or fetches names differently when "
    "standard_conforming_strings is off, and PostgreSQL reports a change of that setting by a "
    "configuration reload only after the next statement ran, so the gateway cannot know which "
    "reading the server uses; write the backslash in an E'…' literal"
)


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
    # prepare: whether running the query inside (a Bind and Execute of the name) may run code
    runs_code: bool = True


@dataclass(frozen=True, slots=True)
class SqlStatement:
    """One statement of a text: what it creates or drops, which names it runs, and whether
    running it may run user-defined code (which could re-open a cursor under its name)."""

    text: str
    effect: Effect | None = None
    executes: tuple[str, ...] = ()  # prepared statements it runs (EXECUTE, also nested)
    fetches: str | None = None  # the cursor a FETCH or MOVE reads
    runs_code: bool = True
    planned: bool = True  # a protocol Bind of it plans it (a query, not a utility statement)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """Which names a text uses cannot be known: ``reason`` says why, for the client."""

    reason: str
    too_complex: bool = False


# Texts up to this long are remembered (the same few texts come back on every statement of a
# driver's or a benchmark's loop, and parsing one cost a sixth of the relay's time); longer
# ones are read each time, so the cache holds at most `_CACHED` times this many characters.
_CACHED_TEXT: Final = 4096
_CACHED: Final = 1024


def statements(sql: str) -> list[SqlStatement] | Unreadable:
    """Every statement of ``sql``; one opaque statement that runs code when the text touches no
    name, or does not parse (the server refuses it as well; the guard denies unparseable text
    on its own). The reading depends on the text alone, so it is remembered per text."""
    if len(sql) > _CACHED_TEXT:
        return _statements(sql)
    found = _remembered(sql)
    return found if isinstance(found, Unreadable) else list(found)


@functools.lru_cache(maxsize=_CACHED)
def _remembered(sql: str) -> tuple[SqlStatement, ...] | Unreadable:
    found = _statements(sql)
    return found if isinstance(found, Unreadable) else tuple(found)


def _statements(sql: str) -> list[SqlStatement] | Unreadable:
    found = _statements_read(sql)
    if isinstance(found, Unreadable) or all(map(_certain_names, found)):
        return found
    return Unreadable(UNCERTAIN_NAME)


def _certain_names(statement: SqlStatement) -> bool:
    """Whether every name the statement uses is read by the server as it is read here."""
    names = [*statement.executes, statement.fetches or ""]
    if statement.effect is not None:
        names.append(statement.effect.name or "")
    return all(name.isascii() and len(name) <= MAX_NAME_BYTES for name in names)


def _statements_read(sql: str) -> list[SqlStatement] | Unreadable:
    if (
        _MAY_NAME.search(sql) is None
        and _MAY_BE_CODE_FREE.match(sql) is None
        and _MAY_BE_LITERALS.fullmatch(sql) is None
    ):
        return [SqlStatement(sql)]
    try:
        found: list[SqlStatement] | None = _read(sql)
    except RecursionError:
        return Unreadable(TOO_DEEP, too_complex=True)
    except (ParseError, ValueError):
        found = None
    if "\\" in sql:
        return _either_reading(sql, found)
    return [SqlStatement(sql)] if found is None else found


def _either_reading(sql: str, found: list[SqlStatement] | None) -> list[SqlStatement] | Unreadable:
    """``found`` (None: a syntax error) when the names are the same with
    standard_conforming_strings off."""
    try:
        other = nonstandard_reading(sql)
    except TooAmbiguous:
        return Unreadable(TOO_AMBIGUOUS, too_complex=True)
    except ParseError:
        return _agreed(sql, found, None)  # with the setting off the server cannot lex it
    if other is None:  # both readings are the same
        return [SqlStatement(sql)] if found is None else found
    try:
        alternative: list[SqlStatement] | None = _read(other, sql)
    except RecursionError:
        return Unreadable(TOO_DEEP, too_complex=True)
    except (ParseError, ValueError):
        alternative = None
    return _agreed(sql, found, alternative)


def _agreed(
    sql: str, one: list[SqlStatement] | None, two: list[SqlStatement] | None
) -> list[SqlStatement] | Unreadable:
    """What both readings do to the names (None: a syntax error, the server runs nothing)."""
    if two is None:
        return [SqlStatement(sql)] if one is None else one
    if not any(map(touches_names, one or ())) and not any(map(touches_names, two)):
        return [SqlStatement(sql)]
    if one is None or list(map(_names, one)) != list(map(_names, two)):
        return Unreadable(DEPENDS_ON_SETTINGS)
    return [
        replace(
            mine, runs_code=mine.runs_code or other.runs_code, planned=mine.planned or other.planned
        )
        for mine, other in zip(one, two, strict=True)
    ]


def touches_names(statement: SqlStatement) -> bool:
    """Whether running it creates, drops or uses a prepared statement or cursor."""
    return bool(statement.effect or statement.executes or statement.fetches is not None)


def _names(statement: SqlStatement) -> tuple[Any, ...]:
    return (statement.effect, statement.executes, statement.fetches)


def _read(sql: str, source: str | None = None) -> list[SqlStatement]:
    """The statements of ``sql``; their texts are taken from ``source`` when ``sql`` is its
    other reading (``source`` with " E" put before some literals)."""
    tree = json.loads(parse_sql_json(sql))
    raw = sql.encode("utf-8")
    original = raw if source is None else source.encode("utf-8")
    inserted = [] if source is None else _insertions(original, raw)
    found = []
    for entry in tree.get("stmts", []):
        start = entry.get("stmt_location", 0)
        length = entry.get("stmt_len", 0)
        end = start + length if length else len(raw)
        text = original[_back(start, inserted) : _back(end, inserted)].decode("utf-8").strip()
        found.append(_statement(text, entry.get("stmt", {})))
    return found


def _insertions(original: bytes, other: bytes) -> list[int]:
    """Where ``other`` has the two bytes " E" that ``original`` has not (each one right before
    a quote, so the first byte that differs is always the inserted space)."""
    at: list[int] = []
    i = j = 0
    while j < len(other):
        if i < len(original) and original[i] == other[j]:
            i += 1
            j += 1
        else:
            at.append(j)
            j += 2
    return at


def _back(position: int, inserted: list[int]) -> int:
    """A byte offset of the other reading as an offset of the original text."""
    return position - 2 * bisect.bisect_left(inserted, position)


def _statement(text: str, node: dict[str, Any]) -> SqlStatement:
    (kind, body), *_ = node.items() if node else (("", {}),)
    executes = tuple(_executes(node))
    if kind == "PrepareStmt":
        ((inner, query),) = (body.get("query") or {"": {}}).items()
        constant = inner == "SelectStmt" and _literals_only(query)
        effect = Effect("prepare", body.get("name", ""), text, runs_code=not constant)
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
    literals = kind == "SelectStmt" and _literals_only(body)
    code_free = (
        kind in _CODE_FREE
        or literals
        or (kind == "TransactionStmt" and body.get("kind") in _CODE_FREE_TRANSACTIONS)
    )
    planned = kind in _PLANNED and not literals
    return SqlStatement(text, effect, executes, fetches, not code_free, planned)


# What a SELECT of literals holds besides its target list: no FROM, WHERE, INTO, LIMIT, …
_PLAIN_SELECT: Final = {"limitOption": "LIMIT_OPTION_DEFAULT", "op": "SETOP_NONE"}


def _literals_only(body: dict[str, Any]) -> bool:
    """``SELECT 1, 'a', NULL, -2.5 AS x``: constants of built-in types, no operator, cast,
    function, parameter or table; evaluating and sending them calls built-in code only.

    A parameter is left out: its type may be user-defined (its output function, a domain's
    CHECK on input), which the text does not say. ``true`` is a constant too (pglast 6+).
    """
    targets = body.get("targetList")
    if not targets or {k: v for k, v in body.items() if k != "targetList"} != _PLAIN_SELECT:
        return False
    for target in targets:
        entry = target.get("ResTarget") if isinstance(target, dict) else None
        if not isinstance(entry, dict) or set(entry) - {"name", "val", "location"}:
            return False
        value = entry.get("val")
        if not isinstance(value, dict) or set(value) != {"A_Const"}:
            return False
    return True


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
