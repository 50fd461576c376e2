"""The settings a client's StartupMessage makes, read as PostgreSQL reads them.

Besides `user` and `database`, a StartupMessage may carry any run-time setting as a parameter
(`role=boss`, `search_path=…`) and, in `options`, command-line switches (`-c role=boss`,
`--search-path=…`). The server applies them before the first statement, so each is decided
and recorded as the `SET` it amounts to (the inspector, ADR 0010). Only what the agent owns
is left out, and the settings drivers send to choose how values are shown, which no guardrail
is about.

`options` is split as the server splits it (`pg_split_opts`: ASCII white space separates
words, a backslash takes the next character as it is); of its switches, only `-c NAME=VALUE`
(also `-cNAME=VALUE`) and `--NAME=VALUE` set nothing but a setting (`-` in a name reads as
`_`). The others (`-P`, `-d 5`, `-e`…) are refused: the gateway would not know what they do.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The agent decides these itself (agent/pg/login.py); the client's values never reach the target.
AGENT_OWNED = frozenset({"user", "database", "replication"})
#: How values are shown (drivers set them on every connection); neither decided nor recorded.
SHOWN = frozenset(
    {
        "application_name",
        "client_encoding",  # the agent sends UTF8 after the client's (the last one counts)
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
    }
)
_SPACE = " \t\n\v\f\r"  # C's isspace, which pg_split_opts uses (not Unicode's)
MAX_SETTINGS = 64


class StartupRefused(Exception):
    """The StartupMessage sets something the gateway cannot read; nothing was forwarded."""


def settings(params: Mapping[str, str]) -> list[tuple[str, str]]:
    """The settings `params` make on the server, in order, as (name, value); names lower case."""
    found: list[tuple[str, str]] = []
    for name, value in params.items():
        if name in AGENT_OWNED:
            continue
        if name == "options":
            found += _switches(value)
        else:
            found.append((name.lower(), value))
    kept = [(name, value) for name, value in found if name not in SHOWN]
    if len(kept) > MAX_SETTINGS:
        raise StartupRefused(
            f"the startup sets {len(kept)} settings, more than {MAX_SETTINGS}; set them with SET"
        )
    return kept


def statement(name: str, value: str) -> str:
    """The SET statement a startup setting amounts to (for the guard and the trail)."""
    quoted = '"' + name.replace('"', '""') + '"'
    return f"SET {quoted} TO '" + value.replace("'", "''") + "'"


def _switches(options: str) -> list[tuple[str, str]]:
    words = _split(options)
    found: list[tuple[str, str]] = []
    index = 0
    while index < len(words):
        word = words[index]
        if word == "-c":
            index += 1
            if index == len(words):
                raise StartupRefused("options: -c needs NAME=VALUE after it")
            found.append(_setting(words[index]))
        elif word.startswith("-c") or (word.startswith("--") and len(word) > 2):
            found.append(_setting(word[2:]))
        else:
            raise StartupRefused(
                f"options: the switch {word[:40]!r} is not accepted; only -c NAME=VALUE and "
                "--NAME=VALUE settings are"
            )
        index += 1
    return found


def _setting(word: str) -> tuple[str, str]:
    name, equals, value = word.partition("=")
    if not equals or not name:
        raise StartupRefused(f"options: {word[:40]!r} is not NAME=VALUE")
    return name.replace("-", "_").lower(), value


def _split(options: str) -> list[str]:
    words: list[str] = []
    word: list[str] = []
    started = escaped = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = started = True
        elif char in _SPACE:
            if started:
                words.append("".join(word))
                word, started = [], False
        else:
            word.append(char)
            started = True
    if started:
        words.append("".join(word))
    return words
