"""SQL guardrails: decide, before a statement is forwarded, whether a guardrail denies it.

The statement is read with pglast (libpg_query: PostgreSQL's own grammar and lexer), so the
guard sees what the server will see: a keyword in a comment or a string is not a statement, and
a DELETE inside a data-modifying CTE, an EXPLAIN ANALYZE or a PREPARE is one. The rules, the
keyword of each statement and the reasons are explained in ``docs/guardrails.md``.

This runs on the path of every statement, so ``check`` parses at most once (twice when a string
literal holds a backslash, see ``nonstandard_reading``), reads the parser's JSON text before it
decodes it, and remembers its recent answers by statement text.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pglast.parser import ParseError, parse_sql_json, scan

from controlplane.policy.document import Guardrail

__all__ = [
    "STATEMENT_KEYWORDS",
    "UNPARSEABLE_RULE",
    "Decision",
    "SqlGuard",
    "SqlRule",
    "TooAmbiguous",
    "nonstandard_reading",
]

#: The `rule` of a decision on text that could not be parsed.
UNPARSEABLE_RULE: Final = "(unparseable)"

# Statement texts up to this length are remembered (prepared statements repeat); longer ones are
# decided every time, so that the cache holds at most cache_size * this many characters.
_CACHE_MAX_CHARS: Final = 4096
# A text whose string literals read differently with standard_conforming_strings off is re-read
# once per such literal; past this many it is treated as unparseable (the work is quadratic).
_MAX_REREADS: Final = 64


# ------------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guard decided about one statement text."""

    allowed: bool
    rule: str | None = None  # the guardrail that denied, or UNPARSEABLE_RULE
    reason: str | None = None  # for the person at the prompt, and for the audit event

    def as_event(self) -> dict[str, str]:
        """The ``decision`` member of an audit event (docs/DESIGN.md §5)."""
        if self.allowed:
            return {"result": "allow"}
        return {"result": "deny", "rule": self.rule or "", "reason": self.reason or ""}


ALLOW: Final = Decision(allowed=True)


# ----------------------------------------------------------- what each parse node counts as


@dataclass(frozen=True, slots=True)
class _Kind:
    """What one parse node is, in deny_statements' and deny_unbounded's terms."""

    label: str  # as the engineer would name it: "DROP", "SELECT INTO", "RESET"
    keywords: frozenset[str]  # the deny_statements keywords it counts as
    unbounded: str | None = None  # "DELETE" / "UPDATE" when it reaches every row
    bound: str = ""  # why it is unbounded, after the label: "without WHERE"


def _first_word(label: str) -> str:
    return label.partition(" ")[0]


def _kind(label: str, *also: str) -> _Kind:
    """A node whose keyword is the first word of its label (plus any it also counts as)."""
    return _Kind(label, frozenset((_first_word(label), *also)))


def _nodes(names: str, kind: _Kind) -> dict[str, _Kind]:
    return dict.fromkeys(names.split(), kind)


# Node types whose keyword follows from the type alone. Keys are libpg_query's node names.
_SIMPLE: Final[dict[str, _Kind]] = {
    **_nodes(
        "DropStmt DropdbStmt DropRoleStmt DropOwnedStmt DropSubscriptionStmt DropTableSpaceStmt"
        " DropUserMappingStmt",
        _kind("DROP"),
    ),
    **_nodes(
        "AlterCollationStmt AlterDatabaseRefreshCollStmt AlterDatabaseSetStmt AlterDatabaseStmt"
        " AlterDomainStmt AlterEnumStmt AlterEventTrigStmt AlterExtensionContentsStmt"
        " AlterExtensionStmt AlterFdwStmt AlterForeignServerStmt AlterFunctionStmt"
        " AlterObjectDependsStmt AlterObjectSchemaStmt AlterOpFamilyStmt AlterOperatorStmt"
        " AlterOwnerStmt AlterPolicyStmt AlterPublicationStmt AlterRoleSetStmt AlterRoleStmt"
        " AlterSeqStmt AlterStatsStmt AlterSubscriptionStmt AlterTSConfigurationStmt"
        " AlterTSDictionaryStmt AlterTableMoveAllStmt AlterTableSpaceOptionsStmt AlterTableStmt"
        " AlterTypeStmt AlterUserMappingStmt RenameStmt ReplicaIdentityStmt",
        _kind("ALTER"),
    ),
    "AlterSystemStmt": _kind("ALTER SYSTEM"),
    **_nodes(
        "CreateAmStmt CreateCastStmt CreateConversionStmt CreateDomainStmt CreateEnumStmt"
        " CreateEventTrigStmt CreateExtensionStmt CreateFdwStmt CreateForeignServerStmt"
        " CreateForeignTableStmt CreateFunctionStmt CreateOpClassStmt CreateOpFamilyStmt"
        " CreatePLangStmt CreatePolicyStmt CreatePublicationStmt CreateRangeStmt CreateRoleStmt"
        " CreateSchemaStmt CreateSeqStmt CreateStatsStmt CreateStmt CreateSubscriptionStmt"
        " CreateTableAsStmt CreateTableSpaceStmt CreateTransformStmt CreateTrigStmt"
        " CreateUserMappingStmt CreatedbStmt CompositeTypeStmt DefineStmt IndexStmt ViewStmt"
        " RuleStmt",
        _kind("CREATE"),
    ),
    "ImportForeignSchemaStmt": _kind("IMPORT FOREIGN SCHEMA", "CREATE"),
    "TruncateStmt": _kind("TRUNCATE"),
    "DoStmt": _kind("DO"),
    "ExecuteStmt": _kind("EXECUTE"),
    "CallStmt": _kind("CALL"),
    "ConstraintsSetStmt": _kind("SET CONSTRAINTS"),
    "VariableShowStmt": _kind("SHOW"),
    "CopyStmt": _kind("COPY"),
    "MergeStmt": _kind("MERGE"),
    "ExplainStmt": _kind("EXPLAIN"),
    "PrepareStmt": _kind("PREPARE"),
    "DeallocateStmt": _kind("DEALLOCATE"),
    "ClusterStmt": _kind("CLUSTER"),
    "ReindexStmt": _kind("REINDEX"),
    "CheckPointStmt": _kind("CHECKPOINT"),
    "LoadStmt": _kind("LOAD"),
    "LockStmt": _kind("LOCK"),
    "ListenStmt": _kind("LISTEN"),
    "UnlistenStmt": _kind("UNLISTEN"),
    "NotifyStmt": _kind("NOTIFY"),
    "CommentStmt": _kind("COMMENT"),
    "SecLabelStmt": _kind("SECURITY LABEL"),
    "DeclareCursorStmt": _kind("DECLARE"),
    "ClosePortalStmt": _kind("CLOSE"),
    "RefreshMatViewStmt": _kind("REFRESH"),
    "ReassignOwnedStmt": _kind("REASSIGN"),
    "DiscardStmt": _kind("DISCARD"),
    "ReturnStmt": _kind("RETURN"),  # the body of CREATE FUNCTION … RETURN expr
}

# Node names that end in "Stmt" but never appear in what parse_sql_json returns: RawStmt is the
# list entry itself, SetOperationStmt belongs to analysed queries, PLAssignStmt to PL/pgSQL.
_NOT_PARSED: Final = frozenset({"RawStmt", "SetOperationStmt", "PLAssignStmt"})

_Body = dict[str, Any]


def _names_a_column(node: Any) -> bool:
    """Whether an expression refers to a column (or a cursor position) anywhere inside it."""
    stack = [node]
    while stack:
        item = stack.pop()
        if type(item) is dict:
            if "ColumnRef" in item or "CurrentOfExpr" in item:
                return True
            stack.extend(item.values())
        elif type(item) is list:
            stack.extend(item)
    return False


def _bound(body: _Body) -> str:
    """Empty when a DELETE/UPDATE's WHERE picks rows, else why it does not."""
    where = body.get("whereClause")
    if where is None:
        return "without WHERE"
    if not _names_a_column(where):
        return "with a WHERE that names no column"
    return ""


def _delete(body: _Body) -> tuple[_Kind, ...]:
    bound = _bound(body)
    return (_Kind("DELETE", frozenset({"DELETE"}), "DELETE" if bound else None, bound),)


def _update(body: _Body) -> tuple[_Kind, ...]:
    bound = _bound(body)
    return (_Kind("UPDATE", frozenset({"UPDATE"}), "UPDATE" if bound else None, bound),)


_SELECT: Final = _kind("SELECT")
_VALUES: Final = _kind("VALUES")
_INSERT: Final = _kind("INSERT")
_UPSERT: Final = _Kind("INSERT … ON CONFLICT DO UPDATE", frozenset({"INSERT", "UPDATE"}))
_SELECT_INTO: Final = _Kind("SELECT INTO", frozenset({"SELECT", "CREATE"}))
_MERGE_ACTIONS: Final = {
    "CMD_DELETE": "DELETE",
    "CMD_UPDATE": "UPDATE",
    "CMD_INSERT": "INSERT",
}
_TRANSACTION: Final = {
    "TRANS_STMT_BEGIN": _kind("BEGIN"),
    "TRANS_STMT_START": _Kind("START TRANSACTION", frozenset({"BEGIN"})),
    "TRANS_STMT_COMMIT": _kind("COMMIT"),
    "TRANS_STMT_ROLLBACK": _kind("ROLLBACK"),
    "TRANS_STMT_SAVEPOINT": _kind("SAVEPOINT"),
    "TRANS_STMT_RELEASE": _kind("RELEASE"),
    "TRANS_STMT_ROLLBACK_TO": _kind("ROLLBACK TO SAVEPOINT"),
    "TRANS_STMT_PREPARE": _kind("PREPARE TRANSACTION"),
    "TRANS_STMT_COMMIT_PREPARED": _kind("COMMIT PREPARED"),
    "TRANS_STMT_ROLLBACK_PREPARED": _kind("ROLLBACK PREPARED"),
}
_GRANT: Final = _kind("GRANT")
_REVOKE: Final = _kind("REVOKE")
_SET: Final = _kind("SET")
_RESET: Final = _kind("RESET", "SET")


def _merge(body: _Body) -> tuple[_Kind, ...]:
    """MERGE, and each DELETE/UPDATE action that reaches every row: one whose ON condition and
    WHEN … AND condition name no column."""
    kinds = [_SIMPLE["MergeStmt"]]
    if not _names_a_column(body.get("joinCondition")):
        for clause in body.get("mergeWhenClauses", ()):
            when = clause.get("MergeWhenClause", {})
            action = _MERGE_ACTIONS.get(when.get("commandType", ""))
            if action in ("DELETE", "UPDATE") and not _names_a_column(when.get("condition")):
                label = f"MERGE … THEN {action}"
                kinds.append(
                    _Kind(label, frozenset(), action, "with an ON condition that names no column")
                )
    return tuple(kinds)


def _merge_action(body: _Body) -> tuple[_Kind, ...]:
    action = _MERGE_ACTIONS.get(body.get("commandType", ""))
    return (_Kind(f"MERGE … THEN {action}", frozenset({action})),) if action else ()


def _insert(body: _Body) -> tuple[_Kind, ...]:
    upsert = body.get("onConflictClause", {}).get("action") == "ONCONFLICT_UPDATE"
    return (_INSERT, _UPSERT) if upsert else (_INSERT,)


def _alter_default_privileges(body: _Body) -> tuple[_Kind, ...]:
    grant = body.get("action", {}).get("is_grant", False)
    word = "GRANT" if grant else "REVOKE"
    return (_Kind(f"ALTER DEFAULT PRIVILEGES … {word}", frozenset({"ALTER", word})),)


# Node types (and the one clause, intoClause, that may sit in an unwrapped SelectStmt) whose
# keywords depend on their content: handler, and every keyword the handler may return.
_Handler = Callable[[_Body], tuple[_Kind, ...]]
_SPECIAL: Final[dict[str, tuple[_Handler, frozenset[str]]]] = {
    "SelectStmt": (
        lambda body: (_VALUES if "valuesLists" in body else _SELECT,),
        frozenset({"SELECT", "VALUES"}),  # CREATE: see intoClause and SqlGuard._may_match
    ),
    "intoClause": (lambda body: (_SELECT_INTO,), frozenset({"SELECT", "CREATE"})),
    "InsertStmt": (_insert, frozenset({"INSERT", "UPDATE"})),
    "DeleteStmt": (_delete, frozenset({"DELETE"})),
    "UpdateStmt": (_update, frozenset({"UPDATE"})),
    "MergeStmt": (_merge, frozenset({"MERGE", "DELETE", "UPDATE", "INSERT"})),
    "MergeWhenClause": (_merge_action, frozenset({"DELETE", "UPDATE", "INSERT"})),
    "GrantStmt": (
        lambda body: (_GRANT if body.get("is_grant") else _REVOKE,),
        frozenset({"GRANT", "REVOKE"}),
    ),
    "GrantRoleStmt": (
        lambda body: (_GRANT if body.get("is_grant") else _REVOKE,),
        frozenset({"GRANT", "REVOKE"}),
    ),
    "AlterDefaultPrivilegesStmt": (
        _alter_default_privileges,
        frozenset({"ALTER", "GRANT", "REVOKE"}),
    ),
    "VariableSetStmt": (
        lambda body: (_RESET if body.get("kind", "").startswith("VAR_RESET") else _SET,),
        frozenset({"SET", "RESET"}),
    ),
    "TransactionStmt": (
        lambda body: (_TRANSACTION[body["kind"]],) if body.get("kind") in _TRANSACTION else (),
        frozenset[str]().union(*(kind.keywords for kind in _TRANSACTION.values())),
    ),
    "VacuumStmt": (
        lambda body: (_kind("VACUUM") if body.get("is_vacuumcmd") else _kind("ANALYZE"),),
        frozenset({"VACUUM", "ANALYZE"}),
    ),
    "FetchStmt": (
        lambda body: (_kind("MOVE") if body.get("ismove") else _kind("FETCH"),),
        frozenset({"FETCH", "MOVE"}),
    ),
}

# What a node name can amount to, decided from the name alone (a superset of what the handler
# returns): the parser's JSON text is searched for statement names before it is decoded.
_POSSIBLE: Final[dict[str, frozenset[str]]] = {
    **{name: kind.keywords for name, kind in _SIMPLE.items()},
    **{name: possible for name, (_handler, possible) in _SPECIAL.items()},
}
_POSSIBLY_UNBOUNDED: Final[dict[str, frozenset[str]]] = {
    "DeleteStmt": frozenset({"DELETE"}),
    "UpdateStmt": frozenset({"UPDATE"}),
    "MergeStmt": frozenset({"DELETE", "UPDATE"}),
}
_HANDLERS: Final[dict[str, _Kind | _Handler]] = {
    **_SIMPLE,
    **{name: handler for name, (handler, _possible) in _SPECIAL.items()},
}

# Other spellings of the same command.
_ALIASES: Final = {"START": "BEGIN", "END": "COMMIT", "ABORT": "ROLLBACK"}

#: Every keyword that deny_statements understands.
STATEMENT_KEYWORDS: Final[frozenset[str]] = frozenset[str]().union(*_POSSIBLE.values(), _ALIASES)


# --------------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class _Finding:
    """One node of the statement text that a guardrail may deny."""

    kind: _Kind
    context: str  # "" or ", inside EXPLAIN, statement 2 of 3": where the node sits
    unknown: bool = False  # a statement type this guard has no keyword for


@dataclass(frozen=True, slots=True)
class _Unparseable:
    message: str


class TooAmbiguous(Exception):
    """Too many string literals read differently with standard_conforming_strings off."""


def _statement_names(tree_json: str) -> list[str]:
    """Names of the statement nodes in the parser's JSON text, without decoding it.

    A node is written as ``{"DeleteStmt": {…}}``; inside a JSON string every quote is escaped,
    so the text ``Stmt":`` occurs only at the end of a key. Keys that are field names
    (``selectStmt``) start with a lower-case letter and are skipped.
    """
    names: list[str] = []
    find = tree_json.find
    rfind = tree_json.rfind
    at = find('Stmt":')
    while at >= 0:
        start = rfind('"', 0, at) + 1
        if tree_json[start].isupper():
            names.append(tree_json[start : at + 4])
        at = find('Stmt":', at + 6)
    return names


def _walk(statement: _Body, context: str, sink: list[_Finding]) -> None:
    """Append a finding for every node of one statement that counts as something, the
    statement's own node first, then nested ones breadth-first."""
    queue: list[Any] = [statement]
    for item in queue:  # grows while it is read
        if type(item) is dict:
            for key, value in item.items():
                handler = _HANDLERS.get(key)
                if handler is not None:
                    kinds = handler(value) if callable(handler) else (handler,)
                    sink.extend(_Finding(kind, context) for kind in kinds)
                if type(value) is dict or type(value) is list:
                    queue.append(value)
        elif type(item) is list:
            queue.extend(value for value in item if type(value) is dict or type(value) is list)


def _label_of(statement: _Body) -> str:
    name = next(iter(statement), "")
    handler = _HANDLERS.get(name)
    if handler is None:
        return name
    kinds = handler(statement[name]) if callable(handler) else (handler,)
    return kinds[0].label if kinds else name


_ESCAPED_QUOTE: Final = re.compile(r"(?<!\\)(?:\\\\)*\\'")


def nonstandard_reading(sql: str) -> str | None:
    """The text as a server with ``standard_conforming_strings = off`` reads it, spelled so that
    libpg_query (which always reads with it on) parses it the same way; None when both readings
    are the same.

    Any session may turn the setting off (it is a plain SET), and then a backslash in an
    ordinary string literal is an escape: ``select 'a\\' ; select '; drop table t; --'`` is two
    SELECTs as libpg_query reads it and a SELECT and a DROP as such a server reads it. With the
    setting off an ordinary literal is lexed exactly like an E'…' literal, so prefixing E to each
    ordinary literal that holds a backslash yields the other reading. The two readings agree up
    to the first such literal; when a literal's extent changes (it has ``\\'``), whatever
    follows it is lexed afresh.

    Raises ParseError when the other reading cannot be lexed (the server would refuse it
    too), TooAmbiguous past _MAX_REREADS re-reads.
    """
    text = sql
    for _reread in range(_MAX_REREADS + 1):  # the last pass only confirms
        starts: list[int] = []
        extent_changes = False
        for token in scan(text):
            if token.name != "SCONST" or text[token.start] != "'":
                continue  # E'…', $$…$$, U&'…', B'…' and X'…' read the same either way
            literal = text[token.start : token.end + 1]
            if "\\" in literal:
                starts.append(token.start)
                if _ESCAPED_QUOTE.search(literal):
                    extent_changes = True
                    break
        if not starts:
            return None if text is sql else text
        pieces: list[str] = []
        previous = 0
        for start in starts:
            pieces.append(text[previous:start])
            pieces.append(" E")  # the space keeps `date'…'` or `N'…'` from fusing with the E
            previous = start
        pieces.append(text[previous:])
        text = "".join(pieces)
        if not extent_changes:
            return text
    raise TooAmbiguous


# ----------------------------------------------------------------------------------- guard


@dataclass(frozen=True, slots=True)
class SqlRule:
    """The SQL part of one guardrail, compiled: what PostgreSQL's and MySQL's guards decide by."""

    name: str
    statements: frozenset[str]
    unbounded: frozenset[str]
    patterns: tuple[re.Pattern[str], ...]

    @classmethod
    def compile(
        cls, guardrail: Guardrail, aliases: Mapping[str, str] | None = None
    ) -> SqlRule | None:
        """None for a guardrail with no SQL part (a shell-only one: deny_commands). Keywords are
        upper-cased, then renamed by ``aliases`` in deny_statements."""
        aliases = aliases or {}
        rule = cls(
            name=guardrail.name,
            statements=frozenset(
                aliases.get(word.upper(), word.upper()) for word in guardrail.deny_statements
            ),
            unbounded=frozenset(word.upper() for word in guardrail.deny_unbounded),
            patterns=tuple(re.compile(pattern) for pattern in guardrail.deny_patterns),
        )
        return rule if rule.structural or rule.patterns else None

    @property
    def structural(self) -> bool:
        return bool(self.statements or self.unbounded)


class SqlGuard:
    """Decides, for one connection's guardrails, whether a statement text may be forwarded.

    Build one per policy version and share it: it holds compiled rules and a cache, never any
    session state. ``unparseable`` decides text that the parser refuses while a guardrail needs
    its structure: "deny" (the default: a guard that cannot read a statement cannot vouch for
    it) or "allow" (then only deny_patterns apply to such text).
    """

    def __init__(
        self,
        guardrails: Sequence[Guardrail],
        *,
        unparseable: Literal["deny", "allow"] = "deny",
        cache_size: int = 1024,
    ) -> None:
        if unparseable not in ("deny", "allow"):
            raise ValueError(f"unparseable must be 'deny' or 'allow', not {unparseable!r}")
        rules: list[SqlRule] = []
        for guardrail in guardrails:
            unknown = sorted(
                {word.upper() for word in guardrail.deny_statements} - STATEMENT_KEYWORDS
            )
            if unknown:
                raise ValueError(
                    f'guardrail "{guardrail.name}": deny_statements has {", ".join(unknown)},'
                    " which is not a PostgreSQL statement keyword this guard knows"
                    f" (known: {', '.join(sorted(STATEMENT_KEYWORDS))})"
                )
            rule = SqlRule.compile(guardrail, _ALIASES)
            if rule is not None:
                rules.append(rule)
        self._rules: tuple[SqlRule, ...] = tuple(rules)
        self._deny_unparseable = unparseable == "deny"
        self._denied_keywords = frozenset[str]().union(*(rule.statements for rule in rules))
        self._denied_unbounded = frozenset[str]().union(*(rule.unbounded for rule in rules))
        self._cached: Callable[[str], Decision] = (
            functools.lru_cache(maxsize=cache_size)(self._decide)
            if cache_size > 0
            else self._decide
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The guardrails that read SQL text; empty when this guard allows everything.

        A request whose text the gateway cannot know (a cursor a function may have re-opened)
        is refused when any of them would have to read it (decision 0010)."""
        return tuple(rule.name for rule in self._rules)

    def check(self, sql: str) -> Decision:
        """Decide one statement text, as the client sent it (one or several statements)."""
        if not self._rules:
            return ALLOW
        if len(sql) <= _CACHE_MAX_CHARS:
            return self._cached(sql)
        return self._decide(sql)

    # -- deciding

    def _decide(self, sql: str, *, prefilter: bool = True) -> Decision:
        analysis: list[_Finding] | _Unparseable | None = None
        for rule in self._rules:
            if rule.structural:
                if analysis is None:
                    analysis = self._analyse(sql, prefilter=prefilter)
                if isinstance(analysis, _Unparseable):
                    if self._deny_unparseable:
                        return Decision(
                            allowed=False,
                            rule=UNPARSEABLE_RULE,
                            reason=(
                                "the statement could not be parsed as PostgreSQL, so guardrail"
                                f' "{rule.name}" cannot check it: {analysis.message}'
                            ),
                        )
                else:
                    for finding in analysis:
                        reason = _match(rule, finding)
                        if reason is not None:
                            return Decision(allowed=False, rule=rule.name, reason=reason)
            for pattern in rule.patterns:
                found = pattern.search(sql)
                if found is not None:
                    return Decision(
                        allowed=False,
                        rule=rule.name,
                        reason=(
                            f"pattern '{pattern.pattern}' of guardrail \"{rule.name}\" matched"
                            f" {_excerpt(found.group(0))}"
                        ),
                    )
        return ALLOW

    def _analyse(self, sql: str, *, prefilter: bool = True) -> list[_Finding] | _Unparseable:
        if "\x00" in sql:
            # libpg_query would stop reading at it; PostgreSQL refuses such a message.
            return _Unparseable("the text contains a NUL character")
        try:
            tree_json = parse_sql_json(sql)
        except ParseError as exc:
            return _Unparseable(str(exc.args[0]) if exc.args else str(exc))
        except (UnicodeError, ValueError) as exc:  # e.g. a lone surrogate: not valid UTF-8
            return _Unparseable(f"the text is not valid UTF-8 ({exc})")
        findings = self._findings(tree_json, "", prefilter=prefilter)
        if isinstance(findings, _Unparseable) or "\\" not in sql:
            return findings
        try:
            other = nonstandard_reading(sql)
        except TooAmbiguous:
            return _Unparseable(
                f"over {_MAX_REREADS} string literals read differently when"
                " standard_conforming_strings is off"
            )
        except ParseError:
            return findings  # with the setting off the server cannot lex it: it runs nothing
        if other is None:
            return findings
        try:
            other_json = parse_sql_json(other)
        except ParseError:
            return findings  # with the setting off it is a syntax error: the server runs nothing
        more = self._findings(
            other_json, ", as read with standard_conforming_strings off", prefilter=prefilter
        )
        return more if isinstance(more, _Unparseable) else findings + more

    def _findings(
        self, tree_json: str, reading: str, *, prefilter: bool
    ) -> list[_Finding] | _Unparseable:
        names = _statement_names(tree_json)
        unknown = [name for name in names if name not in _POSSIBLE and name not in _NOT_PARSED]
        if prefilter and not unknown and not self._may_match(names, tree_json):
            return []
        try:
            statements = json.loads(tree_json)["stmts"]
        except RecursionError:
            return _Unparseable("the statement is nested too deeply for the guard to read")
        findings: list[_Finding] = []
        count = len(statements)
        for number, entry in enumerate(statements, start=1):
            statement = entry["stmt"]
            top = _label_of(statement)
            where = f", statement {number} of {count}" if count > 1 else ""
            start = len(findings)
            _walk(statement, where + reading, findings)
            for index in range(start, len(findings)):  # say where a nested node sits
                finding = findings[index]
                if _first_word(finding.kind.label) != _first_word(top):
                    context = f", inside {top}{where}{reading}"
                    findings[index] = _Finding(finding.kind, context)
        for name in unknown:
            findings.append(_Finding(_Kind(name, frozenset()), reading, unknown=True))
        return findings

    def _may_match(self, names: list[str], tree_json: str) -> bool:
        """Whether any node named could be denied (a cheap superset of the exact reading)."""
        for name in names:
            if not self._denied_keywords.isdisjoint(_POSSIBLE.get(name, ())):
                return True
            if not self._denied_unbounded.isdisjoint(_POSSIBLY_UNBOUNDED.get(name, ())):
                return True
        return "CREATE" in self._denied_keywords and '"intoClause":' in tree_json


def _match(rule: SqlRule, finding: _Finding) -> str | None:
    """The reason rule denies the finding, or None."""
    kind = finding.kind
    guardrail = f'guardrail "{rule.name}"'
    if finding.unknown:
        if not rule.statements:
            return None
        return (
            f"{kind.label} is a statement type this guard has no keyword for, and {guardrail}"
            f" denies statements by type{_paren(finding.context)}"
        )
    first = _first_word(kind.label)
    if first in kind.keywords and first in rule.statements:
        return f"{kind.label} is denied by {guardrail}{_paren(finding.context)}"
    matched = sorted(kind.keywords & rule.statements)
    if matched:
        return (
            f"{kind.label} counts as {matched[0]}, which {guardrail} denies"
            f"{_paren(finding.context)}"
        )
    if kind.unbounded is not None and kind.unbounded in rule.unbounded:
        return f"{kind.label} {kind.bound} is denied by {guardrail}{_paren(finding.context)}"
    return None


def _paren(context: str) -> str:
    return f" ({context.removeprefix(', ')})" if context else ""


def _excerpt(text: str, limit: int = 60) -> str:
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return '"' + shown.replace("\n", " ") + '"'
