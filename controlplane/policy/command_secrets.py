"""Secrets on a command line: masked in what is recorded, never in what runs.

`gatehouse exec ops -- mysql -uroot -pS3cret -e 'select 1'` would otherwise put the password
in the `shell.command` event, in every export and in every SIEM that reads it; an AI agent's
shell expands ``$TOKEN`` before the command reaches the gateway, so this is common. Guardrails
decide on the real command and the target gets it unchanged: only the recorded copy (the
command event's `argv`/`command`, a recording's title, a refusal's reason, an `mcp.call`'s
`command`) goes through here. What is recorded may say less than what ran, never something
else: only the secret part of a word becomes ``****`` (the `secret` detector's mask), every
other byte stays, and the event says ``masked: true``.

What is a secret:

* whatever the `secret` detector (``redact/detectors.py``) finds in a word: tokens with a
  known shape (``ghp_…``, ``AKIA…``, a JWT), ``Bearer …``, a URL's password
  (``https://user:****@host``), and ``NAME=VALUE`` / ``--name=VALUE`` for a name that says
  password, secret, token, API key or credentials (``PGPASSWORD=****``, ``--password=****``);
* the value of a long option named for a secret (``--password``, ``--passwd``, ``--pass``,
  ``--pwd``, ``--token``, ``--secret``, ``--api-key``, ``--apikey``, also with a prefix:
  ``--db-password``, ``--client-secret``, ``--access-token``), attached (``--pass=X``) or the
  next word (``--token X``) — except where the option takes no value: ``--password`` of the
  PostgreSQL tools (a flag: prompt) and of the MySQL family (its value is only ever attached),
  and negations such as ``--no-password`` or ``--ask-password``;
* ``-pVALUE`` after a MySQL or MariaDB client (``mysql``, ``mysqldump``, ``mariadb``…), where
  ``-p`` means password; ``-p`` alone prompts, and the next word is a database name;
* ``sshpass -p VALUE`` (or ``-pVALUE``), ``docker login -p VALUE`` (``podman``, ``nerdctl``,
  ``buildah``, ``skopeo``), and curl's ``-u``/``--user``/``-U``/``--proxy-user
  USER:PASSWORD`` (the part after the first colon);
* a password literal in the SQL of ``mysql -e`` or ``psql -c``, masked as that statement's
  `db.query` has it (``IDENTIFIED BY '***'``);
* the credentials of an ``Authorization:`` header given as a word (``-H 'Authorization: token
  X'``: the scheme stays), and a variable the detector does not name, ``MYSQL_PWD``,
  ``SSHPASS`` or any ``…_PWD``/``…_PASS`` (``PWD`` and ``OLDPWD`` are directories).

Not secrets: ``ssh -p 2222``, ``psql -p 5432``, ``grep -p``, ``tar -p`` (``-p`` means password
to the MySQL family only), ``--password-file=/etc/x`` and ``--token-file`` (a path that names
where a secret is, kept so a reader sees which file was used), ``--password-stdin``.

A command line is read as the guard reads it: an argv word by word; a shell text split into
simple commands on ``;``, ``&``, ``|``, parentheses, backquotes and newlines, with the shell's
quoting. The command-specific rules hold from the word that names the command onwards, so a
launcher before it changes nothing (``sudo -u db env MYSQL_PWD=X mysqldump -pX``, ``docker exec
c mysql -pX``, ``ssh host mysql -pX``). A word with a blank or a control operator in it is also
read as a shell text of its own: the script of ``sh -c``, ``bash -c``, ``su -c``, ``ssh HOST
'…'``, ``watch '…'``. In a shell text a masked part keeps its quotes (``-p'****'``); where a
secret was split across quotes or escapes, the rest of its word is masked. The detector also
runs over the whole text last, for secrets no word rule sees.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

from controlplane.policy import mysql_sql
from controlplane.policy.statement_secrets import redact_statement
from redact.detectors import secret

__all__ = ["MASK", "Masking"]

MASK: Final = "****"
"""What takes a secret's place: the `secret` detector's own mask, so one command line never
shows two."""

_MAX_DEPTH: Final = 8  # scripts in scripts (`sh -c "ssh h 'sh -c …'"`); deeper ones stay whole

_MYSQL: Final = frozenset(
    {"mysql", "mariadb", "mysqldump", "mariadb-dump", "mysqladmin", "mariadb-admin",
     "mysqlimport", "mariadb-import", "mysqlshow", "mariadb-show", "mysqlcheck",
     "mariadb-check", "mysqlslap", "mariadb-slap", "mysqlpump", "mysqlbinlog",
     "mariadb-binlog", "mysql_upgrade", "mariadb-upgrade", "mariabackup", "mariadb-backup"}
)  # fmt: skip
"""The MySQL and MariaDB clients: ``-pVALUE`` is their password (attached only)."""
_POSTGRES: Final = frozenset(
    {"psql", "pg_dump", "pg_dumpall", "pg_restore", "pg_basebackup", "createdb", "dropdb",
     "createuser", "dropuser", "vacuumdb", "reindexdb", "clusterdb", "pgbench",
     "pg_receivewal", "pg_recvlogical", "pg_amcheck"}
)  # fmt: skip
"""The PostgreSQL tools: ``--password`` (``-W``) is a flag that makes them prompt."""
_SECRET_OPTION: Final = re.compile(
    r"--(?P<prefix>(?:[A-Za-z0-9]+[-_])*)"
    r"(?:password|passwd|pass|pwd|passphrase|token|secret|api[-_]?key|secret[-_]key)"
    r"(?P<equals>=?)",
    re.IGNORECASE,
)
"""A long option whose value is a secret: its name ends in the word (``--password-file`` and
``--token-stdin`` do not)."""
_FLAG_PREFIXES: Final = frozenset(
    {"no", "ask", "prompt", "skip", "show", "print", "require", "force", "generate", "random",
     "reset", "read", "stdin", "use", "with", "without", "allow", "disable", "enable"}
)  # fmt: skip
"""First words of option names that say the option takes no secret (``--no-password``)."""
_SECRET_VARIABLE: Final = re.compile(
    r"(?P<name>MYSQL_PWD|SSHPASS|[A-Za-z_][A-Za-z0-9_]*_(?:PWD|PASS))=(?P<value>.+)",
    re.DOTALL,
)
"""Variables the detector does not take for secrets by their name."""
_AUTHORIZATION: Final = re.compile(
    r"(?i:\s*(?:proxy-)?authorization\s*:\s*(?:[A-Za-z0-9_\-]+\s+)?)(?P<value>\S.*)", re.DOTALL
)
_SQL_OPTIONS: Final = {
    "mysql": (("-e", "--execute"), mysql_sql.redact),
    "postgres": (("-c", "--command"), redact_statement),
}
"""Options whose value is SQL, and how that SQL is recorded (as its `db.query` would be)."""
_REGISTRY_CLIENTS: Final = frozenset({"docker", "podman", "nerdctl", "buildah", "skopeo"})
"""Container tools whose ``login -p`` is the registry password."""
_CURL_USER: Final = frozenset({"-u", "--user", "-U", "--proxy-user"})
_SSHPASS_VALUES: Final = frozenset({"-f", "-d", "-P"})
_SHELL_TEXT: Final = re.compile(r"[\s;&|`()]")
"""A word that may be a shell text of its own (a script for ``sh -c``, ``ssh HOST``)."""


def _name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


# ---- the rules on one simple command's words ---------------------------------------------------


def _mask_from(word: str, at: int) -> str:
    """``word`` with everything from ``at`` masked (nothing when nothing follows)."""
    return word[:at] + MASK if at < len(word) else word


def _masked_words(
    words: Sequence[str], depth: int, changed: dict[str, str] | None = None
) -> list[str]:
    """The words of one simple command (an argv) as they may be recorded; each word that
    changed, at every level, goes to ``changed`` with its masked form."""
    out = list(words)
    family = ""  # the latest command named that a rule depends on
    i = 0
    while i < len(out):
        word = words[i]
        name = _name(word)
        if name in _MYSQL:
            family = "mysql"
        elif name in _POSTGRES:
            family = "postgres"
        elif name == "curl":
            family = "curl"
        elif name in _REGISTRY_CLIENTS:
            family = "registry"
        elif family == "registry" and word == "login":
            family = "login"
        elif name == "sshpass":
            i = _sshpass(words, out, i + 1)
            family = ""
            continue
        option = _SECRET_OPTION.fullmatch(word.split("=", 1)[0] + ("=" if "=" in word else ""))
        if option is not None and _takes_secret(option, family):
            if option.group("equals"):
                out[i] = _mask_from(word, word.index("=") + 1)
            elif i + 1 < len(words):
                out[i + 1] = MASK if words[i + 1] else words[i + 1]
                i += 2
                continue
        elif family == "mysql" and word.startswith("-p") and not word.startswith("--"):
            out[i] = _mask_from(word, 2)
        elif family in _SQL_OPTIONS and (sql := _sql_value(words, i, family)) is not None:
            at, offset, redact = sql
            out[at] = words[at][:offset] + redact(words[at][offset:])
        elif family == "login" and word.startswith("-p") and not word.startswith("--"):
            if word != "-p":
                out[i] = _mask_from(word, 2)
            elif i + 1 < len(words):
                out[i + 1] = MASK if words[i + 1] else words[i + 1]
                i += 2
                continue
        elif family == "curl" and (user := _curl_user(words, i)) is not None:
            at, value_at = user
            value = words[at]
            if ":" in value[value_at:]:
                out[at] = _mask_from(value, value.index(":", value_at) + 1)
            if at != i:
                i += 2
                continue
        elif (variable := _SECRET_VARIABLE.fullmatch(word)) is not None:
            out[i] = _mask_from(word, variable.start("value"))
        elif (header := _AUTHORIZATION.fullmatch(word)) is not None:
            out[i] = _mask_from(word, header.start("value"))
        i += 1
    for i, word in enumerate(out):
        if depth < _MAX_DEPTH and _SHELL_TEXT.search(word):
            out[i] = _masked_text(word, depth + 1, changed)  # the detector's pass included
        else:
            out[i] = _without_code_masked(word, secret(word) or word)
        if changed is not None and out[i] != words[i]:
            changed[words[i]] = out[i]
    return out


def _sql_value(
    words: Sequence[str], i: int, family: str
) -> tuple[int, int, Callable[[str], str]] | None:
    """Where the SQL of ``-e SQL`` (mysql) or ``-c SQL`` (psql) is when word ``i`` gives it:
    (word, offset in it, how to redact it)."""
    (short, long), redact = _SQL_OPTIONS[family]
    word = words[i]
    if word in (short, long):
        return (i + 1, 0, redact) if i + 1 < len(words) else None
    if word.startswith(long + "="):
        return i, len(long) + 1, redact
    if word.startswith(short) and not word.startswith("--") and len(word) > 2:
        return i, 2, redact
    return None


def _takes_secret(option: re.Match[str], family: str) -> bool:
    prefix = option.group("prefix").lower()
    if prefix.split("-", 1)[0].split("_", 1)[0] in _FLAG_PREFIXES:
        return False
    if option.group("equals"):
        return True
    # `psql --password` prompts; `mysql --password` prompts unless the value is attached.
    return not (family in ("mysql", "postgres") and prefix == "")


def _sshpass(words: Sequence[str], out: list[str], i: int) -> int:
    """sshpass's options from ``i`` (``-p PASSWORD``, ``-pPASSWORD``); where its command
    starts."""
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        word = words[i]
        if word == "--":
            return i + 1
        if word == "-p" and i + 1 < len(words):
            out[i + 1] = MASK if words[i + 1] else words[i + 1]
            i += 2
        elif word.startswith("-p"):
            out[i] = _mask_from(word, 2)
            i += 1
        elif word in _SSHPASS_VALUES:
            i += 2
        else:
            i += 1
    return i


def _curl_user(words: Sequence[str], i: int) -> tuple[int, int] | None:
    """Where curl's ``USER:PASSWORD`` is when word ``i`` gives it: (word, offset in it)."""
    word = words[i]
    if word in _CURL_USER:
        return (i + 1, 0) if i + 1 < len(words) else None
    if word.startswith(("--user=", "--proxy-user=")):
        return i, word.index("=") + 1
    if word.startswith(("-u", "-U")) and not word.startswith("--") and len(word) > 2:
        return i, 2
    return None


# ---- shell text ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Word:
    """A word of a shell text: its value after quote removal, and where each of its
    characters stands in the text and in which quotes."""

    value: list[str] = field(default_factory=list)
    at: list[int] = field(default_factory=list)
    quote: list[str] = field(default_factory=list)
    end: int = 0  # just after its last raw character (a closing quote included)


def _words(text: str, comments: list[tuple[int, int]] | None = None) -> list[list[_Word]]:
    """The simple commands of a shell text, each a list of words, as a shell quotes them;
    where its comments are go to ``comments``."""
    if comments is None:
        comments = []
    commands: list[list[_Word]] = [[]]
    word: _Word | None = None
    quote = ""
    i = 0

    def char(c: str, at: int) -> None:
        nonlocal word
        if word is None:
            word = _Word()
        word.value.append(c)
        word.at.append(at)
        word.quote.append(quote)
        word.end = at + 1

    def finish() -> None:
        nonlocal word
        if word is not None:
            commands[-1].append(word)
        word = None

    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
                assert word is not None
                word.end = i + 1
            else:
                char(c, i)
        elif quote == '"':
            if c == "\\" and i + 1 < len(text) and text[i + 1] in '$`"\\\n':
                i += 1
                char(text[i], i)
            elif c == '"':
                quote = ""
                assert word is not None
                word.end = i + 1
            else:
                char(c, i)
        elif c == "\\" and i + 1 < len(text):
            i += 1
            if text[i] != "\n":  # a line continuation joins lines
                char(text[i], i)
        elif c in "'\"":
            if word is None:
                word = _Word(end=i + 1)
            quote = c
            word.end = i + 1
        elif c in " \t\r":
            finish()
        elif c in "\n;&|()`":
            finish()
            commands.append([])
        elif c == "#" and word is None:
            end = text.find("\n", i)
            end = len(text) if end < 0 else end
            comments.append((i, end))  # runs nothing, but may quote a command line
            i = end
            continue
        else:
            char(c, i)
        i += 1
    finish()
    return [command for command in commands if command]


def _masked_text(text: str, depth: int = 0, changed: dict[str, str] | None = None) -> str:
    """A shell text as it may be recorded: each word's secret parts masked in place."""
    edits: list[tuple[int, int, str]] = []
    comments: list[tuple[int, int]] = []
    for command in _words(text, comments):
        values = ["".join(word.value) for word in command]
        masked_words = _masked_words(values, depth, changed)
        for word, value, new in zip(command, values, masked_words, strict=True):
            if new != value:
                edits.extend(_raw_edits(word, value, new))
    for start, end in comments:
        comment = text[start:end]
        masked = _masked_text(comment[1:], depth + 1, changed) if depth < _MAX_DEPTH else comment
        if masked != comment[1:]:
            edits.append((start, end, "#" + masked))
    out: list[str] = []
    done = 0
    for start, end, replacement in sorted(edits):
        if start < done or _runs_code(text[start : end + 1]):
            continue  # within an edit that masked the rest of its word, or code: kept
        out.append(text[done:start])
        out.append(replacement)
        done = end
    out.append(text[done:])
    masked = "".join(out)
    return _without_code_masked(masked, secret(masked) or masked)


_CODE: Final = re.compile(r"\$\(|`|[<>]\(")
"""What makes a shell run a command inside a word: ``$(…)``, backquotes, ``<(…)``, ``>(…)``."""


def _runs_code(fragment: str) -> bool:
    """Whether masking ``fragment`` (and the character after it, where a ``(`` may open what
    its ``$`` starts) would hide a command the shell runs (``mysql "-p$(touch f)"``, ``Bearer
    `rm -rf d```): the trail may say less than what ran, never leave out something that ran.
    A literal in single quotes counts too (kept: it says more)."""
    return _CODE.search(fragment) is not None


def _without_code_masked(text: str, masked: str) -> str:
    """``masked`` (the detector's pass over ``text``) with every change that would hide code
    undone."""
    if masked == text or not _CODE.search(text):
        return masked
    out: list[str] = []
    done = 0
    for start, end, replacement in _changes(text, masked):
        out.append(text[done:start])
        out.append(text[start:end] if _runs_code(text[start : end + 1]) else replacement)
        done = end
    out.append(text[done:])
    return "".join(out)


def _raw_edits(word: _Word, value: str, new: str) -> list[tuple[int, int, str]]:
    """Where in the text the changes from ``value`` to ``new`` go: (start, end, text).

    A changed run of characters that stand next to each other in the text is replaced in
    place; one split by quotes or escapes takes the rest of the word, and the quote it stood
    in is closed again, so the text stays readable the way it was."""
    edits: list[tuple[int, int, str]] = []
    for i1, i2, replacement in _changes(value, new):
        if i1 == i2:  # an insertion: nothing of the value goes
            at = word.at[i1] if i1 < len(value) else word.end
            quote = word.quote[i1] if i1 < len(value) else ""
            edits.append((at, at, _quoted(replacement, quote)))
        elif word.at[i2 - 1] - word.at[i1] == i2 - i1 - 1:
            edits.append((word.at[i1], word.at[i2 - 1] + 1, _quoted(replacement, word.quote[i1])))
        else:
            edits.append((word.at[i1], word.end, MASK + word.quote[i1]))
            break
    return edits


def _quoted(text: str, quote: str) -> str:
    """``text`` as it reads the same inside ``quote`` (SQL's ``'***'`` in a quoted script)."""
    if quote == "'":
        return text.replace("'", "'\\''")
    if quote == '"':
        return re.sub(r'([\\"$`])', r"\\\1", text)
    return re.sub(r"([^\w*@:=.,/+%-])", r"\\\1", text)


def _changes(value: str, new: str) -> list[tuple[int, int, str]]:
    """How ``new`` is ``value`` with runs replaced: (start, end, replacement) in ``value``.

    Masking replaces runs by stars, so after each run of stars the two texts agree again where
    the next few characters of ``new`` stand in ``value``. Whatever the alignment found,
    applying the changes to ``value`` gives ``new`` exactly (the rest of it, at worst, as one
    change), in linear time where a general diff is quadratic on a long script."""
    changes: list[tuple[int, int, str]] = []
    i = j = 0
    while i < len(value) and j < len(new):
        if value[i] == new[j]:
            i += 1
            j += 1
            continue
        after = j
        while after < len(new) and new[after] == "*":
            after += 1
        after = max(after, j + 1)
        anchor = new[after : after + 8]
        resume = value.find(anchor, i + 1) if anchor else -1
        if resume < 0:
            break
        changes.append((i, resume, new[j:after]))
        i, j = resume, after
    if i < len(value) or j < len(new):
        changes.append((i, len(value), new[j:]))
    return changes


# ---- what callers use --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Masking:
    """A command line as it may be recorded, and how to keep its secrets out of other text
    recorded about it (a refusal's reason quotes its words)."""

    argv: tuple[str, ...] | None
    text: str | None
    words: dict[str, str]  # each word that had a secret, at every level: its masked form

    @property
    def masked(self) -> bool:
        return bool(self.words)

    @property
    def line(self) -> str:
        """The command line as one text (an argv's words joined by spaces)."""
        return self.text if self.text is not None else " ".join(self.argv or ())

    @classmethod
    def of_argv(cls, argv: Sequence[str]) -> Masking:
        changed: dict[str, str] = {}
        masked = tuple(_masked_words(argv, 0, changed))
        return cls(masked, None, changed)

    @classmethod
    def of_text(cls, text: str) -> Masking:
        changed: dict[str, str] = {}
        masked = _masked_text(text, 0, changed)
        if masked != text:
            changed[text] = masked
        return cls(None, masked, changed)

    def scrub(self, text: str) -> str:
        """Other text about this command line (a reason quoting its words) with the same
        secrets masked: each word that had one, then the detector."""
        if not self.words:
            return text
        for word in sorted(self.words, key=len, reverse=True):
            quoted = shlex.quote(word)  # as `shlex.join` quotes a word in a message
            if quoted != word and quoted in text:
                text = text.replace(quoted, shlex.quote(self.words[word]))
            if word in text:
                text = text.replace(word, self.words[word])
        return secret(text) or text

    def scrub_words(self, words: Sequence[str]) -> list[str]:
        """Some of the command's words (the part a stdin reader names), masked as they are in
        the whole and as an argv of their own."""
        return list(_masked_words([self.words.get(word, word) for word in words], 0))
