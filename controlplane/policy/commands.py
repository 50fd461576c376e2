"""Command guardrails: decide, before a command is forwarded, whether a guardrail denies it.

A command reaches a target in one of two forms. An SSH command is one text that the remote
user's shell interprets, so ``ls; rm -rf /`` runs two commands: the text is split on the
shell's control operators and every simple command is checked. A `shell` connection runs an
argv as is, with no shell in between, so only that argv is checked. In both forms the words
that only launch another command (``sudo``, ``env``, ``nohup``, ``timeout 5``, ``sh -c TEXT``,
``$(…)``) are looked through, so ``sudo -u root sh -c 'rm -rf /'`` is checked as ``rm -rf /``.
So are program runners that build a command from their words (``env -S TEXT``, GNU
``parallel CMD ::: ARGS``, ``pwsh -Command TEXT``).

``deny_commands`` are globs (``*`` matches anything, spaces included) on a simple command's
words joined by single spaces; ``deny_patterns`` are regular expressions searched in the whole
command text. A text that cannot be split (an unclosed quote) is denied when a guardrail needs
its words. This stops mistakes and careless automation, not a determined adversary: a shell
can build a command at run time (``$X``, ``eval``, a script file) that no reading of the text
sees. ``docs/guardrails.md`` says so to the people writing rules.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from collections.abc import Iterator, Sequence
from typing import Final

from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import ALLOW, UNPARSEABLE_RULE, Decision

__all__ = ["SHELLS", "CommandGuard", "Unreadable", "simple_commands", "unwrapped"]

_OPERATORS: Final = frozenset({";", "&", "&&", "|", "||", "|&", ";;", "(", ")", "\n"})
#: Shells: what they run with ``-c TEXT`` is checked, and (``programs.py``) one without a
#: command reads its program from stdin. The one list both readings use.
SHELLS: Final = frozenset(
    {
        "sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "ash", "hush",
        "yash", "posh", "fish", "csh", "tcsh", "nu", "xonsh", "elvish", "pwsh", "powershell",
    }
)  # fmt: skip
_POWERSHELLS: Final = frozenset({"pwsh", "powershell"})
# GNU parallel: its options that take a value, and the words that start its argument lists.
_PARALLEL_VALUES: Final = frozenset(
    {"-j", "--jobs", "-P", "--max-procs", "-S", "--sshlogin", "--slf", "--sshloginfile", "-a",
     "--arg-file", "-d", "--delimiter", "-E", "--eof", "-I", "-n", "--max-args", "-N", "-L",
     "--max-lines", "-l", "-s", "--max-chars", "-C", "--colsep", "--results", "--res",
     "--joblog", "--tmpdir", "--delay", "--timeout", "--retries", "--halt", "--memfree",
     "--load", "--workdir", "--wd", "--env", "--basefile", "--bf", "--return",
     "--transferfile", "--tf", "--tag-string", "--tagstring", "--block", "--recend",
     "--recstart", "--sqlmaster", "--sqlworker", "--limit", "--nice"}
)  # fmt: skip
_PARALLEL_SOURCES: Final = frozenset({":::", "::::", ":::+", "::::+"})
_PARALLEL_ARGUMENTS: Final = 100  # arguments of its first list checked in the command each
# Launchers that run the rest of their words as a command, and how many option words with a
# value each takes (e.g. `sudo -u root`), so the command they start is what gets checked.
_LAUNCHERS: Final[dict[str, frozenset[str]]] = {
    "sudo": frozenset(
        {"-u", "-g", "-h", "-p", "-C", "-D", "-r", "-t", "-U", "--user", "--group", "--host",
         "--prompt", "--close-from", "--chdir", "--role", "--type", "--other-user"}
    ),
    "doas": frozenset({"-u", "-C"}),
    "env": frozenset({"-u", "-C", "-S", "--unset", "--chdir", "--split-string"}),
    "nohup": frozenset(),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-p", "--class", "--classdata", "--pid"}),
    "time": frozenset({"-f", "-o", "--format", "--output"}),
    "command": frozenset(),
    "exec": frozenset({"-a"}),
    "builtin": frozenset(),
    "stdbuf": frozenset({"-i", "-o", "-e", "--input", "--output", "--error"}),
    "chroot": frozenset({"--userspec", "--groups"}),
    "timeout": frozenset({"-s", "-k", "--signal", "--kill-after"}),
    "xargs": frozenset(
        {"-I", "-L", "-n", "-P", "-d", "-E", "-s", "-a", "--arg-file", "--delimiter",
         "--max-args", "--max-procs", "--max-lines", "--max-chars", "--eof"}
    ),
    "setsid": frozenset(),
    "busybox": frozenset(),
    "nsenter": frozenset({"-t", "--target", "-S", "--setuid", "-G", "--setgid"}),
    "unshare": frozenset({"--setuid", "--setgid", "-S", "-G"}),
    "chpst": frozenset({"-u", "-U", "-e", "-/", "-n", "-l", "-L", "-m", "-d", "-o", "-p",
                        "-f", "-c", "-r", "-t"}),
    "taskset": frozenset({"-c", "--cpu-list"}),
    "flock": frozenset({"-w", "--timeout", "-E", "--conflict-exit-code"}),
    "watch": frozenset({"-n", "--interval", "-d", "--differences"}),
}  # fmt: skip
# Launchers whose first word after the options is not the command: its value (chroot's new
# root, timeout's duration, taskset's mask, flock's lock file).
_LEADING_ARGUMENT: Final = frozenset({"chroot", "timeout", "taskset", "flock"})
# Options that give a command as one shell text (`su -c TEXT`, `flock F -c TEXT`).
_TEXT_OPTIONS: Final[dict[str, frozenset[str]]] = {
    "su": frozenset({"-c", "--command", "--session-command"}),
    "runuser": frozenset({"-c", "--command", "--session-command"}),
    "flock": frozenset({"-c", "--command"}),
    "script": frozenset({"-c", "--command"}),
}
# Reserved words that may open a simple command inside a compound one (`if …; then rm …`).
_KEYWORDS: Final = frozenset(
    {"if", "then", "else", "elif", "fi", "do", "done", "while", "until", "!", "{", "}"}
)
_REDIRECTION: Final = re.compile(
    r"(?:[0-9]+|\{[A-Za-z_][A-Za-z0-9_]*\})?(?:&>>|&>|<<<|<<-|<<|<>|<&|>&|>>|>\||<|>)(.*)",
    re.DOTALL,
)
"""A redirection word (``2>&1``, ``>/dev/null``, ``<in``), with its target attached or not: one
may stand before the command name (``>/dev/null rm -rf /``)."""
_REDIRECTED_NAME: Final = re.compile(r"([^<>]+)[<>]", re.DOTALL)
"""A command name with a redirection attached (``rm>/dev/null``, ``rm<&0``)."""
_EXPANDED: Final = frozenset("{}*?[")  # brace and glob expansion of a command name
_ASSIGNMENT: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_ARITHMETIC: Final = re.compile(r"\$?\(\([^()]*\)\)")
_SUBSTITUTION: Final = re.compile(r"\$\(([^()]*)\)|`([^`]*)`")
_MAX_DEPTH: Final = 8  # nested `sh -c` / `$(…)` readings; deeper text is denied as unreadable
_MAX_LAUNCHERS: Final = 64  # launchers one in another (`sudo env nice …`), the same


class Unreadable(Exception):
    """The text cannot be split into commands the way a shell would."""


_Unreadable = Unreadable


def simple_commands(text: str) -> list[list[str]]:
    """Every simple command of a shell text, each launcher level on its own (``sudo sh -c
    'ls'`` gives ``sudo sh -c ls``, ``sh -c ls`` and ``ls``). Raises Unreadable."""
    return list(_simple_commands(text, 0))


def unwrapped(argv: Sequence[str]) -> list[list[str]]:
    """As `simple_commands`, for an argv that runs without a shell. Raises Unreadable."""
    return list(_unwrap(list(argv), 0))


class CommandGuard:
    """One connection's command guardrails; holds compiled rules only, no session state."""

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self._globs: list[tuple[str, str]] = [
            (g.name, glob) for g in guardrails for glob in g.deny_commands
        ]
        self._patterns: list[tuple[str, re.Pattern[str]]] = [
            (g.name, re.compile(p)) for g in guardrails for p in g.deny_patterns
        ]

    def __bool__(self) -> bool:
        return bool(self._globs or self._patterns)

    def check_text(self, text: str) -> Decision:
        """Decide a command text that a remote shell will interpret (SSH)."""
        if not self:
            return ALLOW
        denied = self._pattern(text)
        if denied is not None or not self._globs:
            return denied or ALLOW
        try:
            return self._words(_simple_commands(text, 0))
        except _Unreadable as exc:
            return _unreadable(str(exc))

    def check_argv(self, argv: Sequence[str]) -> Decision:
        """Decide an argv that runs without a shell (a `shell` connection)."""
        if not self:
            return ALLOW
        denied = self._pattern(shlex.join(argv))
        if denied is not None or not self._globs:
            return denied or ALLOW
        try:
            return self._words(_unwrap(list(argv), 0))
        except _Unreadable as exc:
            return _unreadable(str(exc))

    def check_program(self, language: str, command: Sequence[str], program: str) -> Decision:
        """Decide a program that `command` reads from stdin, as if it were on its command line:
        shell text is split like one (``sh -c PROGRAM``), another language's text is the
        command's last word (patterns see it whole), and xargs's words are its arguments."""
        if not self:
            return ALLOW
        if language == "shell":
            return self.check_text(program)
        if language == "arguments":
            try:
                words = shlex.split(program)
            except ValueError as exc:
                return _unreadable(str(exc).lower())
            return self.check_argv([*command, *words])
        return self.check_argv([*command, program])

    def _pattern(self, text: str) -> Decision | None:
        for name, pattern in self._patterns:
            if pattern.search(text):
                return Decision(
                    False, name, f"denied by guardrail {name!r}: matches /{pattern.pattern}/"
                )
        return None

    def _words(self, commands: Iterator[list[str]]) -> Decision:
        for words in commands:
            if any(char in _EXPANDED for char in words[0]):
                # `{rm,-rf,/}` or `/bin/r?`: the shell makes the command at run time
                raise _Unreadable(f"the command name {words[0]!r} is expanded by the shell")
            # With its redirections and without: `rm 2>/dev/null -rf /` runs `rm -rf /`.
            for line in dict.fromkeys((" ".join(words), " ".join(_unredirected(words)))):
                for name, glob in self._globs:
                    if fnmatch.fnmatchcase(line, glob):
                        return Decision(
                            False, name, f"denied by guardrail {name!r}: {line!r} matches {glob!r}"
                        )
        return ALLOW


def _unredirected(words: list[str]) -> list[str]:
    """A command's words without the redirections among its arguments (``2>/dev/null``, ``>
    out``)."""
    out = words[:1]
    i = 1
    while i < len(words):
        redirection = _REDIRECTION.fullmatch(words[i])
        if redirection is None:
            out.append(words[i])
        elif not redirection.group(1):
            i += 1  # its target is the next word
        i += 1
    return out


def _unreadable(why: str) -> Decision:
    return Decision(
        False,
        UNPARSEABLE_RULE,
        f"denied: the command cannot be read ({why}), so its guardrails cannot vouch for it",
    )


def _simple_commands(text: str, depth: int) -> Iterator[list[str]]:
    """The simple commands of a shell text, with launchers looked through."""
    if depth > _MAX_DEPTH:
        raise _Unreadable("commands nested too deeply")
    text = _ARITHMETIC.sub(" 0 ", text)  # `$((6*7))`, `(( i++ ))`: numbers, not commands
    for match in _SUBSTITUTION.finditer(text):
        inner = match.group(1) if match.group(1) is not None else match.group(2)
        yield from _simple_commands(inner, depth + 1)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()\n")
    lexer.whitespace = " \t\r"  # a newline separates commands, like `;`
    lexer.whitespace_split = True
    lexer.commenters = ""  # `#` starts a comment only at a word's start; keep it literal
    words: list[str] = []
    try:
        tokens = list(lexer)
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise _Unreadable(str(exc).lower()) from None
    for token in [*_duplications_joined(tokens, text), ";"]:
        if token in _OPERATORS or set(token) <= set(";&|()\n"):
            if words:
                yield from _unwrap(words, depth)
            words = []
        else:
            words.append(token)


def _duplications_joined(tokens: list[str], text: str) -> list[str]:
    """``2>&1``, ``>&2`` and ``>|file`` as one word again: the lexer cut them at the ``&`` or
    ``|``, which would read as a command of its own (``1 rm -rf /``) after the redirection.
    The tokens do not show quotes, and a quoted ``'2>'`` before an operator is no redirection
    (``echo '2>' & rm -rf /``): as many must be joined as the text has ``>&``, ``<&`` and
    ``>|`` outside quotes, or the text cannot be read."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if (
            out
            and token in ("&", "|")
            and out[-1].endswith(">" if token == "|" else (">", "<"))
            and i + 1 < len(tokens)
            and not set(tokens[i + 1]) <= set(";&|()\n")
        ):
            out[-1] += token + tokens[i + 1]
            i += 2
            continue
        out.append(token)
        i += 1
    joins = (len(tokens) - len(out)) // 2  # each took two tokens
    operators = joins or any(operator in text for operator in (">&", "<&", ">|"))
    if operators and _unquoted_duplications(text) != joins:
        raise _Unreadable("a quoted `<` or `>` before `&` or `|` reads as a redirection")
    return out


def _unquoted_duplications(text: str) -> int:
    """How many ``>&``, ``<&`` and ``>|`` stand outside quotes and escapes in ``text`` (as the
    lexer of `_simple_commands` reads them: no comments)."""
    count = 0
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\" and quote == '"':
                i += 1
            elif ch == quote:
                quote = ""
        elif ch == "\\":
            i += 1
        elif ch in "'\"":
            quote = ch
        elif text.startswith((">&", "<&", ">|"), i):
            count += 1
        i += 1
    return count


def _unwrap(words: list[str], depth: int) -> Iterator[list[str]]:
    """Yield the command itself and, through launchers and `sh -c`, what it runs."""
    if depth > _MAX_LAUNCHERS:  # each launcher is a recursion: `sudo sudo … rm`
        raise _Unreadable("launchers nested too deeply")
    while words:
        if _ASSIGNMENT.match(words[0]) or words[0] in _KEYWORDS:
            words = words[1:]  # FOO=bar cmd; `then cmd`, `do cmd`, `{ cmd`, `! cmd`
        elif (redirection := _REDIRECTION.fullmatch(words[0])) is not None:
            # `>/dev/null rm -rf /`, `2> err rm …`: redirections may come first
            words = words[1:] if redirection.group(1) else words[2:]
        elif (cut := _REDIRECTED_NAME.match(words[0])) is not None:
            # `rm>/dev/null -rf /`: `<` and `>` end a word; the redirection is an argument
            words = [cut.group(1), words[0][cut.end(1) :], *words[1:]]
        elif words[0] == "coproc":
            # bash's `coproc cmd`, `coproc NAME { cmd; }`
            words = words[2:] if len(words) > 2 and words[2] == "{" else words[1:]
        else:
            break
    if not words:
        return
    yield words
    name = words[0].rsplit("/", 1)[-1]
    if name in _POWERSHELLS:
        yield from _powershell(words, depth)
        return
    if name in SHELLS:
        for i, word in enumerate(words[1:-1], start=1):
            if word.startswith("-") and "c" in word.lstrip("-") and not word.startswith("--"):
                yield from _simple_commands(words[i + 1], depth + 1)
                return
        return
    text_options = _TEXT_OPTIONS.get(name)
    if text_options is not None:
        for i, word in enumerate(words[1:], start=1):
            option, equals, attached = word.partition("=")
            if option.startswith("-") and not option.startswith("--") and len(option) > 2:
                option = f"-{option[-1]}"  # a cluster ending in the option: `-qc TEXT`
            if option in text_options:
                text = attached if equals else (words[i + 1] if i + 1 < len(words) else "")
                yield from _simple_commands(text, depth + 1)
                return
    if name == "parallel":
        yield from _parallel(words[1:], depth)
        return
    takes_value = _LAUNCHERS.get(name)
    if takes_value is None:
        return
    if name == "env" and (split := _env_split_string(words[1:])) is not None:
        yield from _unwrap(split, depth + 1)
        return
    rest = _skip_options(words[1:], takes_value)
    if name == "taskset" and words[1:2] in (["-c"], ["--cpu-list"], ["-p"]):
        pass  # the option took the mask already
    elif name in _LEADING_ARGUMENT and rest:
        rest = rest[1:]
    if name == "env":
        while rest and _ASSIGNMENT.match(rest[0]):
            rest = rest[1:]
    if name == "watch" and rest:
        # watch runs its words as one text through `sh -c`
        yield from _simple_commands(" ".join(rest), depth + 1)
        return
    if rest:
        yield from _unwrap(rest, depth + 1)


def _powershell(words: list[str], depth: int) -> Iterator[list[str]]:
    """``pwsh -Command TEXT`` (any prefix of the name, any case) runs TEXT; an encoded command
    (``-EncodedCommand``, ``-e``, ``-ec``) cannot be read."""
    for i, word in enumerate(words[1:], start=1):
        option = word.lower()
        if option in ("-e", "-ec") or (len(option) > 2 and "-encodedcommand".startswith(option)):
            raise _Unreadable("powershell's encoded command cannot be read")
        if len(option) > 1 and "-command".startswith(option):
            yield from _simple_commands(" ".join(words[i + 1 :]), depth + 1)
            return


def _env_split_string(args: list[str]) -> list[str] | None:
    """The command ``env -S TEXT`` (``--split-string``, also in a cluster: ``-iS TEXT``) runs:
    TEXT split into words, then the words after env's options. None without -S."""
    takes_value = _LAUNCHERS["env"]
    for i, word in enumerate(args):
        if not word.startswith("-") or word in ("-", "--"):
            return None
        if word.startswith("--"):
            option, equals, value = word.partition("=")
            if option == "--split-string":
                text, after = (value, i + 1) if equals else (_at(args, i + 1), i + 2)
                return _env_words(text, args[after:])
            continue
        for at, letter in enumerate(word[1:], start=1):
            if letter == "S":
                attached = word[at + 1 :]
                text, after = (attached, i + 1) if attached else (_at(args, i + 1), i + 2)
                return _env_words(text, args[after:])
            if f"-{letter}" in takes_value:
                break  # the rest of the cluster is another option's value
    return None


def _at(words: list[str], i: int) -> str:
    return words[i] if i < len(words) else ""


def _env_words(text: str, rest: list[str]) -> list[str]:
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise _Unreadable(f"env -S: {str(exc).lower()}") from None
    words += _skip_options(rest, _LAUNCHERS["env"])
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    return words


def _parallel(args: list[str], depth: int) -> Iterator[list[str]]:
    """GNU parallel runs its command words, joined, through a shell, once per argument of its
    lists (``::: A B``), the argument in place of ``{}`` or appended. Without a command it
    runs the lines of stdin (held and checked as a program on stdin, ``programs.py``)."""
    rest = _skip_options(args, _PARALLEL_VALUES)
    end = next((i for i, w in enumerate(rest) if w in _PARALLEL_SOURCES), len(rest))
    command = " ".join(rest[:end])
    if not command:
        return
    yield from _simple_commands(command, depth + 1)
    following = rest[end + 1 :]
    first = following[: next((i for i, w in enumerate(following) if w in _PARALLEL_SOURCES),
                             len(following))]  # fmt: skip
    for argument in first[:_PARALLEL_ARGUMENTS]:
        quoted = shlex.quote(argument)
        text = command.replace("{}", quoted) if "{}" in command else f"{command} {quoted}"
        yield from _simple_commands(text, depth + 1)


def _skip_options(words: list[str], takes_value: frozenset[str]) -> list[str]:
    """The words after a launcher's options. A short option's value may be attached (``-uroot``)
    or be the next word, also at the end of a cluster (``-Eu root``); a long option's is
    ``--user=root`` or the next word."""
    i = 0
    while i < len(words) and words[i].startswith("-") and words[i] != "-":
        word = words[i]
        if word == "--":
            return words[i + 1 :]
        i += 1
        if word.startswith("--"):
            if "=" not in word and word in takes_value:
                i += 1
            continue
        for at, letter in enumerate(word[1:], start=1):
            if f"-{letter}" in takes_value:
                if at == len(word) - 1:
                    i += 1  # its value is the next word
                break  # the rest of the cluster is the value
    return words[i:]
