"""The SQL guardrail evaluator: what each rule denies, what it lets through, and why."""

from __future__ import annotations

import inspect
import re

import pglast.ast
import pytest
from pglast.parser import parse_sql_json

from controlplane.policy import guardrails as module
from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import (
    STATEMENT_KEYWORDS,
    UNPARSEABLE_RULE,
    Decision,
    SqlGuard,
)


def rail(name: str = "g", **rules: list[str]) -> Guardrail:
    return Guardrail.model_validate({"name": name, **rules})


def deny_statements(*keywords: str) -> SqlGuard:
    return SqlGuard([rail(deny_statements=list(keywords))])


NO_DESTRUCTIVE = SqlGuard(
    [
        rail(
            "no-destructive",
            deny_statements=["DROP", "TRUNCATE", "ALTER"],
            deny_unbounded=["DELETE", "UPDATE"],
            deny_patterns=["(?i)pg_read_file"],
        )
    ]
)


def denied(guard: SqlGuard, sql: str) -> str:
    """The reason, failing the test when the statement is allowed."""
    decision = guard.check(sql)
    assert not decision.allowed, f"allowed: {sql!r}"
    assert decision.reason is not None
    return decision.reason


def allowed(guard: SqlGuard, sql: str) -> None:
    decision = guard.check(sql)
    assert decision.allowed, f"denied: {sql!r}: {decision.reason}"


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text handed to the parser, in order."""
    seen: list[str] = []

    def counting(sql: str) -> str:
        seen.append(sql)
        return parse_sql_json(sql)

    monkeypatch.setattr(module, "parse_sql_json", counting)
    return seen


# ----------------------------------------------------------------------------- the basics


def test_decision_as_event() -> None:
    assert Decision(allowed=True).as_event() == {"result": "allow"}
    deny = Decision(allowed=False, rule="no-destructive", reason="DROP is denied")
    assert deny.as_event() == {
        "result": "deny",
        "rule": "no-destructive",
        "reason": "DROP is denied",
    }


def test_no_guardrails_allows_without_parsing(parses: list[str]) -> None:
    guard = SqlGuard([])
    assert guard.check("drop table t") == Decision(allowed=True)
    assert guard.check("this is not SQL at all") == Decision(allowed=True)
    assert parses == []


def test_shell_only_guardrails_do_not_parse(parses: list[str]) -> None:
    guard = SqlGuard([rail(deny_commands=["rm -rf /*"])])
    assert guard.check("drop table t").allowed
    assert parses == []


def test_patterns_alone_do_not_parse(parses: list[str]) -> None:
    guard = SqlGuard([rail(deny_patterns=["(?i)pg_read_file"])])
    allowed(guard, "select 1")
    allowed(guard, "not sql, but no pattern matches")  # nothing needed the parser
    assert "pg_read_file" in denied(guard, "SELECT pg_read_file('/etc/passwd')")
    assert parses == []


@pytest.mark.parametrize("sql", ["", "   ", ";;", "-- just a comment", "/* drop table t */"])
def test_text_without_statements_is_allowed(sql: str) -> None:
    allowed(NO_DESTRUCTIVE, sql)


def test_the_policy_example_guardrail() -> None:
    allowed(NO_DESTRUCTIVE, "select * from orders where id = 1")
    allowed(NO_DESTRUCTIVE, "insert into t values (1)")
    allowed(NO_DESTRUCTIVE, "UPDATE orders SET state = $1 WHERE id = $2")
    assert denied(NO_DESTRUCTIVE, "drop table t") == 'DROP is denied by guardrail "no-destructive"'
    assert NO_DESTRUCTIVE.check("drop table t").rule == "no-destructive"


# ------------------------------------------------------------------------- deny_statements


KEYWORD_CASES = [
    ("DROP", "drop table t"),
    ("DROP", "DROP DATABASE prod"),
    ("DROP", "drop role alice"),
    ("DROP", "drop owned by alice"),
    ("DROP", "drop index if exists i"),
    ("DROP", "drop tablespace ts"),
    ("TRUNCATE", "truncate table t"),
    ("TRUNCATE", "TRUNCATE t, u CASCADE"),
    ("ALTER", "alter table t add column x int"),
    ("ALTER", "ALTER SYSTEM SET work_mem = '1GB'"),
    ("ALTER", "alter system reset all"),
    ("ALTER", "alter table t rename to u"),
    ("ALTER", "alter role alice superuser"),
    ("ALTER", "alter table t owner to bob"),
    ("ALTER", "alter default privileges grant select on tables to bob"),
    ("ALTER", "alter database app set search_path = evil"),
    ("CREATE", "create table t (x int)"),
    ("CREATE", "create index on t (x)"),
    ("CREATE", "create view v as select 1"),
    ("CREATE", "create table x as select 1"),
    ("CREATE", "create materialized view m as select 1"),
    ("CREATE", "create or replace function f() returns int language sql as 'select 1'"),
    ("CREATE", "create role eve login superuser"),
    ("CREATE", "create extension dblink"),
    ("CREATE", "select * into x from t"),
    ("CREATE", "select * into x from t union select * from u"),
    ("CREATE", "import foreign schema s from server srv into public"),
    ("GRANT", "grant select on t to bob"),
    ("GRANT", "grant admin to bob"),
    ("GRANT", "alter default privileges grant select on tables to bob"),
    ("REVOKE", "revoke select on t from bob"),
    ("REVOKE", "revoke admin from bob"),
    ("DELETE", "delete from t where id = 1"),
    ("UPDATE", "update t set x = 1 where id = 1"),
    ("UPDATE", "insert into t values (1) on conflict (id) do update set x = 1"),
    ("UPDATE", "merge into t using s on t.id = s.id when matched then update set x = 1"),
    ("DELETE", "merge into t using s on t.id = s.id when matched then delete"),
    ("INSERT", "insert into t values (1)"),
    ("INSERT", "merge into t using s on t.id = s.id when not matched then insert values (1)"),
    ("MERGE", "merge into t using s on t.id = s.id when matched then do nothing"),
    ("COPY", "copy t to stdout"),
    ("COPY", "copy t from program 'curl evil'"),
    ("DO", "do $$ begin perform 1; end $$"),
    ("EXECUTE", "execute p(1)"),
    ("CALL", "call p()"),
    ("SET", "set role admin"),
    ("SET", "SET search_path = evil, public"),
    ("SET", "set local statement_timeout = 0"),
    ("SET", "set session authorization alice"),
    ("SET", "set transaction read write"),
    ("SET", "set constraints all deferred"),
    ("SET", "reset role"),
    ("RESET", "reset all"),
    ("SHOW", "show search_path"),
    ("VACUUM", "vacuum full t"),
    ("ANALYZE", "analyze t"),
    ("CLUSTER", "cluster t using i"),
    ("REINDEX", "reindex table t"),
    ("LOCK", "lock table t in access exclusive mode"),
    ("LOAD", "load 'plugin'"),
    ("CHECKPOINT", "checkpoint"),
    ("COMMENT", "comment on table t is 'x'"),
    ("SECURITY", "security label on table t is 'x'"),
    ("LISTEN", "listen channel"),
    ("NOTIFY", "notify channel"),
    ("UNLISTEN", "unlisten *"),
    ("DISCARD", "discard all"),
    ("REFRESH", "refresh materialized view m"),
    ("REASSIGN", "reassign owned by alice to bob"),
    ("PREPARE", "prepare p as select 1"),
    ("PREPARE", "prepare transaction 'x'"),
    ("DEALLOCATE", "deallocate all"),
    ("DECLARE", "declare c cursor for select 1"),
    ("FETCH", "fetch next from c"),
    ("MOVE", "move next in c"),
    ("CLOSE", "close c"),
    ("EXPLAIN", "explain select 1"),
    ("BEGIN", "begin"),
    ("BEGIN", "start transaction"),
    ("START", "begin"),
    ("COMMIT", "commit"),
    ("COMMIT", "end"),
    ("END", "commit"),
    ("ROLLBACK", "rollback"),
    ("ROLLBACK", "abort"),
    ("ROLLBACK", "rollback to savepoint s"),
    ("SAVEPOINT", "savepoint s"),
    ("RELEASE", "release savepoint s"),
    ("SELECT", "select 1"),
    ("SELECT", "insert into t select * from u"),
    ("VALUES", "values (1), (2)"),
]


@pytest.mark.parametrize(("keyword", "sql"), KEYWORD_CASES)
def test_each_keyword_denies_its_statements(keyword: str, sql: str) -> None:
    reason = denied(deny_statements(keyword), sql)
    assert 'guardrail "g"' in reason
    assert module._ALIASES.get(keyword, keyword) in reason  # START is spelled BEGIN


@pytest.mark.parametrize(
    ("keyword", "sql"),
    [
        ("SET", "alter system set work_mem = '1GB'"),  # ALTER SYSTEM, not a session SET
        ("RESET", "set role admin"),  # RESET is a kind of SET, not the other way round
        ("SELECT", "insert into t values (1)"),  # a VALUES list is not a SELECT
        ("DROP", "alter table t drop column x"),  # that is ALTER
        ("CREATE", "select create_table()"),
        ("DELETE", "truncate t"),  # TRUNCATE is its own keyword
        ("ANALYZE", "explain analyze select 1"),  # an EXPLAIN option, not the ANALYZE command
        ("GRANT", "revoke select on t from bob"),
        ("UPDATE", "insert into t values (1) on conflict do nothing"),
        ("UPDATE", "select * from t for update"),
    ],
)
def test_keywords_do_not_overreach(keyword: str, sql: str) -> None:
    allowed(deny_statements(keyword), sql)


def test_keywords_in_comments_strings_and_names_are_not_statements() -> None:
    guard = deny_statements("DROP", "DELETE", "TRUNCATE")
    allowed(guard, "/* DROP */ select 1")
    allowed(guard, "-- drop table t\nselect 1")
    allowed(guard, "select 'drop table t; delete from u'")
    allowed(guard, 'select 1 as "DROP TABLE t"')
    allowed(guard, "select * from drop_log where action = 'truncate'")
    allowed(guard, "select $x$ drop table t $x$")


def test_comments_are_visible_to_patterns() -> None:
    guard = SqlGuard([rail(deny_statements=["DROP"], deny_patterns=[r"(?i)\bdrop\b"])])
    reason = denied(guard, "/* DROP */ select 1")
    assert reason == 'pattern \'(?i)\\bdrop\\b\' of guardrail "g" matched "DROP"'


def test_keywords_are_case_insensitive() -> None:
    guard = SqlGuard([rail(deny_statements=["drop", "Truncate"])])
    assert denied(guard, "DrOp TaBlE t") == 'DROP is denied by guardrail "g"'
    assert denied(guard, "truncate table t") == 'TRUNCATE is denied by guardrail "g"'
    assert denied(guard, "TRUNCATE t") == 'TRUNCATE is denied by guardrail "g"'


def test_alter_system_and_drop_database() -> None:
    assert (
        denied(NO_DESTRUCTIVE, "ALTER SYSTEM SET shared_preload_libraries = 'evil'")
        == 'ALTER SYSTEM is denied by guardrail "no-destructive"'
    )
    assert (
        denied(NO_DESTRUCTIVE, "drop database prod")
        == 'DROP is denied by guardrail "no-destructive"'
    )


def test_counts_as_names_both_the_statement_and_the_keyword() -> None:
    assert (
        denied(deny_statements("CREATE"), "select * into x from t")
        == 'SELECT INTO counts as CREATE, which guardrail "g" denies'
    )
    assert (
        denied(deny_statements("SET"), "reset role")
        == 'RESET counts as SET, which guardrail "g" denies'
    )
    assert (
        denied(deny_statements("START"), "start transaction")
        == 'START TRANSACTION counts as BEGIN, which guardrail "g" denies'
    )


def test_unknown_keyword_is_refused_when_the_guard_is_built() -> None:
    with pytest.raises(ValueError, match=r'guardrail "g": deny_statements has DELET'):
        deny_statements("DROP", "DELET")


def test_every_keyword_is_one_a_policy_file_accepts() -> None:
    for keyword in STATEMENT_KEYWORDS:
        assert re.fullmatch(r"[A-Z]+", keyword), keyword
        rail(deny_statements=[keyword])  # the document model takes it


def test_every_statement_node_of_pglast_has_a_keyword() -> None:
    """A pglast upgrade that brings a new statement type fails here until it is mapped."""
    statements = {
        name
        for name, cls in vars(pglast.ast).items()
        if inspect.isclass(cls) and issubclass(cls, pglast.ast.Node) and name.endswith("Stmt")
    }
    unmapped = statements - set(module._POSSIBLE) - module._NOT_PARSED
    assert not unmapped


def test_a_statement_type_without_a_keyword_is_denied_by_any_statement_rule(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Fail closed: a node name the table lacks (as after a pglast upgrade) is denied."""
    monkeypatch.delitem(module._POSSIBLE, "ListenStmt")
    monkeypatch.delitem(module._HANDLERS, "ListenStmt")
    guard = deny_statements("DROP")
    assert denied(guard, "listen channel") == (
        'ListenStmt is a statement type this guard has no keyword for, and guardrail "g"'
        " denies statements by type"
    )
    allowed(SqlGuard([rail(deny_unbounded=["DELETE"])]), "listen channel")


# ------------------------------------------------------------------- anywhere in the tree


@pytest.mark.parametrize(
    ("sql", "context"),
    [
        ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "inside SELECT"),
        (
            "with d as (delete from t where id = 1 returning *) insert into u select * from d",
            "inside INSERT",
        ),
        ("EXPLAIN ANALYZE DELETE FROM t WHERE id = 1", "inside EXPLAIN"),
        ("explain delete from t where id = 1", "inside EXPLAIN"),
        ("PREPARE p AS DELETE FROM t WHERE id = $1", "inside PREPARE"),
        ("copy (delete from t where id = 1 returning *) to stdout", "inside COPY"),
        ("create rule r as on insert to t do instead delete from u where id = 1", "inside CREATE"),
        (
            "create function f() returns void begin atomic delete from t where id = 1; end",
            "inside CREATE",
        ),
        (
            "select * from (select 1) s, lateral (select 1) l; delete from t where id = 1",
            "statement 2 of 2",
        ),
    ],
)
def test_nested_statements_are_found(sql: str, context: str) -> None:
    reason = denied(deny_statements("DELETE"), sql)
    assert reason == f'DELETE is denied by guardrail "g" ({context})'


def test_create_table_as_and_select_into_are_create() -> None:
    guard = deny_statements("CREATE")
    assert denied(guard, "create table x as select * from t") == 'CREATE is denied by guardrail "g"'
    assert "SELECT INTO counts as CREATE" in denied(guard, "select * into x from t")


def test_multi_statement_string_names_the_denied_statement() -> None:
    reason = denied(NO_DESTRUCTIVE, "select 1; drop table t")
    assert reason == 'DROP is denied by guardrail "no-destructive" (statement 2 of 2)'
    reason = denied(NO_DESTRUCTIVE, "select 1; select 2; truncate t; drop table u")
    assert reason == 'TRUNCATE is denied by guardrail "no-destructive" (statement 3 of 4)'
    allowed(NO_DESTRUCTIVE, "select 1; select 2;")


def test_do_block_body_is_opaque_but_do_itself_is_a_keyword() -> None:
    block = "DO $body$ BEGIN EXECUTE 'DROP TABLE t'; DROP TABLE u; END $body$"
    allowed(deny_statements("DROP"), block)  # PL/pgSQL is not read: deny DO to close this
    assert denied(deny_statements("DROP", "DO"), block) == 'DO is denied by guardrail "g"'
    guard = SqlGuard([rail(deny_statements=["DROP"], deny_patterns=[r"(?i)\bdrop\s+table\b"])])
    assert "matched" in denied(guard, block)


# -------------------------------------------------------------------------- deny_unbounded


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("DELETE FROM t", "DELETE without WHERE"),
        ("delete from only t returning *", "DELETE without WHERE"),
        ("UPDATE t SET x=1", "UPDATE without WHERE"),
        ("update t set x = u.x from u", "UPDATE without WHERE"),
        ("delete from t where true", "DELETE with a WHERE that names no column"),
        ("delete from t where 1=1", "DELETE with a WHERE that names no column"),
        ("update t set x = 1 where 'a' = 'a' or false", "UPDATE with a WHERE that names no column"),
        ("delete from t where $1", "DELETE with a WHERE that names no column"),
        ("delete from t where now() > '2000-01-01'", "DELETE with a WHERE that names no column"),
        (
            "merge into t using (select 1) s on true when matched then delete",
            "MERGE … THEN DELETE with an ON condition that names no column",
        ),
    ],
)
def test_unbounded_statements_are_denied(sql: str, reason: str) -> None:
    assert denied(NO_DESTRUCTIVE, sql) == f'{reason} is denied by guardrail "no-destructive"'


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM t WHERE id = 1",
        "delete from t where id = any($1)",
        "update t set x = 1 where id in (select id from u)",
        "delete from t using u where t.id = u.id",
        "DELETE FROM t WHERE CURRENT OF c",
        "update t set x = 1 where current of c",
        "merge into t using s on t.id = s.id when matched then delete",
        "merge into t using s on true when matched and t.x > 0 then delete",
        "merge into t using s on true when not matched then insert values (1)",
        "select truncate_log()",
    ],
)
def test_bounded_statements_are_allowed(sql: str) -> None:
    allowed(NO_DESTRUCTIVE, sql)


def test_unbounded_inside_a_cte_and_explain() -> None:
    assert denied(NO_DESTRUCTIVE, "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d") == (
        'DELETE without WHERE is denied by guardrail "no-destructive" (inside SELECT)'
    )
    assert denied(NO_DESTRUCTIVE, "explain analyze update t set x = 1") == (
        'UPDATE without WHERE is denied by guardrail "no-destructive" (inside EXPLAIN)'
    )


def test_unbounded_applies_only_to_the_kinds_listed() -> None:
    guard = SqlGuard([rail(deny_unbounded=["DELETE"])])
    denied(guard, "delete from t")
    allowed(guard, "update t set x = 1")
    allowed(guard, "drop table t")


# ------------------------------------------------------------------------- deny_patterns


def test_pattern_searches_the_whole_text_as_sent() -> None:
    assert denied(NO_DESTRUCTIVE, "select 1;\n SELECT PG_READ_FILE('/etc/passwd')") == (
        'pattern \'(?i)pg_read_file\' of guardrail "no-destructive" matched "PG_READ_FILE"'
    )


def test_long_matches_are_shortened_in_the_reason() -> None:
    guard = SqlGuard([rail(deny_patterns=["x+"])])
    reason = denied(guard, "select '" + "x" * 500 + "'")
    assert reason.endswith('matched "' + "x" * 59 + '…"')


# ------------------------------------------------------------------------------- ordering


def test_first_guardrail_in_order_wins() -> None:
    first = rail("first", deny_patterns=["(?i)drop"])
    second = rail("second", deny_statements=["DROP"])
    assert SqlGuard([first, second]).check("drop table t").rule == "first"
    assert SqlGuard([second, first]).check("drop table t").rule == "second"


def test_within_a_guardrail_the_first_offending_statement_is_named() -> None:
    guard = SqlGuard([rail(deny_statements=["DROP"], deny_unbounded=["DELETE"])])
    assert denied(guard, "delete from t; drop table u").startswith("DELETE without WHERE")
    assert denied(guard, "drop table u; delete from t").startswith("DROP is denied")


# ---------------------------------------------------------------------------- unparseable


def test_unparseable_text_is_denied_by_default() -> None:
    decision = NO_DESTRUCTIVE.check("selec * frm t")
    assert not decision.allowed
    assert decision.rule == UNPARSEABLE_RULE
    assert decision.reason == (
        'the statement could not be parsed as PostgreSQL, so guardrail "no-destructive" cannot'
        ' check it: syntax error at or near "selec"'
    )
    assert decision.as_event()["rule"] == "(unparseable)"


def test_unparseable_text_can_be_allowed() -> None:
    guard = SqlGuard(
        [rail(deny_statements=["DROP"], deny_patterns=["(?i)pg_read_file"])],
        unparseable="allow",
    )
    allowed(guard, "selec * frm t")
    assert "pg_read_file" in denied(guard, "selec pg_read_file('x')")  # patterns still apply
    with pytest.raises(ValueError, match="unparseable"):
        SqlGuard([], unparseable="maybe")  # type: ignore[arg-type]


def test_a_pattern_of_an_earlier_guardrail_is_decided_before_parsing(
    parses: list[str],
) -> None:
    guard = SqlGuard([rail("p", deny_patterns=["frob"]), rail("s", deny_statements=["DROP"])])
    assert guard.check("frob the database").rule == "p"
    assert parses == []
    assert guard.check("frobnicate? no: gibberish").rule == "p"
    assert guard.check("gibberish").rule == UNPARSEABLE_RULE


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("select 1\x00; drop table t", "the text contains a NUL character"),
        ("select '\udc80'", "the text is not valid UTF-8"),
        ("select 'unterminated", "unterminated quoted string"),
    ],
)
def test_text_the_parser_would_misread_is_unparseable(sql: str, message: str) -> None:
    decision = NO_DESTRUCTIVE.check(sql)
    assert decision.rule == UNPARSEABLE_RULE
    assert message in (decision.reason or "")


def test_deep_nesting_is_unparseable_only_when_it_must_be_read() -> None:
    deep_select = "select " + "(select " * 600 + "1" + ")" * 600
    allowed(NO_DESTRUCTIVE, deep_select)  # no node in it could be denied: never decoded
    deep_delete = "with d as (delete from t returning 1) " + deep_select
    decision = NO_DESTRUCTIVE.check(deep_delete)
    assert decision.rule == UNPARSEABLE_RULE
    assert "nested too deeply" in (decision.reason or "")


# ---------------------------------------------------- standard_conforming_strings = off


def test_backslash_quote_cannot_hide_a_statement() -> None:
    """With standard_conforming_strings off (any session may SET it), the server reads
    'a\\' ; select ' as one literal and runs the DROP; libpg_query alone reads two SELECTs."""
    sql = r"select 'a\' ; select '; drop table t; --'"
    assert denied(NO_DESTRUCTIVE, sql) == (
        'DROP is denied by guardrail "no-destructive"'
        " (statement 2 of 2, as read with standard_conforming_strings off)"
    )
    sql = r"select N'x\' ; select '; delete from t; --'"
    assert "DELETE without WHERE" in denied(NO_DESTRUCTIVE, sql)


@pytest.mark.parametrize(
    "sql",
    [
        r"select 'C:\temp\new' as path",
        r"select * from t where name like 'a\_b%'",
        r"select E'it\'s' ; select 'x'",
        r"select $$a\$$",
        r"select 'a\\' ; select 2",
        r"select 'a\'",  # a syntax error with the setting off: nothing would run
    ],
)
def test_backslashes_in_harmless_text_are_allowed(sql: str) -> None:
    allowed(NO_DESTRUCTIVE, sql)


def testnonstandard_reading_spells_the_other_reading() -> None:
    read = module.nonstandard_reading
    assert read("select 'no backslash'") is None
    assert read(r"select E'a\'b'") is None
    assert read(r"select 'a\b'") == r"select  E'a\b'"
    assert read(r"select N'a\' ; select '; --'") == r"select N E'a\' ; select '; --'"
    # the second literal starts inside the first one as the server reads it: left alone
    assert read(r"select 'a\' ; select 'b\' ; --'") == r"select  E'a\' ; select 'b\' ; --'"
    # each line's literal changes its extent, so what follows it is read afresh
    two_lines = "select 1\n, " + r"'\'--'" + "\n, " + r"'\'--'"
    assert read(two_lines) == two_lines.replace(r"'\'", r" E'\'")


def test_too_many_rereads_are_unparseable() -> None:
    # read as sent: a literal and a comment per line; with the setting off: one literal
    line = "\n, " + r"'\'--'"
    allowed(NO_DESTRUCTIVE, "select 1" + line * module._MAX_REREADS)
    decision = NO_DESTRUCTIVE.check("select 1" + line * (module._MAX_REREADS + 1))
    assert decision.rule == UNPARSEABLE_RULE
    assert "standard_conforming_strings" in (decision.reason or "")


# ------------------------------------------------------------------ caching and fast path


def test_repeated_text_is_decided_once(parses: list[str]) -> None:
    guard = SqlGuard([rail(deny_statements=["DROP"])])
    first = guard.check("select * from t where id = $1")
    assert guard.check("select * from t where id = $1") is first
    assert len(parses) == 1
    long_text = "select 1 " + " " * module._CACHE_MAX_CHARS
    guard.check(long_text)
    guard.check(long_text)
    assert len(parses) == 3  # too long to keep


def test_without_a_cache() -> None:
    guard = SqlGuard([rail(deny_statements=["DROP"])], cache_size=0)
    assert denied(guard, "drop table t") == 'DROP is denied by guardrail "g"'


CORPUS = [
    "select 1",
    "SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id WHERE o.state = $1",
    "select * into x from t",
    "select 1 union select * into x from t",
    "insert into t values (1) on conflict (id) do update set x = 1",
    "insert into t select * from u",
    "values (1)",
    "update t set x = 1",
    "update t set x = 1 where id = 2",
    "delete from t where 1 = 1",
    "with d as (delete from t returning *) select * from d",
    "explain analyze delete from t",
    "merge into t using s on true when matched then delete",
    "merge into t using s on t.id = s.id when matched then update set x = 1",
    "alter default privileges revoke select on tables from bob",
    "grant admin to bob",
    "set role admin; reset all; show search_path",
    "begin; commit; start transaction; rollback; end; abort",
    "vacuum t; analyze t; fetch next from c; move next in c",
    "create table x as select 1; drop table x; truncate y",
    r"select 'a\' ; select '; drop table t; --'",
    "do $$ begin end $$; call p(); execute q",
    *(sql for _keyword, sql in KEYWORD_CASES),
]


@pytest.mark.parametrize(
    "keywords",
    [
        sorted(STATEMENT_KEYWORDS),
        ["CREATE"],
        ["UPDATE"],
        ["GRANT", "SET"],
        ["DROP", "TRUNCATE", "ALTER"],
        [],
    ],
)
def test_fast_path_decides_like_a_full_read(keywords: list[str]) -> None:
    for unbounded in ([], ["DELETE", "UPDATE"]):
        guard = SqlGuard([rail(deny_statements=keywords, deny_unbounded=unbounded)])
        for sql in CORPUS:
            assert guard._decide(sql) == guard._decide(sql, prefilter=False), sql
