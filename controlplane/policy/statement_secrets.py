"""Secrets in statement text: password literals are masked before a statement is recorded.

`CREATE ROLE x PASSWORD 'p'` would otherwise put the password in the audit trail, in every
export and in every SIEM that reads it. Which literals are secrets is decided from the parse
tree (pglast), never from a regular expression on the text, so quoting, comments, escapes and
case cannot hide one; each secret literal is then replaced, in place, by `'***'`:

* the value of any option named `password`: `CREATE/ALTER ROLE|USER … [ENCRYPTED] PASSWORD`,
  `CREATE/ALTER USER MAPPING … OPTIONS (password …)`, `CREATE/ALTER SERVER … OPTIONS (…)`;
* the connection string of `CREATE/ALTER SUBSCRIPTION … CONNECTION '…'`;
* every string argument of a `dblink*` function (its connection string, or a named one);
* any other string constant that reads like a libpq connection string with a password;
* the body of a DO block or a function (`AS '…'`) that holds a secret read as a statement of
  its own (conservatively: PL/pgSQL does not parse as SQL, so every literal in it counts).

Text the parser refuses is redacted conservatively when it mentions a password: every string
literal the scanner finds goes, or, if even the scanner fails, everything after the word.

A backslash in a literal is read differently with ``standard_conforming_strings`` off, and a
configuration reload can turn it off unreported just before a statement (decision 0010): the
text is read both ways. When the other reading holds a secret (or cannot be read), everything
from the first literal the readings split differently is masked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pglast import parser

from controlplane.policy.guardrails import TooAmbiguous, nonstandard_reading

MASK = "'***'"
# Statements that cannot hold a secret skip the parser: none of these words, in any case.
_TRIGGERS = ("password", "dblink", "connection", "u&", "\\", "postgres://", "postgresql://")
# A libpq connection string with a password: keyword = value, or a URI with one in its
# userinfo (`postgresql://user:secret@host`) or in its parameters (`…?password=secret`).
_CONNINFO_PASSWORD = re.compile(
    r"(?i)(^|\s)password\s*=|^\s*postgres(?:ql)?://[^/?#@]*:[^/?#@]*@|[?&]password="
)
_WORD = re.compile(r"(?i)password")
_LITERALS = ("SCONST", "USCONST")


def redact_statement(sql: str) -> str:
    """`sql` with its secret literals replaced by '***' (the same object if it has none)."""
    lowered = sql.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return sql
    redacted = _redact(sql)
    if "\\" not in sql:
        return redacted
    try:
        other = nonstandard_reading(sql)
    except (parser.ParseError, TooAmbiguous):
        other = ""  # a server reading it that way refuses it; it is recorded all the same
    if other is None or (other and _redact(other) == other):
        return redacted
    return _cut(sql)


def held_secret(recorded: str) -> bool:
    """Whether a statement recorded as ``recorded`` had something taken out: this module and
    MySQL's ``redact`` leave ``***`` where they did (text that held it already counts too)."""
    return "***" in recorded


def withheld(message: str) -> str:
    """A target's message about a statement that held a secret, up to its first quote: a
    server quotes the text it stopped at (PostgreSQL ``syntax error at or near "…"``, MySQL
    ``… near '…' at line 1``), and that may be the password, typed without its quotes or
    with one missing."""
    quotes = [at for at in (message.find('"'), message.find("'")) if at >= 0]
    return message[: min(quotes)] + "***" if quotes else message


def _cut(sql: str) -> str:
    """The text up to the first literal holding a backslash (redacted as text of its own), then
    one mask: the two readings split what follows differently."""
    try:
        tokens = parser.scan(sql)
    except Exception:
        return _conservative(sql)
    start = next(
        (t.start for t in tokens if t.name in _LITERALS and "\\" in sql[t.start : t.end + 1]),
        None,
    )
    if start is None:
        return _conservative(sql)
    head = _redact(sql[:start])
    return head if head.endswith(" ***") else head + MASK  # (the word and a mask already)


def _redact(sql: str) -> str:
    """The secret literals of the ``standard_conforming_strings = on`` reading masked."""
    raw = sql.encode("utf-8", errors="surrogatepass")
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except Exception:  # pglast's ParseError, or whatever odd input makes it raise
        return _conservative(sql)
    # The tree counts bytes of UTF-8, the scanner characters.
    locations = {_chars(raw, at) for at in _secret_locations(tree)}
    if not locations:
        return sql
    try:
        tokens = parser.scan(sql)
    except Exception:
        return _conservative(sql)
    spans = []
    for location in sorted(locations):
        token = next((t for t in tokens if t.start == location), None)
        if token is None or token.name not in _LITERALS:
            if token is not None and token.name == "PARAM":
                continue  # `PASSWORD $1`: the value travels as a parameter, not in the text
            # The location names the option, not its value: the literal follows it.
            token = next((t for t in tokens if t.start > location and t.name in _LITERALS), None)
        if token is None:
            return _conservative(sql)
        end = token.end + 1
        # 'a'<newline>'b' is one literal in SQL: its continuations are part of the secret.
        for later in tokens[tokens.index(token) + 1 :]:
            if later.name != "SCONST":
                break
            end = later.end + 1
        spans.append((token.start, end))
    return _replace(sql, spans)


def _chars(raw: bytes, at: int) -> int:
    return len(raw[:at].decode("utf-8", errors="surrogatepass"))


def _secret_locations(node: Any) -> Iterator[int]:
    """Byte offsets of (or just before) the string literals that hold a secret."""
    if isinstance(node, list):
        for item in node:
            yield from _secret_locations(item)
        return
    if not isinstance(node, dict):
        return
    for kind, body in node.items():
        if not isinstance(body, dict):
            yield from _secret_locations(body)
            continue
        if kind == "DefElem" and str(body.get("defname", "")).lower() == "password":
            if body.get("arg") is not None:
                location = body.get("arg_location", -1)
                yield location if location >= 0 else body.get("location", 0)
        elif kind in ("CreateSubscriptionStmt", "AlterSubscriptionStmt") and body.get("conninfo"):
            location = body.get("conninfo_location")
            yield location if isinstance(location, int) and location >= 0 else 0
        elif kind == "FuncCall" and _is_dblink(body):
            yield from _string_args(body.get("args", []))
        elif kind == "DefElem" and body.get("defname") == "as" and _code_holds_secret(body):
            location = body.get("arg_location", -1)
            yield location if location >= 0 else body.get("location", 0)
        elif kind == "A_Const":
            value = body.get("sval", {}).get("sval")
            if isinstance(value, str) and _CONNINFO_PASSWORD.search(value):
                yield body.get("location", 0)
        yield from _secret_locations(body)


def _code_holds_secret(option: dict[str, Any]) -> bool:
    """Whether the code of a DO block or a function body (`AS`) holds a secret: it runs."""
    arg = option.get("arg")
    items = arg.get("List", {}).get("items", []) if isinstance(arg, dict) else []
    for item in [arg, *items]:
        code = item.get("String", {}).get("sval") if isinstance(item, dict) else None
        if isinstance(code, str) and redact_statement(code) != code:
            return True
    return False


def _is_dblink(call: dict[str, Any]) -> bool:
    names = [part.get("String", {}).get("sval", "") for part in call.get("funcname", [])]
    return bool(names) and str(names[-1]).lower().startswith("dblink")


def _string_args(args: list[Any]) -> Iterator[int]:
    for arg in args:
        const = arg.get("A_Const") if isinstance(arg, dict) else None
        if const is not None and "sval" in const:
            yield const.get("location", 0)


def _conservative(sql: str) -> str:
    """Unparseable text: if it mentions a password, no literal (or nothing after the word)."""
    match = _WORD.search(sql)
    if match is None:
        return sql
    try:
        tokens = parser.scan(sql)
    except Exception:
        return sql[: match.end()] + " ***"
    spans = [(t.start, t.end + 1) for t in tokens if t.name in _LITERALS]
    if not spans:
        return sql[: match.end()] + " ***"
    return _replace(sql, spans)


def _replace(sql: str, spans: list[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in sorted(set(spans)):
        if start < last:
            continue
        out += [sql[last:start], MASK]
        last = end
    out.append(sql[last:])
    return "".join(out)
