"""How the gateway reads MySQL statement text: split into statements, and what each one is.

Read with sqlglot's MySQL dialect (tokenizer and parser). MySQL names a statement by its first
keyword (after a ``WITH`` clause, or inside ``EXPLAIN``/``ANALYZE``, which MariaDB runs), and
only ``SELECT`` nests inside another statement (subqueries, ``INSERT … SELECT``), so the keywords
of a statement come from its tokens and need no full parse; only the WHERE of a DELETE or an
UPDATE does. Two readings the server could make differently are taken into account:

* executable comments (``/*! … */``, ``/*!50700 … */``, MariaDB's ``/*M! … */``) are code to
  a server whose version is at least theirs and a plain comment to any other (MariaDB also
  skips MySQL's ``/*!50700`` to ``/*!99999``): each is read both ways, every combination of them
  (``code_reading``, ``readings``), up to ``MAX_VERSIONED`` of them in one text;
* with ``sql_mode`` NO_BACKSLASH_ESCAPES a backslash does not escape a quote, so text with a
  backslash is read both ways (``readings``), and ANSI_QUOTES; where strings end, and so which
  ``/*!`` are executable comments, is found in each of those on its own (``_scan``), past
  line comments (``#``, ``-- ``), whose quotes open no string;
* a non-ASCII space (U+00A0, U+3000 …) is a character of an identifier to MariaDB's lexer,
  and is read so (``_lexable``): ``--`` before one is two minus signs, not a comment;
* under a client character set whose characters may end in the byte of ``\\`` or `` ` ``
  (GBK, SJIS, CP932, Big5, GB18030), a non-ASCII character right before one of them can take
  it in: such text has no reading the gateway can vouch for (``charset_sensitive``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from sqlglot import exp
from sqlglot.dialects.mysql import MySQL
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokenizer_core import Token, TokenType
from sqlglot.tokens import Tokenizer

__all__ = [
    "MAX_VERSIONED",
    "READ_BUDGET",
    "Piece",
    "Reading",
    "Unreadable",
    "charset_sensitive",
    "code_reading",
    "kills_query",
    "loads_local",
    "readings",
    "redact",
    "split",
    "split_agreed",
    "too_large",
    "where_of",
]

_DIALECT = MySQL()
_PREFIXES = frozenset({"EXPLAIN", "DESCRIBE", "DESC", "ANALYZE"})
_MAIN = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"})
_COMMANDS = frozenset(_DIALECT.tokenizer_class.COMMANDS)
_COMPOUND = frozenset({"IF", "CASE", "LOOP", "REPEAT", "WHILE", "FOR", "DECLARE"})
_REPLACED = frozenset({"TABLE", "DATABASE", "SCHEMA", "SEQUENCE"})
_ROUTINE = frozenset({"PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"})
_NOT_ROUTINE = frozenset(
    {"TABLE", "VIEW", "INDEX", "DATABASE", "SCHEMA", "USER", "ROLE", "SEQUENCE", "SERVER"}
)
_NAMES = frozenset(
    {
        TokenType.STRING,
        TokenType.NATIONAL_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.IDENTIFIER,
    }
)
_EXECUTABLE = re.compile(r"/\*M?!\d{0,6}")
_TAKEN_IN = re.compile(r"[^\x00-\x7f][\\`\[\]]")
_LOAD_LOCAL = re.compile(r"(?is)\bLOAD\b.*\bLOCAL\b")
_ESCAPED = "'\""  # the quotes in which a backslash escapes, by default
#: The non-ASCII characters Python (and so the tokenizer) takes for white space: to MariaDB's
#: lexer they are characters of an identifier, like every other non-ASCII character.
_WIDE_SPACE = re.compile("[\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]")
#: Executable comments in one text whose every combination of run and skipped is read (2**5
#: readings); a text with more has no reading the guard can vouch for.
MAX_VERSIONED = 5
#: SET STATEMENT … FOR SET STATEMENT … FOR … nesting read (each is a recursion).
_MAX_SET_STATEMENT = 16
#: Characters read at most for one text, its length times its readings (the tokenizer is
#: Python: about a second a megabyte). A larger text is not split, and is refused where a
#: guardrail must read its structure (``too_large``).
READ_BUDGET = 16 * 1024 * 1024


class Unreadable(Exception):
    """The text cannot be read as MySQL: the guard cannot vouch for it."""


@dataclass(frozen=True, slots=True)
class Piece:
    """One statement of a text: where it is, and what it is."""

    text: str  # as the client sent it, trimmed
    keyword: str  # its statement keyword: SELECT, DELETE, SHOW, KILL, LOAD …
    keywords: frozenset[str]  # every statement keyword it counts as (nested SELECT, EXPLAIN …)
    tokens: list[Token] = field(repr=False, default_factory=list)
    #: The statement proper, when ``text`` wraps it (``SET STATEMENT … FOR``); its tokens are
    #: ``tokens``.
    statement: str = ""

    def word(self, index: int) -> str:
        """The upper-cased text of its token ``index`` ("" past the end)."""
        return self.tokens[index].text.upper() if index < len(self.tokens) else ""

    @property
    def kill_query(self) -> bool:
        """``KILL QUERY n``: a cancel of another session's running statement."""
        return (
            self.keyword == "KILL"
            and self.word(1) in ("QUERY", "HARD", "SOFT")
            and ("QUERY" in (self.word(1), self.word(2)))
        )

    @property
    def load_local(self) -> bool:
        """``LOAD DATA|XML LOCAL INFILE``: the server asks the client for a file."""
        return self.keyword == "LOAD" and any(t.text.upper() == "LOCAL" for t in self.tokens[:6])

    @property
    def routine_body(self) -> frozenset[str]:
        """The words of a stored routine's body (``CREATE PROCEDURE``, ``FUNCTION``,
        ``TRIGGER``, ``EVENT``, ``PACKAGE``, and ``ALTER EVENT``): the statements it runs when
        called or fired, which no other text shows the guard (``CALL p()``). Empty for any
        other statement. A trigger's body starts after ``FOR EACH ROW``; the others' after the
        routine's kind (their headers hold none of the statement keywords a rule lists)."""
        if self.keyword not in ("CREATE", "ALTER"):  # ALTER EVENT … DO gives a new body
            return frozenset()
        # The definer's name and host, however quoted or not, are names, not the kind of what
        # is created (`DEFINER='user'@'%' PROCEDURE`, `DEFINER=view@localhost EVENT`).
        definer = {
            i + offset
            for i in range(len(self.tokens))
            if self.word(i) == "DEFINER" and self.word(i + 1) == "="
            for offset in ((2, 3, 4) if self.word(i + 3) == "@" else (2,))
        }
        for index, token in enumerate(self.tokens[1:], 1):
            word = token.text.upper()
            if index in definer:
                continue
            if word in _NOT_ROUTINE and token.token_type != TokenType.IDENTIFIER:
                return frozenset()
            if word in _ROUTINE and token.token_type != TokenType.IDENTIFIER:
                body = self.tokens[index + 1 :]
                if word == "TRIGGER":
                    rows = [i for i, t in enumerate(body) if t.text.upper() == "ROW"]
                    body = body[rows[0] + 1 :] if rows else body
                return frozenset(t.text.upper() for t in body if t.token_type not in _NAMES)
        return frozenset()

    @property
    def compound(self) -> bool:
        """A compound statement MariaDB runs outside any stored program (``BEGIN NOT ATOMIC``,
        ``IF``, ``CASE``, ``LOOP``, ``REPEAT``, ``WHILE``, ``FOR``; under sql_mode ORACLE a
        ``BEGIN`` or ``DECLARE`` block, or a labelled one): the statements in it are not
        the ones its text is split into (the server reads it whole, ``;`` and all)."""
        if self.keyword in _COMPOUND or self.word(0) in ("<", "<<") or self.word(1) == ":":
            return True
        return self.keyword == "BEGIN" and self.word(1) not in ("", "WORK")

    @property
    def prepare_source(self) -> str | None:
        """``PREPARE name FROM 'text'`` or ``EXECUTE IMMEDIATE 'text'``: the text; "" when it
        comes from anything but one string literal (a variable, an expression)."""
        if self.keyword == "EXECUTE" and self.word(1) == "IMMEDIATE":
            rest = self.tokens[2:]
        elif self.keyword == "PREPARE":
            found = [i for i, t in enumerate(self.tokens) if t.token_type == TokenType.FROM]
            rest = self.tokens[found[0] + 1 :] if found else []
        else:
            return None
        alone = len(rest) == 1 or (len(rest) > 1 and rest[1].text.upper() == "USING")
        return rest[0].text if alone and rest[0].token_type == TokenType.STRING else ""


def code_reading(sql: str, skipped: frozenset[int] = frozenset()) -> str:
    """``sql`` with executable comments opened, but for those whose number (in order, from 0)
    is in ``skipped``, which stay plain comments: what a MySQL server may run. The opened
    markers become spaces; the text inside stays where it was."""
    return _scan(sql, skipped)[0]


def _scan(
    sql: str, skipped: frozenset[int], escapes: str = _ESCAPED, brackets: bool = False
) -> tuple[str, int]:
    """`code_reading`, and how many executable comments it met. A skipped one is blanked
    (spaces keep every offset) to where the server's lexer ends it (`_skipped_end`).

    ``escapes`` are the quotes in which a backslash escapes the next character: both by
    default, none under NO_BACKSLASH_ESCAPES, only ``'`` under ANSI_QUOTES; where a string
    ends, and so whether a ``/*!`` is in one, depends on it. A line comment (``#``, or ``--``
    followed by an ASCII space or control character) runs to the end of its line, with any
    quote or ``/*!`` in it, and any ``*/`` (an executable comment open before it stays open)."""
    if "/*" not in sql:
        return sql, 0
    out: list[str] = []
    pos = 0
    quote = ""
    opened = 0  # executable comments open at this point
    met = 0
    n = len(sql)
    while pos < n:
        ch = sql[pos]
        if quote:
            if ch == "\\" and quote in escapes:
                out.append(sql[pos : pos + 2])
                pos += 2
                continue
            if ch == quote and sql.startswith(quote, pos + 1):  # doubled: escaped (`]]` too)
                out.append(ch * 2)
                pos += 2
                continue
            if ch == quote:
                quote = ""
            out.append(ch)
            pos += 1
            continue
        if (
            pos >= 2
            and sql.startswith("--", pos - 2)
            and ((opened and sql.startswith("*/", pos)) or _EXECUTABLE.match(sql, pos))
        ):
            # Blanked, the marker would make `--` a comment to the tokenizer; the server reads
            # two minus signs and goes on (`SELECT 2 --/*!*/1; DROP TABLE t`).
            raise Unreadable(
                "`--` right before an executable comment's marker; put a space between them"
            )
        if ch in "'\"`":
            quote = ch
        elif ch == "[" and brackets:
            quote = "]"
        elif ch == "#" or (sql.startswith("--", pos) and _dash_comment(sql, pos + 2)):
            end = sql.find("\n", pos)
            end = n if end < 0 else end
            out.append(sql[pos:end])
            pos = end
            continue
        elif opened and sql.startswith("*/", pos):
            out.append("  ")
            opened -= 1
            pos += 2
            continue
        elif sql.startswith("/*", pos):
            found = _EXECUTABLE.match(sql, pos)
            if found is not None and met not in skipped:
                met += 1
                out.append(" " * (found.end() - pos))
                opened += 1
                pos = found.end()
                continue
            if found is not None:  # skipped: blanked, ending where the server's lexer ends it
                met += 1
                end = _skipped_end(sql, found.end())
                out.append(" " * (end - pos))
                pos = end
                continue
            end = sql.find("*/", pos + 2)
            end = n if end < 0 else end + 2
            out.append(sql[pos:end])
            pos = end
            continue
        out.append(ch)
        pos += 1
    return "".join(out), met


def _dash_comment(sql: str, pos: int) -> bool:
    """Whether ``--`` before ``pos`` starts a comment: followed by an ASCII space or control
    character, or the end (MariaDB's ``my_isspace || my_iscntrl``; any other character, a
    non-ASCII space too, makes it two minus signs)."""
    return pos >= len(sql) or sql[pos] in " \t\n\v\f\r" or ord(sql[pos]) < 32 or sql[pos] == "\x7f"


def _skipped_end(sql: str, pos: int) -> int:
    """Where an executable comment the server skips ends, from just past its marker: MySQL's
    and MariaDB's lexers let it hold one nested comment (`consume_comment` with one recursion
    permitted), so its end is the ``*/`` after that one's, if it has one."""
    nested = False
    allowed = 1
    n = len(sql)
    while pos < n:
        if allowed and sql.startswith("/*", pos):
            allowed -= 1
            nested = True
            pos += 2
        elif sql.startswith("*/", pos):
            if not nested:
                return pos + 2
            nested = False
            pos += 2
        else:
            pos += 1
    return n


def charset_sensitive(sql: str) -> bool:
    """Whether a non-ASCII character stands right before a backslash, a backtick or a bracket
    (an identifier's quote under sql_mode MSSQL): sent as UTF-8 to a session whose client
    character set is GBK, SJIS, CP932, Big5 or GB18030, its last byte and that character may
    be read as one character, and quotes move."""
    return _TAKEN_IN.search(sql) is not None


@dataclass(frozen=True, slots=True)
class Reading:
    """One way the server may read a text: the text to tokenize, and whether double quotes
    delimit identifiers (sql_mode ANSI_QUOTES) rather than strings."""

    text: str
    ansi_quotes: bool = False
    doubled: bool = False  # every backslash doubled (NO_BACKSLASH_ESCAPES)
    brackets: bool = False  # `[…]` delimits an identifier (sql_mode MSSQL)


def readings(sql: str) -> list[Reading]:
    """The readings the server may make of ``sql``: its code reading with every combination of
    its executable comments run or skipped (the server's version decides each); when it
    holds a backslash, each as NO_BACKSLASH_ESCAPES would read it (each backslash doubled, so
    that the tokenizer sees it as a plain character); when it holds a double quote, each of
    those with ANSI_QUOTES (where a backslash in a double-quoted identifier escapes nothing).
    Which ``/*!`` are executable comments, and which lie in a string, is found under each
    sql_mode on its own (``_scan``'s ``escapes``); when it holds a ``[``, each of those also
    as sql_mode MSSQL reads it (``[…]`` an identifier, quotes in it nothing). Raises
    Unreadable past ``MAX_VERSIONED`` executable comments."""
    modes = [(_ESCAPED, False, False)]  # escapes, ANSI_QUOTES, NO_BACKSLASH_ESCAPES
    if "\\" in sql:
        modes.append(("", False, True))
    if '"' in sql:
        modes += [("'", True, False)] + ([("", True, True)] if "\\" in sql else [])
    out: list[Reading] = []
    seen: set[tuple[str, bool, bool]] = set()
    every = [(*mode, False) for mode in modes]
    if "[" in sql:
        every += [(*mode, True) for mode in modes]
    for escapes, ansi_quotes, doubled, brackets in every:
        code, count = _scan(sql, frozenset(), escapes, brackets)  # every one run; how many
        if count > MAX_VERSIONED:
            raise Unreadable(
                f"the text holds {count} version-gated comments (/*!…*/), more than the "
                f"{MAX_VERSIONED} whose every combination the gateway reads (which of them "
                "the server runs depends on its version); send fewer of them in one statement"
            )
        for mask in range(2**count):
            if mask:
                skipped = frozenset(i for i in range(count) if mask >> i & 1)
                code = _scan(sql, skipped, escapes, brackets)[0]
            text = code.replace("\\", "\\\\") if doubled else code
            if (text, ansi_quotes, brackets) not in seen:
                seen.add((text, ansi_quotes, brackets))
                out.append(Reading(text, ansi_quotes, doubled, brackets))
    return out


def split(sql: str, *, ansi_quotes: bool = False, brackets: bool = False) -> list[Piece]:
    """The statements of one text in order (those with no token dropped). Raises Unreadable.

    A statement's text runs from the end of the separator before it, so that a comment in
    front of its first token is part of it: an executable comment there is code the server
    runs with it (``/*!50000 TRUNCATE */ t``), and what is recorded is what was sent."""
    if "\x00" in sql:
        raise Unreadable("the text contains a NUL character")
    tokens = _tokens(sql, ansi_quotes, brackets)
    pieces: list[Piece] = []
    current: list[Token] = []
    start = 0
    for token in [*tokens, None]:
        if token is None or token.token_type == TokenType.SEMICOLON:
            stop = token.start if token is not None else len(sql)
            if current:
                span = sql[start:stop]
                base = start + len(span) - len(span.lstrip())
                pieces.append(_piece(span.strip(), _opened(current), base))
            current = []
            start = stop + 1
            continue
        current.append(token)
    return pieces


def loads_local(text: str) -> bool:
    """Whether a statement may be ``LOAD DATA|XML LOCAL`` in any reading of ``readings`` (its
    ``LOCAL`` may stand in an executable comment: ``LOAD DATA /*!50000 LOCAL */ INFILE``);
    text that cannot be read, when it names both words."""
    if "LOAD" not in text.upper():
        return False  # the common case, without reading it
    try:
        return any(piece.load_local for piece in _read(text))
    except Unreadable:
        return _LOAD_LOCAL.search(text) is not None


def kills_query(text: str) -> bool:
    """Whether a statement is ``KILL QUERY`` in any reading (``KILL /*!50000 QUERY */ 7``)."""
    if "KILL" not in text.upper():
        return False
    try:
        return any(piece.kill_query for piece in _read(text))
    except Unreadable:
        return False


def _read(text: str) -> list[Piece]:
    """The statements of every reading of ``text``."""
    return [
        piece
        for reading in readings(text)
        for piece in split(reading.text, ansi_quotes=reading.ansi_quotes, brackets=reading.brackets)
    ]


def too_large(sql: str, ways: int = 1) -> str | None:
    """Why ``sql``, read in ``ways`` ways, is more than ``READ_BUDGET`` (None: it is not)."""
    if len(sql) * ways <= READ_BUDGET:
        return None
    return (
        f"the text has {len(sql)} characters and {ways} ways the server may read it, more "
        f"than the {READ_BUDGET} characters the gateway reads for one text; send it in "
        "smaller statements"
    )


def split_agreed(sql: str) -> list[Piece] | None:
    """The statements of one text, when every reading of ``readings`` ends its statements at
    the same places; None when they do not (or one cannot be read), since then which
    statements the server runs depends on its sql_mode; None too when one of several is a
    compound statement or a routine's definition, whose body's ``;`` end no statement for the
    server. Raises Unreadable for ``split``'s."""
    if too_large(sql):
        return None
    pieces = split(sql)
    if charset_sensitive(sql):
        return None
    if len(pieces) > 1 and any(p.compound or p.routine_body for p in pieces):
        return None
    others = readings(sql)
    if too_large(sql, len(others)):
        return None
    if len(others) == 1 and others[0].text == sql:
        return pieces  # the one reading is the text itself (the common case)
    cuts, filled = _shape(sql)
    for reading in others:
        try:
            found, code = _shape(reading.text, reading.ansi_quotes, reading.brackets)
        except Unreadable:
            return None
        if reading.doubled:  # back to the text's own offsets
            found = [p - reading.text.count("\\", 0, p) // 2 for p in found]
        if found != cuts or code != filled:
            return None
    return pieces


def _shape(
    sql: str, ansi_quotes: bool = False, brackets: bool = False
) -> tuple[list[int], list[bool]]:
    """Where the statement separators of ``sql`` are, and which of the spans between them
    hold a token: a span of comments alone is no statement to ``split``, but one whose
    executable comment is opened is (``SELECT 1; /*!50000 DROP TABLE t */; SELECT 2``)."""
    cuts: list[int] = []
    filled = [False]
    for token in _tokens(sql, ansi_quotes, brackets):
        if token.token_type == TokenType.SEMICOLON:
            cuts.append(token.start)
            filled.append(False)
        else:
            filled[-1] = True
    return cuts, filled


class _AnsiQuotes(MySQL.Tokenizer):
    """MySQL's tokenizer under sql_mode ANSI_QUOTES: double quotes delimit identifiers."""

    QUOTES = ["'"]
    IDENTIFIERS = ["`", '"']
    STRING_ESCAPES = ["'", "\\"]


class _Brackets(MySQL.Tokenizer):
    """Under sql_mode MSSQL: ``[…]`` delimits an identifier too."""

    IDENTIFIERS = ["`", ("[", "]")]


class _AnsiBrackets(MySQL.Tokenizer):
    """Under sql_mode MSSQL with ANSI_QUOTES (which MSSQL sets)."""

    QUOTES = ["'"]
    IDENTIFIERS = ["`", '"', ("[", "]")]
    STRING_ESCAPES = ["'", "\\"]


# A tokenizer holds the text it reads while it reads it: one is made for each text, since a
# large text is read on a thread of its own while the event loop reads others.
_TOKENIZERS: dict[tuple[bool, bool], type[Tokenizer]] = {
    (False, False): _DIALECT.tokenizer_class,
    (True, False): _AnsiQuotes,
    (False, True): _Brackets,
    (True, True): _AnsiBrackets,
}


def _lexable(sql: str) -> str:
    """``sql`` as the tokenizer should see it: each non-ASCII space (U+00A0, U+3000 …), which
    MariaDB reads as a character of an identifier, made one (so that ``--`` before one is two
    minus signs, not a comment, and it ends no word). Every offset stays."""
    return _WIDE_SPACE.sub("\u00aa", sql)


def _tokens(sql: str, ansi_quotes: bool = False, brackets: bool = False) -> list[Token]:
    sql = _lexable(sql)
    try:
        return list(_TOKENIZERS[ansi_quotes, brackets]().tokenize(sql))
    except TokenError as exc:
        raise Unreadable(str(exc)) from None


def _opened(tokens: list[Token]) -> list[Token]:
    """The tokens with the rest of a command (which the tokenizer keeps as one string, as
    after PREPARE, EXECUTE or REPLACE) tokenized too."""
    out: list[Token] = []
    command = False
    for token in tokens:
        if command and token.token_type == TokenType.STRING:
            out.extend(_tokens(token.text))
        else:
            out.append(token)
        command = token.token_type in _COMMANDS
    return out


def _piece(text: str, tokens: list[Token], base: int = 0, nesting: int = 0) -> Piece:
    """What the statement ``text`` is (it starts at offset ``base`` of the text its tokens'
    offsets are in)."""
    words = [t.text.upper() for t in tokens]
    if words[:2] == ["SET", "STATEMENT"]:
        inner = _set_statement(text, tokens, base, nesting)
        if inner is not None:
            return inner
    keywords: set[str] = set()
    index = 0
    while index < len(words) and words[index] in _PREFIXES:
        keywords.add("EXPLAIN" if words[index] in ("DESC", "DESCRIBE") else words[index])
        index += 1
        while index < len(words) and words[index] in (
            "ANALYZE",
            "EXTENDED",
            "PARTITIONS",
            "FORMAT",
            "=",
            "JSON",
            "TRADITIONAL",
            "TREE",
        ):
            index += 1
    if index < len(words) and words[index] == "(":
        main = "SELECT"
    elif index < len(words) and words[index] == "WITH":
        main = _after_with(tokens, index)
    else:
        main = words[index] if index < len(words) else ""
    keywords.add(main)
    if "SELECT" in words:
        keywords.add("SELECT")
    # The tokenizer reads some keywords of two words as one (`LOCK TABLES`): the statement is
    # named by its first word too, as `LOCK TABLE` is.
    keywords |= {word.split(" ")[0] for word in keywords if " " in word}
    if words[:3] == ["CREATE", "OR", "REPLACE"] and _REPLACED.intersection(words[3:5]):
        keywords.add("DROP")  # MariaDB drops the table (database, sequence) it replaces
    keyword = main if words[0] in _PREFIXES or words[0] in ("WITH", "(") else words[0]
    return Piece(text, keyword, frozenset(keywords), tokens)


def _set_statement(text: str, tokens: list[Token], base: int, nesting: int) -> Piece | None:
    """MariaDB's ``SET STATEMENT var = value, … FOR statement``: the statement it runs (with
    ``SET`` among its keywords), keeping the whole text; None without a ``FOR``."""
    depth = 0
    for index, token in enumerate(tokens[2:-1], 2):
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and token.text.upper() == "FOR" and token.token_type not in _NAMES:
            first = tokens[index + 1]
            if nesting >= _MAX_SET_STATEMENT:
                raise Unreadable(f"SET STATEMENT … FOR nested more than {_MAX_SET_STATEMENT} deep")
            inner = _piece(
                text[first.start - base :], tokens[index + 1 :], first.start, nesting + 1
            )
            return Piece(
                text,
                inner.keyword,
                inner.keywords | {"SET"},
                inner.tokens,
                inner.statement or inner.text,
            )
    return None


def _after_with(tokens: list[Token], index: int) -> str:
    """The statement a WITH clause belongs to: the first main keyword outside parentheses."""
    depth = 0
    for token in tokens[index + 1 :]:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and token.text.upper() in _MAIN:
            return token.text.upper()
    return "SELECT"


def where_of(text: str) -> exp.Expression | Unreadable | None:
    """The WHERE of a DELETE or UPDATE (None: it has none); Unreadable when it cannot be parsed."""
    try:
        trees = _DIALECT.parse(_lexable(text))
    except (ParseError, TokenError) as exc:
        return Unreadable(str(exc).splitlines()[0] if str(exc) else "syntax error")
    except RecursionError:  # the parser descends once for each parenthesis
        return Unreadable("expressions nested too deeply to read")
    tree = trees[0] if len(trees) == 1 else None
    if not isinstance(tree, exp.Delete | exp.Update):
        return Unreadable("not read as a DELETE or UPDATE")
    where = tree.args.get("where")
    return where if isinstance(where, exp.Expression) else None


_SECRET_WORDS = re.compile(r"(?i)password|identified|ed25519")
_MASK = "'***'"
_LITERALS = (TokenType.STRING, TokenType.NATIONAL_STRING, TokenType.HEX_STRING)


def redact(sql: str) -> str:
    """``sql`` with every string literal masked when it may hold a password (``IDENTIFIED BY``,
    ``PASSWORD('…')``, ``MASTER_PASSWORD=``…), so that none reaches the trail. A literal of any
    reading the server may make (``readings``: an executable comment run, NO_BACKSLASH_ESCAPES,
    ANSI_QUOTES…) is masked, where it is in the text. Text the tokenizer cannot read loses
    everything after the first such word."""
    found = _SECRET_WORDS.search(sql)
    if found is None:
        return sql
    spans: set[tuple[int, int]] = set()
    try:
        for reading in readings(sql):
            tokens = _tokens(reading.text, reading.ansi_quotes, reading.brackets)
            if any(token.token_type in _COMMANDS for token in tokens):
                # The rest of a command is one token whose position is not exact: mask it all.
                return sql[: found.start()] + "***"
            quoted = []
            for token in _password_places(tokens):
                if token.token_type == TokenType.IDENTIFIER:
                    quoted.append(token)  # `secret`, or "secret" under ANSI_QUOTES
                elif token.token_type not in (*_LITERALS, TokenType.PLACEHOLDER):
                    return sql[: found.start()] + "***"  # a password outside any quotes
            for token in tokens:
                if token.token_type in _LITERALS or token in quoted:
                    start, end = token.start, token.end + 1
                    if reading.doubled:  # back to the text's own offsets
                        start -= reading.text.count("\\", 0, start) // 2
                        end -= reading.text.count("\\", 0, end) // 2
                    spans.add((start, end))
    except Unreadable:
        return sql[: found.start()] + "***"
    out: list[str] = []
    pos = 0
    for start, end in sorted(spans):
        if start >= pos:
            out += [sql[pos:start], _MASK]
            pos = end
        elif end > pos:  # it overlaps one of another reading: one mask for both
            pos = end
    out.append(sql[pos:])
    return "".join(out)


def _password_places(tokens: list[Token]) -> Iterator[Token]:
    """The tokens that stand where a password goes (``IDENTIFIED [WITH|VIA plugin]
    BY|USING|AS``, ``[MASTER_]PASSWORD =``, ``SET PASSWORD FOR user =``, ``PASSWORD(``),
    whatever they are: one typed without its quotes is a word or a number, which the server
    refuses, and quotes in its error."""
    words = [token.text.upper() for token in tokens]
    set_password = words[:2] == ["SET", "PASSWORD"]
    for index in range(1, len(tokens)):
        before = words[index - 1]
        if before in ("BY", "USING", "AS"):
            where = "IDENTIFIED" in words[max(0, index - 4) : index]
        elif before == "=":
            where = words[index - 2].endswith("PASSWORD") or (
                set_password and "=" not in words[: index - 1]
            )
        else:
            where = before == "(" and index > 1 and words[index - 2].endswith("PASSWORD")
        if where and "PASSWORD" not in words[index]:
            yield tokens[index]
