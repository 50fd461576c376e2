"""SQL guardrails for MySQL connections: the rule kinds of ``guardrails.SqlGuard`` (deny_statements,
deny_unbounded, deny_patterns), decided on MySQL's grammar (``mysql_sql``).

A text is decided under every reading the server could make of it (executable comments opened;
with a backslash, also as NO_BACKSLASH_ESCAPES reads it; with a double quote, also as
ANSI_QUOTES reads it): a rule that denies any reading
denies the text. Text the tokenizer cannot read, or a DELETE/UPDATE whose WHERE cannot be
parsed while a deny_unbounded rule needs it, is refused when a guardrail needs its structure,
as is text with a non-ASCII character right before a backslash, a backtick or a bracket (GBK
and its kin read it otherwise).
``PREPARE … FROM 'text'`` and ``EXECUTE IMMEDIATE 'text'`` are decided on that text too; from a
variable or an expression, it cannot be read, and is refused when a guardrail denies statements
by type. A compound statement (``BEGIN NOT ATOMIC``, ``IF``, ``WHILE`` … which MariaDB runs
outside stored programs, whole) is refused when a guardrail needs structure: the statements in
it are not the pieces its text splits into. A stored routine's body is decided on its CREATE
(``Piece.routine_body``): it runs later, behind a CALL or a trigger.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from sqlglot import exp

from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import ALLOW, UNPARSEABLE_RULE, Decision, SqlRule
from controlplane.policy.mysql_sql import (
    Piece,
    Unreadable,
    charset_sensitive,
    readings,
    split,
    too_large,
    where_of,
)

__all__ = ["MysqlGuard"]

_CACHE_MAX_CHARS = 4096
#: Statements in a routine's body that run text the guard cannot see there.
_DYNAMIC = frozenset({"PREPARE", "EXECUTE"})
_MAX_DEPTH = 4  # PREPARE FROM 'PREPARE FROM …' nesting the guard follows


class MysqlGuard:
    """Decides, for one connection's guardrails, whether a MySQL statement text may run."""

    def __init__(self, guardrails: Sequence[Guardrail], *, cache_size: int = 1024) -> None:
        compiled = (SqlRule.compile(guardrail) for guardrail in guardrails)
        self._rules = tuple(rule for rule in compiled if rule is not None)
        self._cached: Callable[[str], Decision] = functools.lru_cache(maxsize=cache_size)(
            self._decide
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(rule.name for rule in self._rules)

    def check(self, sql: str) -> Decision:
        """Decide one statement's text (one piece of what ``mysql_sql.split`` returns)."""
        if not self._rules:
            return ALLOW
        return self._cached(sql) if len(sql) <= _CACHE_MAX_CHARS else self._decide(sql)

    def _decide(self, sql: str, depth: int = 0) -> Decision:
        for rule in self._rules:
            for pattern in rule.patterns:
                found = pattern.search(sql)
                if found is not None:
                    shown = found.group(0)[:60].replace("\n", " ")
                    return Decision(
                        False,
                        rule.name,
                        f"pattern '{pattern.pattern}' of guardrail \"{rule.name}\""
                        f' matched "{shown}"',
                    )
        structural = [rule for rule in self._rules if rule.structural]
        if not structural:
            return ALLOW
        if charset_sensitive(sql):
            return _unparseable(
                structural[0],
                "a non-ASCII character right before a backslash, a backtick or a bracket is read"
                " differently under GBK, SJIS, CP932, Big5 or GB18030; write it with an escape"
                " (_utf8mb4 X'…', CHAR(…)) or put a space between them",
            )
        why = too_large(sql)
        if why is not None:
            return _unparseable(structural[0], why)
        try:
            every = readings(sql)
        except Unreadable as exc:  # too many version-gated comments to read every way
            return _unparseable(structural[0], str(exc))
        why = too_large(sql, len(every))
        if why is not None:
            return _unparseable(structural[0], why)
        for index, reading in enumerate(every):
            try:
                pieces = split(
                    reading.text, ansi_quotes=reading.ansi_quotes, brackets=reading.brackets
                )
            except Unreadable as exc:
                if index and ";" not in reading.text:
                    # One statement that the server, reading it so (NO_BACKSLASH_ESCAPES, or
                    # a version-gated comment skipped), fails as a syntax error: not run.
                    continue
                # Statements before the syntax error would run, and cannot be told apart.
                return _unparseable(structural[0], str(exc))
            for piece in pieces:
                decision = self._piece(piece, structural, depth)
                if not decision.allowed:
                    return decision
        return ALLOW

    def _piece(self, piece: Piece, rules: list[SqlRule], depth: int) -> Decision:
        if piece.compound:
            return _unparseable(
                rules[0],
                f"{piece.keyword} begins a compound statement, which the server runs whole,"
                " with the statements in it; send them one by one",
            )
        body = piece.routine_body
        for rule in rules:
            if body & rule.statements:
                found = sorted(body & rule.statements)[0]
                return Decision(
                    False,
                    rule.name,
                    f'the routine\'s body holds {found}, which guardrail "{rule.name}" denies'
                    " (it runs when the routine is called or fires, unseen by the guard)",
                )
            if body & rule.unbounded or (body & _DYNAMIC and (rule.statements or rule.unbounded)):
                found = sorted(body & (rule.unbounded | _DYNAMIC))[0]
                return _unparseable(
                    rule,
                    f"the routine's body holds {found}, which the gateway does not read in a"
                    " routine (it runs when the routine is called or fires, unseen by the"
                    " guard); create it where this guardrail does not apply",
                )
            denied = sorted(piece.keywords & rule.statements)
            if denied:
                label = piece.keyword or denied[0]
                how = "is" if denied[0] == label else f"counts as {denied[0]}, which"
                return Decision(
                    False, rule.name, f'{label} {how} denied by guardrail "{rule.name}"'
                )
            if piece.keyword in rule.unbounded:
                where = where_of(piece.statement or piece.text)
                if isinstance(where, Unreadable):
                    return _unparseable(rule, str(where))
                if where is None or not any(where.find_all(exp.Column)):
                    bound = (
                        "without WHERE" if where is None else "with a WHERE that names no column"
                    )
                    return Decision(
                        False,
                        rule.name,
                        f'{piece.keyword} {bound} is denied by guardrail "{rule.name}"',
                    )
        source = piece.prepare_source
        if source is not None:
            if not source or depth >= _MAX_DEPTH:
                if any(rule.statements or rule.unbounded for rule in rules):
                    return Decision(
                        False,
                        rules[0].name,
                        "a statement prepared or executed from a variable or an expression"
                        f' cannot be read, and guardrail "{rules[0].name}" must read what runs;'
                        " give its text as one string literal",
                    )
                return ALLOW
            inner = self._decide(source, depth + 1)
            if not inner.allowed:
                return Decision(False, inner.rule, f"the prepared text: {inner.reason}")
        return ALLOW


def _unparseable(rule: SqlRule, why: str) -> Decision:
    return Decision(
        False,
        UNPARSEABLE_RULE,
        f'the statement could not be read as MySQL, so guardrail "{rule.name}" cannot check'
        f" it: {why}",
    )
