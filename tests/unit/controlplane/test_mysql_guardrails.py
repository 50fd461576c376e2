"""MySQL guardrails: the PostgreSQL rule kinds on MySQL's grammar, and the readings that could
hide a statement from them (executable comments, NO_BACKSLASH_ESCAPES, PREPARE FROM)."""

from __future__ import annotations

import pytest

from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import Decision
from controlplane.policy.mysql_guardrails import MysqlGuard
from controlplane.policy.mysql_sql import (
    Unreadable,
    kills_query,
    loads_local,
    split,
    split_agreed,
)

GUARD = MysqlGuard(
    [
        Guardrail(name="no-drop", deny_statements=["DROP", "TRUNCATE"]),
        Guardrail(name="bounded", deny_unbounded=["DELETE", "UPDATE"]),
        Guardrail(name="no-outfile", deny_patterns=[r"(?i)into\s+outfile"]),
    ]
)


@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("DROP TABLE t", "no-drop"),
        ("truncate t", "no-drop"),
        ("DELETE FROM t", "bounded"),
        ("UPDATE t SET a = 1 WHERE 1 = 1", "bounded"),
        ("WITH x AS (SELECT 1) DELETE FROM t", "bounded"),
        ("SELECT 1 /*! ; DROP TABLE t */", "no-drop"),
        ("SELECT 1 /*M!100000 ; DROP TABLE t */", "no-drop"),
        ("SELECT 'x\\' ; DROP TABLE t; -- '", "no-drop"),
        ("PREPARE s FROM 'DROP TABLE t'", "no-drop"),
        ("PREPARE s FROM @text", "no-drop"),
        ("SELECT * FROM t INTO OUTFILE '/tmp/x'", "no-outfile"),
        ("SELECT 'unterminated", "(unparseable)"),
        # NO_BACKSLASH_ESCAPES runs SELECT, then DROP, then fails on the unterminated string.
        ("SELECT 'a\\'; DROP TABLE t; SELECT 'b", "(unparseable)"),
        # ANSI_QUOTES: "\" is an alias, and the DROP a statement.
        ('SELECT \'\\\'"\' AS "\\"; DROP TABLE t; -- "', "no-drop"),
        # A version-gated comment the server skips (its version is above the server's, or
        # MySQL's 50700-99999 on MariaDB): what it hides is not there for the server.
        ("DELETE FROM t /*!999999 WHERE id = 1 */", "bounded"),
        ("UPDATE t SET a = NULL /*M!999999 WHERE id = 1 */", "bounded"),
        ("SELECT 1 /*!999999 ' */; DROP TABLE t; -- ' */", "no-drop"),
        # Skipped, it may hold one nested comment, and ends at the `*/` after that one's.
        ("DELETE FROM t /*!999999 /* */ WHERE id = 1 -- */", "bounded"),
        # Run one, skip another: every combination is read.
        ("DELETE FROM t /*!999999 WHERE id = 1 */ /*!10000 */", "bounded"),
        # More version-gated comments than every combination of is read.
        ("SELECT 1 " + "/*!40101 */ " * 6, "(unparseable)"),
    ],
)
def test_denied(sql: str, rule: str) -> None:
    decision = GUARD.check(sql)
    assert not decision.allowed
    assert decision.rule == rule, decision.reason


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        "DELETE FROM t WHERE id = 3",
        "UPDATE t SET a = 1 WHERE id IN (SELECT id FROM u)",
        "SELECT 'DROP TABLE t'",
        "SELECT 1 /* DROP TABLE t */",
        "SELECT 'it\\'s'",
        "PREPARE s FROM 'SELECT ?'",
        "SHOW TABLES",
        # mysqldump's own: run or skipped, each reading is harmless.
        "/*!40101 SET @OLD_CHARACTER_SET_CLIENT=@@CHARACTER_SET_CLIENT */",
        "DELETE FROM t WHERE id = 1 /*!999999 AND a = 2 */",
    ],
)
def test_allowed(sql: str) -> None:
    assert GUARD.check(sql).allowed, GUARD.check(sql).reason


def test_a_guard_without_rules_allows_even_unreadable_text() -> None:
    assert MysqlGuard([]).check("SELECT 'unterminated").allowed


def test_split_keeps_each_statements_text() -> None:
    pieces = split("select 1; DELETE FROM t WHERE a = ';' ;\n KILL QUERY 7 ;")
    assert [p.text for p in pieces] == ["select 1", "DELETE FROM t WHERE a = ';'", "KILL QUERY 7"]
    assert [p.keyword for p in pieces] == ["SELECT", "DELETE", "KILL"]
    assert pieces[2].kill_query
    assert split("LOAD DATA LOCAL INFILE 'f' INTO TABLE t")[0].load_local
    assert not split("LOAD DATA INFILE 'f' INTO TABLE t")[0].load_local


def test_a_comment_in_front_of_a_statement_is_part_of_its_text() -> None:
    pieces = split("/* app=billing */ SELECT 1; -- why\n /*+ hint */ SELECT 2 ;")
    assert [p.text for p in pieces] == [
        "/* app=billing */ SELECT 1",
        "-- why\n /*+ hint */ SELECT 2",
    ]
    assert [p.keyword for p in pieces] == ["SELECT", "SELECT"]


# What the gateway decides and records is each statement of split_agreed (or the whole text,
# when it returns None): an executable comment in front of a statement's first token, or
# alone between two separators, is code the server runs.
@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("/*!50000 TRUNCATE */ t", "no-drop"),
        ("/*!50000 DROP TABLE */ t", "no-drop"),
        ("SELECT 1; /*!50000 DROP TABLE */ t", "no-drop"),
        ("/* a */ /*M!100000 DELETE FROM t WHERE */ 1 = 1", "bounded"),
        ("SELECT 1; /*!50000 DROP TABLE t */; SELECT 2", "no-drop"),
        ("SELECT 1; /*!50000 DROP TABLE t */", "no-drop"),
    ],
)
def test_an_executable_comment_before_a_statement_is_decided_with_it(sql: str, rule: str) -> None:
    pieces = split_agreed(sql)
    decisions = [GUARD.check(sql)] if pieces is None else [GUARD.check(p.text) for p in pieces]
    refused = [d for d in decisions if not d.allowed]
    assert refused and refused[0].rule == rule, decisions


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'x\\' ; DROP TABLE t; -- '",  # one statement, or three under NO_BACKSLASH_ESCAPES
        "SELECT 'a\\'; DROP TABLE t; SELECT 'b",  # the second reading cannot be read
        "SELECT 1 /*! ; DELETE FROM t */",  # the comment is code to the server
        "SELECT 1 /*!50700 ; SELECT 2 */; SELECT 3",
        'SELECT "a\\"; SELECT 2; -- "',  # a string, or an identifier under ANSI_QUOTES
        # One statement to the server, `;` and all: recorded whole.
        "BEGIN NOT ATOMIC SELECT 1; SELECT 2; END",
        "CREATE PROCEDURE p() BEGIN SELECT 1; END",
    ],
)
def test_texts_whose_readings_split_differently_are_not_split(sql: str) -> None:
    assert split_agreed(sql) is None


def test_texts_whose_readings_agree_are_split() -> None:
    sql = "SELECT 'a\\\\b'; SELECT 'c''d' ; SELECT /*!40001 SQL_NO_CACHE */ 1"
    pieces = split_agreed(sql)
    assert pieces is not None
    assert [p.text for p in pieces] == [p.text for p in split(sql)]
    assert len(pieces) == 3


@pytest.mark.parametrize(
    ("sql", "sensitive"),
    [
        ("SELECT '中\\\\'; SELECT '; DROP TABLE t; -- '", True),
        ("SELECT 1 FROM `表`", True),
        # Under MSSQL a bracket is a quote: GBK taking `]` in moves where `[中]` ends.
        ("SELECT 1 AS [中]; SELECT ']; DROP TABLE t; -- '", True),
        ("SELECT 1 AS [中 ]", False),
        ("SELECT '中 \\\\'", False),
        ("SELECT 'a\\\\'", False),
        ("SELECT '中'", False),
    ],
)
def test_a_non_ascii_character_before_a_backslash_or_backtick(sql: str, sensitive: bool) -> None:
    assert (split_agreed(sql) is None) is sensitive
    decision = GUARD.check(sql)
    assert decision.allowed is not sensitive
    if sensitive:
        assert "GBK" in decision.reason


def _decisions(sql: str) -> list[Decision]:
    """What the inspector decides for one COM_QUERY text: each statement, or the whole."""
    try:
        pieces = split_agreed(sql)
    except Unreadable:
        pieces = None
    return [GUARD.check(sql)] if pieces is None else [GUARD.check(p.text) for p in pieces]


# Texts the server reads otherwise than the tokenizer did, each hiding a denied statement.
@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        # A quote in a line comment is no string: the /*! after it is code.
        ("SELECT 1; -- '\n/*!50000 DROP TABLE t */", "no-drop"),
        ("SELECT 1; # '\n/*!50000 DELETE FROM t */", "bounded"),
        ('SELECT 1; --\t"\n/*M!100000 TRUNCATE t */', "no-drop"),
        # Under NO_BACKSLASH_ESCAPES or ANSI_QUOTES the string ends earlier, and the /*! that
        # the default reading keeps in it is code.
        ("SELECT 'a\\'; /*!50000 DROP TABLE t */ -- '", "no-drop"),
        ('SELECT 1 AS "a\\"; /*!50000 DROP TABLE t */ -- "', "no-drop"),
        ("SELECT 'a\\' /*!50000 , 1; DELETE FROM t; */ -- '", "bounded"),
        # `--` before a non-ASCII space is two minus signs to MariaDB, whose lexer reads the
        # space as part of an identifier; it is no comment to the tokenizer either now.
        ("SELECT 2 --\u00a0x FROM (SELECT 1 AS \u00a0x) d; DROP TABLE t", "no-drop"),
        ("SELECT 2 --\u3000x FROM (SELECT 1 AS \u3000x) d; DELETE FROM t", "bounded"),
        # `--` right before a marker: blanked, the marker would make a comment of the rest
        # of the line, where the server reads two minus signs.
        ("SELECT 2 --/*!*/1; DROP TABLE t", "(unparseable)"),
        ("SELECT 2 --/*!999999 x */1; DELETE FROM t", "(unparseable)"),
        ("SELECT 2 /*!50000 --*/ 1; TRUNCATE t", "(unparseable)"),
        # Under sql_mode MSSQL `[…]` is an identifier (`]]` in it a `]`): quotes in it are
        # nothing, and a DROP the other readings keep in a string is a statement.
        ("SELECT 1 AS [a']; DROP TABLE t; -- ']", "no-drop"),
        ('SELECT 1 AS [a"]; TRUNCATE t; -- "]', "no-drop"),
        ("SELECT 1 AS [a]] -- ]; /*!50000 DROP TABLE t */", "no-drop"),
        # SET STATEMENT … FOR runs the statement after FOR.
        ("SET STATEMENT max_statement_time = 100 FOR DROP TABLE t", "no-drop"),
        ("SELECT 1; SET STATEMENT sql_mode = '' FOR DELETE FROM t", "bounded"),
        ("SET STATEMENT a = (1), b = 2 FOR SET STATEMENT c = 1 FOR TRUNCATE t", "no-drop"),
        ("SET STATEMENT a = 1 FOR EXECUTE IMMEDIATE 'DROP TABLE t'", "no-drop"),
        ("SET STATEMENT a = 1 FOR /*!50000 TRUNCATE */ t", "no-drop"),
        ("SET STATEMENT max_statement_time = 'for' IS NOT NULL FOR DROP TABLE t", "no-drop"),
        ("SET STATEMENT max_statement_time = `for` IS NULL FOR DELETE FROM t", "bounded"),
        # MariaDB drops the table it replaces, rows and all.
        ("CREATE OR REPLACE TABLE t (x INT)", "no-drop"),
        ("CREATE OR REPLACE TEMPORARY TABLE t (x INT)", "no-drop"),
        ("CREATE /*!50000 OR REPLACE */ TABLE t AS SELECT 1", "no-drop"),
        ("CREATE OR REPLACE DATABASE app", "no-drop"),
        # EXECUTE IMMEDIATE runs its text: read like PREPARE's, refused when not a literal.
        ("EXECUTE IMMEDIATE 'DROP TABLE t'", "no-drop"),
        ("EXECUTE IMMEDIATE 'DELETE FROM t' USING 1", "bounded"),
        ("EXECUTE IMMEDIATE CONCAT('DROP ', 'TABLE t')", "no-drop"),
        ("EXECUTE IMMEDIATE @text", "no-drop"),
        # Compound statements, which MariaDB runs outside stored programs, whole.
        ("BEGIN NOT ATOMIC DROP TABLE t; END", "(unparseable)"),
        ("IF 1 THEN DELETE FROM t; END IF", "(unparseable)"),
        ("CASE WHEN 1 THEN UPDATE t SET a = 1; END CASE", "(unparseable)"),
        ("FOR i IN 1..1 DO TRUNCATE t; END FOR", "(unparseable)"),
        ("WHILE 1 DO DROP TABLE t; END WHILE", "(unparseable)"),
        ("REPEAT DROP TABLE t; UNTIL 1 END REPEAT", "(unparseable)"),
        ("LOOP DROP TABLE t; END LOOP", "(unparseable)"),
        ("lbl: LOOP DROP TABLE t; END LOOP", "(unparseable)"),
        # sql_mode ORACLE: a BEGIN or DECLARE block.
        ("BEGIN DROP TABLE t; END", "(unparseable)"),
        ("DECLARE x INT; BEGIN DELETE FROM t; END", "(unparseable)"),
        ("<<lbl>> BEGIN DROP TABLE t; END", "(unparseable)"),
        ("/*!50000 BEGIN NOT ATOMIC */ DROP TABLE t; END", "(unparseable)"),
    ],
)
def test_a_text_the_server_reads_otherwise_is_refused(sql: str, rule: str) -> None:
    refused = [d for d in _decisions(sql) if not d.allowed]
    assert refused and refused[0].rule == rule, refused


@pytest.mark.parametrize(
    "sql",
    [
        "BEGIN",
        "BEGIN WORK",
        "SELECT IF(a, 1, 2) FROM t",
        "EXECUTE IMMEDIATE 'SELECT ?' USING 1",
        "SELECT 1 -- '\n, 2",
        'SELECT 1 # "\n, 2',
        "SELECT 5 --1",
        "SELECT '--\u00a0'",
        "SELECT 2 - -/*!50000*/1",
        "SELECT 2 --/* x */1",
        "CREATE OR REPLACE VIEW v AS SELECT 1",
        "SET STATEMENT max_statement_time = 1 FOR DELETE FROM t WHERE id = 1",
        "SET @a = 1",
        "SELECT JSON_EXTRACT('[1]', '$[0]')",
        "SELECT 1 AS [a]]b]",
        "CREATE TABLE IF NOT EXISTS t (x INT)",
    ],
)
def test_allowed_around_those(sql: str) -> None:
    assert all(d.allowed for d in _decisions(sql))


# A stored routine runs its body when it is called or fires, where the guard sees only CALL.
@pytest.mark.parametrize(
    ("sql", "rule"),
    [
        ("CREATE PROCEDURE p() DROP TABLE t", "no-drop"),
        ("CREATE DEFINER=CURRENT_USER() PROCEDURE p() BEGIN TRUNCATE t; END", "no-drop"),
        (
            "CREATE OR REPLACE FUNCTION f() RETURNS INT BEGIN DELETE FROM t; RETURN 1; END",
            "(unparseable)",
        ),
        ("CREATE TRIGGER tr BEFORE INSERT ON t FOR EACH ROW DELETE FROM u", "(unparseable)"),
        ("CREATE EVENT e ON SCHEDULE AT CURRENT_TIMESTAMP DO DROP TABLE t", "no-drop"),
        ("CREATE PROCEDURE p() EXECUTE IMMEDIATE 'DROP TABLE t'", "(unparseable)"),
        ("ALTER EVENT e DO DROP TABLE t", "no-drop"),
        ("ALTER EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM t", "(unparseable)"),
        ("CREATE PROCEDURE p() PREPARE s FROM @x", "(unparseable)"),
        ("CREATE DEFINER='user'@'%' PROCEDURE p() SQL SECURITY INVOKER DROP TABLE t", "no-drop"),
        ("CREATE DEFINER=user@localhost PROCEDURE p() DROP TABLE t", "no-drop"),
        ("CREATE DEFINER='app'@'view' EVENT e ON SCHEDULE EVERY 1 DAY DO DROP TABLE t", "no-drop"),
        ("ALTER DEFINER='role' EVENT e DO DROP TABLE t", "no-drop"),
    ],
)
def test_a_routine_body_is_decided_on_create(sql: str, rule: str) -> None:
    refused = [d for d in _decisions(sql) if not d.allowed]
    assert refused and refused[0].rule == rule, refused


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TRIGGER tr BEFORE UPDATE ON t FOR EACH ROW SET NEW.a = 1",
        "CREATE PROCEDURE p() SELECT 'DROP TABLE t'",
        "CREATE TABLE event (`trigger` INT, `drop` INT)",
        "ALTER TABLE t ADD COLUMN event INT, DROP INDEX i",
        "ALTER EVENT e DISABLE",
        "CREATE VIEW v AS SELECT 1 AS procedure_name",
    ],
)
def test_routines_and_tables_without_denied_statements(sql: str) -> None:
    assert all(d.allowed for d in _decisions(sql))


@pytest.mark.parametrize(
    ("sql", "local"),
    [
        ("LOAD DATA LOCAL INFILE 'f' INTO TABLE t", True),
        ("LOAD DATA /*!50000 LOCAL */ INFILE 'f' INTO TABLE t", True),
        ("LOAD XML /*M!100000 LOCAL */ INFILE 'f' INTO TABLE t", True),
        ("LOAD DATA INFILE 'f' INTO TABLE t", False),
        ("SELECT 'LOAD DATA LOCAL'", False),
        ("LOAD DATA LOCAL INFILE 'unterminated", True),
    ],
)
def test_loads_local_in_any_reading(sql: str, local: bool) -> None:
    assert loads_local(sql) is local


def test_a_keyword_the_tokenizer_reads_as_two_words_is_named_by_its_first() -> None:
    guard = MysqlGuard([Guardrail(name="no-lock", deny_statements=["LOCK", "UNLOCK"])])
    for sql in ("LOCK TABLES t WRITE", "LOCK TABLE t WRITE", "LOCK /**/ TABLES t WRITE"):
        assert guard.check(sql).rule == "no-lock", sql
    assert guard.check("UNLOCK TABLES").rule == "no-lock"
    assert guard.check("SELECT 1 FROM t GROUP BY a").allowed


@pytest.mark.parametrize(
    ("sql", "kill"),
    [
        ("KILL QUERY 7", True),
        ("KILL /*!50000 QUERY */ 7", True),
        ("KILL HARD /*M!100000 QUERY */ 7", True),
        ("KILL 7", False),
        ("SELECT 'KILL QUERY 7'", False),
    ],
)
def test_kills_query_in_any_reading(sql: str, kill: bool) -> None:
    assert kills_query(sql) is kill


def test_every_non_ascii_space_after_two_dashes_is_two_minus_signs() -> None:
    """MariaDB's lexer reads a non-ASCII space as part of an identifier, so `--` before one
    starts no comment; the gateway's list of them must hold every one Python knows."""
    spaces = [chr(c) for c in range(0x80, 0x110000) if chr(c).isspace()]
    for space in spaces:
        pieces = split(f"SELECT 2 --{space}x; DROP TABLE t")
        assert [p.keyword for p in pieces] == ["SELECT", "DROP"], hex(ord(space))


def test_set_statement_nested_past_reading_is_unreadable_not_a_crash() -> None:
    text = "SET STATEMENT a = 1 FOR " * 600 + "DROP TABLE t"
    with pytest.raises(Unreadable):
        split(text)
    with pytest.raises(Unreadable):  # never a RecursionError
        split_agreed(text)
    decision = GUARD.check(text)
    assert not decision.allowed and decision.rule == "(unparseable)"


def test_a_where_nested_past_the_parser_is_unreadable_not_a_crash() -> None:
    text = "DELETE FROM t WHERE " + "(" * 3000 + "a = 1" + ")" * 3000
    decision = GUARD.check(text)
    assert not decision.allowed and decision.rule == "(unparseable)"
