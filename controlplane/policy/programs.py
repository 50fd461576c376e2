"""Which commands read their *program* from stdin, so that stdin must be recorded and checked.

``echo 'rm -rf /srv' | gatehouse exec ops -- sh`` starts ``sh``, which runs what arrives on
stdin: the command line says ``sh`` and nothing of what ran. Such a session's stdin is a
program, not data, and the control plane holds it, records it and checks it before the
command starts (``controlplane/relay/term.py``). ``tar c . | gatehouse exec web -- tar x``
sends data to a program that does not interpret it, and keeps streaming.

A command reads its program from stdin (`StdinReader`) when it is

* a shell (``sh``, ``bash``, ``busybox sh``…) without ``-c`` or a script file, or with ``-s``;
* an interpreter (``python*``, ``perl``, ``ruby``, ``node``, ``php``, ``lua``, ``Rscript``…)
  without a program on its command line or with ``-``;
* a database client (``psql``, ``mysql``, ``sqlite3``…) without ``-c``/``-e``/``-f FILE``;
* something that turns stdin into commands run now or later: ``xargs`` (arguments),
  ``ssh HOST`` without a command (a remote shell), ``su``, ``sudo -s``/``-i``, ``at``,
  ``crontab``, ``ed``, ``gdb``, ``sftp``;
* any of these reached through launchers (``env``, ``sudo``, ``timeout``, ``nice``, ``nohup``,
  ``sh -c``…, with the splitter of ``commands.py``), or given ``/dev/stdin`` as its script.

When unsure, the answer is yes (fail closed): a text that cannot be split, a command name
that is a variable (``$SHELL``), a tool that runs commands elsewhere (a container, a
namespace, another account) with a shell or interpreter among its words (``docker exec -i c
sh``, ``nsenter -t 1 bash``). The cost of a wrong yes is small — the stdin is held until it
ends (up to a limit) and recorded — while a wrong no lets a program run unrecorded. Any other
command that merely names one (``grep bash /etc/passwd``) keeps streaming. This is a reading
of the command line, not of the target: a script file on
the target can itself read stdin as commands, as no gateway can see.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from controlplane.policy.commands import Unreadable, simple_commands, unwrapped

__all__ = ["StdinReader", "stdin_readers"]

Language = Literal["shell", "other", "arguments"]
"""How the program is checked: shell text (split like a command line), text of another
language (patterns only, and globs on the command with the text as its last word), or words
appended to a command (xargs)."""


@dataclass(frozen=True, slots=True)
class StdinReader:
    """A command that will read its program from stdin, and in which language."""

    command: tuple[str, ...]
    language: Language

    def as_event(self) -> dict[str, object]:
        return {"command": list(self.command), "language": self.language}


SHELLS: Final = frozenset(
    {
        "sh", "bash", "rbash", "dash", "zsh", "ksh", "ksh93", "mksh", "pdksh", "ash", "hush",
        "yash", "posh", "fish", "csh", "tcsh", "nu", "xonsh", "elvish", "pwsh", "powershell",
    }
)  # fmt: skip
# Interpreters: the options that give the program on the command line (then stdin is data),
# and the options that take a separate value (so the value is not taken for a script file).
_INTERPRETERS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    "python": (frozenset({"-c", "-m"}), frozenset({"-W", "-X", "-Q"})),
    "perl": (frozenset({"-e", "-E"}), frozenset({"-I", "-M", "-m", "-x"})),
    "ruby": (frozenset({"-e"}), frozenset({"-I", "-r", "-C", "-E", "-x"})),
    "irb": (frozenset(), frozenset({"-I", "-r"})),
    "node": (
        frozenset({"-e", "--eval", "-p", "--print"}),
        frozenset({"-r", "--require", "--import", "--loader", "--input-type"}),
    ),
    "php": (frozenset({"-r", "-f", "-B", "-R", "-F", "-E"}), frozenset({"-d", "-c", "-z"})),
    "lua": (frozenset({"-e"}), frozenset({"-l"})),
    "luajit": (frozenset({"-e"}), frozenset({"-l", "-j", "-O"})),
    "tclsh": (frozenset(), frozenset({"-encoding"})),
    "wish": (frozenset(), frozenset({"-encoding"})),
    "expect": (frozenset({"-c", "-f"}), frozenset()),
    "Rscript": (frozenset({"-e"}), frozenset()),
    "R": (frozenset({"-e", "-f", "--file"}), frozenset()),
    "julia": (frozenset({"-e", "-E", "--eval", "--print"}), frozenset({"-L", "--load"})),
    "guile": (frozenset({"-c", "-s"}), frozenset({"-L", "-l", "-e"})),
    "sbcl": (frozenset({"--script", "--eval", "--load"}), frozenset()),
    "jshell": (frozenset(), frozenset({"--class-path", "-R"})),
    "ghci": (frozenset({"-e"}), frozenset()),
    "erl": (frozenset({"-eval", "-s", "-run"}), frozenset()),
    "elixir": (frozenset({"-e", "--eval"}), frozenset({"-r", "-pa"})),
    "iex": (frozenset(), frozenset({"-r", "-S"})),
    "osascript": (frozenset({"-e"}), frozenset()),
    "bc": (frozenset(), frozenset()),
    "deno": (frozenset({"eval"}), frozenset()),
    "bun": (frozenset({"-e", "--eval", "-p", "--print"}), frozenset()),
}
_INTERPRETER_PATTERNS: Final = (
    (re.compile(r"^python[0-9.]*[a-z]?$|^pypy[0-9.]*$|^ipython[0-9.]*$"), "python"),
    (re.compile(r"^perl[0-9.]*$"), "perl"),
    (re.compile(r"^ruby[0-9.]*$|^jruby$"), "ruby"),
    (re.compile(r"^nodejs$"), "node"),
    (re.compile(r"^php[0-9.]*(-cli)?$"), "php"),
    (re.compile(r"^lua[0-9.]*$"), "lua"),
    (re.compile(r"^tclsh[0-9.]*$"), "tclsh"),
)
# Database clients: positional words name a database, not a program; these options give one.
_DATABASES: Final[dict[str, frozenset[str]]] = {
    "psql": frozenset({"-c", "--command", "-f", "--file"}),
    "mysql": frozenset({"-e", "--execute"}),
    "mariadb": frozenset({"-e", "--execute"}),
    "cqlsh": frozenset({"-e", "--execute", "-f", "--file"}),
    "mongo": frozenset({"--eval", "-f", "--file"}),
    "mongosh": frozenset({"--eval", "-f", "--file"}),
    "clickhouse-client": frozenset({"-q", "--query", "--queries-file"}),
    "sqlcmd": frozenset({"-Q", "-q", "-i"}),
}
# Commands whose stdin is always commands (to run now, later, or on another machine).
_ALWAYS: Final[dict[str, Language]] = {
    "ed": "other",
    "ex": "other",
    "gdb": "other",
    "sftp": "other",
    "ftp": "other",
    "lftp": "other",
    "batch": "shell",
}
_INTERACTIVE: Final[dict[str, frozenset[str]]] = {
    "python": frozenset({"-i"}),
    "node": frozenset({"-i", "--interactive"}),
    "php": frozenset({"-a"}),
    "lua": frozenset({"-i"}),
    "luajit": frozenset({"-i"}),
}
# A program on the command line that reads stdin: what it reads may be run as code.
_READS_STDIN: Final = re.compile(
    r"stdin|STDIN|<>|/dev/fd/0|\bfileinput\b|\binput\s*\(|readline|\bio\.read\b|ARGF|\bgets\b"
    r"|\bsys\.argv\b.*\bexec\b|file_get_contents\(\s*['\"]php://stdin"
)
_RUNS_CODE: Final = re.compile(r"\beval\b|\bsystem\b|\bexec\b|`|\bqx\b|\bspawn\b|\bopen\s*\(.*\|")
_REMOTE_EXEC: Final = frozenset(
    {
        "docker", "podman", "nerdctl", "crictl", "ctr", "kubectl", "oc", "lxc", "lxc-attach",
        "lxc-execute", "incus", "machinectl", "systemd-run", "systemd-nspawn", "nsenter",
        "unshare", "chpst", "runuser", "sg", "firejail", "bwrap", "proot", "schroot",
        "toolbox", "distrobox", "vagrant", "gcloud", "aws", "az", "mosh", "setpriv", "capsh",
        "setsid", "flock", "script", "expect", "unbuffer", "parallel", "watch", "dbus-run-session",
    }
)  # fmt: skip
_SCRIPT_OPTIONS: Final = frozenset({"-f", "--file", "-x", "--command-file"})
_EXPANDED: Final = frozenset("$`{}*?[")  # a command name the shell expands at run time
_STDIN_PATHS: Final = frozenset({"-", "/dev/stdin", "/dev/fd/0", "/proc/self/fd/0"})
_SCRIPTED_TEXT_TOOLS: Final = frozenset({"awk", "gawk", "mawk", "nawk", "sed", "gsed", "jq"})
_SSH_VALUE_OPTIONS: Final = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
_SHELL_VALUE_OPTIONS: Final = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})


def stdin_readers(*, argv: Sequence[str] = (), text: str | None = None) -> list[StdinReader]:
    """The commands of an argv (run without a shell) or a command text (read by a shell) that
    will read their program from stdin; empty when stdin is only data."""
    try:
        commands = unwrapped(argv) if text is None else simple_commands(text)
    except Unreadable:
        return [StdinReader((text or " ".join(argv),), "shell")]
    found: list[StdinReader] = []
    for words in commands:
        reader = _reader(words, 0)
        if reader is not None and reader not in found:
            found.append(reader)
    return found


def interpreter(name: str) -> str | None:
    """The interpreter family a command name belongs to (``python3.11`` → ``python``)."""
    if name in _INTERPRETERS:
        return name
    for pattern, family in _INTERPRETER_PATTERNS:
        if pattern.match(name):
            return family
    return None


def _reader(words: list[str], depth: int) -> StdinReader | None:
    if not words or depth > 8:
        return None
    command = tuple(words)
    name = words[0].rsplit("/", 1)[-1]
    args = words[1:]
    if not name or any(char in _EXPANDED for char in words[0]):
        return StdinReader(command, "shell")  # `$SHELL`, `/bin/s?`, `{sh,}`: decided at run time
    if name == "busybox":
        return _reader(args, depth + 1) if args else None
    if name in SHELLS:
        return _shell(command, args)
    if name == "eval" and any("$" in word or "`" in word for word in args):
        return StdinReader(command, "shell")  # `eval "$(cat)"`: text decided at run time
    if name in (".", "source"):
        return StdinReader(command, "shell") if args and args[0] in _STDIN_PATHS else None
    family = interpreter(name)
    if family is not None:
        return _interpreter(command, args, *_INTERPRETERS[family])
    if name in _DATABASES:
        return _database(command, name, args)
    if name == "sqlite3":
        return None if len(_positionals(args, frozenset())) >= 2 else StdinReader(command, "other")
    if name in _ALWAYS:
        return StdinReader(command, _ALWAYS[name])
    if name in _SCRIPTED_TEXT_TOOLS:
        return _script_from_stdin(command, args)
    if name == "xargs":
        return StdinReader(command, "arguments")
    if name == "ssh":
        return _ssh(command, args, depth)
    if name in ("su", "runuser"):
        return _su(command, args, depth)
    if name in ("sudo", "doas"):
        return _sudo(command, args)
    if name == "at":  # reads the commands to run later from stdin, unless -f or a listing
        if any(a.startswith(("-f", "-l", "-d", "-r", "-c")) for a in args):
            return None
        return StdinReader(command, "shell")
    if name == "crontab":
        options = [a for a in args if a.startswith("-") and a != "-"]
        if any(o in ("-l", "-r", "-e") for o in options):
            return None
        files = [a for a in args if not a.startswith("-") or a == "-"]
        return StdinReader(command, "other") if not files or files[-1] in _STDIN_PATHS else None
    if name == "env":
        return _env_split(command, args, depth)  # other launchers: commands.py unwraps them
    if name not in _REMOTE_EXEC:
        return None
    # A tool that runs a command elsewhere (a container, a namespace, another account): fail
    # closed when one of its words names something that reads a program
    # (`docker exec -i ctr sh`, `kubectl exec -i pod -- python3`, `nsenter -t 1 bash`).
    for word in args:
        first = word.split(maxsplit=1)[0] if word.strip() else ""
        base = first.rsplit("/", 1)[-1]
        if base in SHELLS or interpreter(base) is not None or base in _DATABASES:
            return StdinReader(command, "shell" if base in SHELLS else "other")
    return None


def _shell(command: tuple[str, ...], args: list[str]) -> StdinReader | None:
    """A shell reads stdin unless ``-c`` or a script file gives it its program (``-s``:
    stdin all the same)."""
    reader = StdinReader(command, "shell")
    i = 0
    while i < len(args):
        word = args[i]
        if word == "--":
            rest = args[i + 1 :]
            return reader if not rest or rest[0] in _STDIN_PATHS else None
        if word in _SHELL_VALUE_OPTIONS:
            i += 2
            continue
        if word.startswith("--"):
            if word == "--command" or word.startswith("--command="):
                return None
            i += 1
            continue
        if word.startswith(("-", "+")) and len(word) > 1:
            letters = word[1:]
            if "s" in letters:
                return reader
            if "c" in letters or ("C" in letters and command[0].endswith("fish")):
                return None
            i += 1
            continue
        return reader if word in _STDIN_PATHS else None  # a script file
    return reader


def _interpreter(
    command: tuple[str, ...],
    args: list[str],
    program: frozenset[str],
    takes_value: frozenset[str],
) -> StdinReader | None:
    """An interpreter reads stdin unless an option or a script file gives the program; an
    interactive flag (``python -i``) reads it after the program, and a program on the command
    line that reads stdin (``exec(sys.stdin.read())``, ``perl -ne 'system $_'``) runs it."""
    reader = StdinReader(command, "other")
    name = command[0].rsplit("/", 1)[-1]
    clustered = name.startswith(("perl", "ruby"))  # perl -ne: the program option among letters
    i = 0
    while i < len(args):
        word = args[i]
        if word in _STDIN_PATHS or word in _INTERACTIVE.get(interpreter(name) or "", ()):
            return reader
        if word == "--":
            rest = args[i + 1 :]
            return reader if not rest or rest[0] in _STDIN_PATHS else None
        option, equals, attached = word.partition("=")
        cluster = word.startswith("-") and not word.startswith("--") and clustered
        if option in program or (cluster and any(f"-{c}" in program for c in word[1:])):
            text = attached if equals else (args[i + 1] if i + 1 < len(args) else "")
            loops = cluster and ("n" in word[1:] or "p" in word[1:])
            if text in _STDIN_PATHS or _READS_STDIN.search(text):
                return reader
            if loops and _RUNS_CODE.search(text):
                return reader  # each line of stdin goes to eval/system
            return None
        if word in takes_value:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return None  # a script file, or a subcommand that names one
    return reader


def _database(command: tuple[str, ...], name: str, args: list[str]) -> StdinReader | None:
    giving = _DATABASES[name]
    for i, word in enumerate(args):
        option, _, attached = word.partition("=")
        if option in giving:
            value = attached if attached else (args[i + 1] if i + 1 < len(args) else "")
            return StdinReader(command, "other") if value in _STDIN_PATHS else None
    return StdinReader(command, "other")


def _script_from_stdin(command: tuple[str, ...], args: list[str]) -> StdinReader | None:
    """awk, sed, jq: the program is an argument, unless ``-f`` names stdin."""
    for i in range(len(args)):
        value = _option_value(args, i, _SCRIPT_OPTIONS, short="-f")
        if value is not None and value in _STDIN_PATHS:
            return StdinReader(command, "other")
    return None


def _option_value(args: list[str], i: int, names: frozenset[str], short: str) -> str | None:
    """The value of option `args[i]` if it is one of `names` (``--file=V``, ``-f V``) or the
    short option with its value attached (``-fV``); None when it is another word."""
    word = args[i]
    option, equals, attached = word.partition("=")
    if option in names:
        if equals:
            return attached
        return args[i + 1] if i + 1 < len(args) else ""
    if word.startswith(short) and len(word) > len(short) and not word.startswith("--"):
        return word[len(short) :]
    return None


def _ssh(command: tuple[str, ...], args: list[str], depth: int) -> StdinReader | None:
    """``ssh HOST`` without a command is a remote shell reading stdin; with one, the remote
    command is read as a shell reads it."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        word = args[i]
        if word == "--":
            i += 1
            break
        if "N" in word[1:]:
            return None  # no remote command at all
        value_at = next((j for j, c in enumerate(word[1:], 1) if c in _SSH_VALUE_OPTIONS), None)
        i += 2 if value_at is not None and value_at == len(word) - 1 else 1
    rest = args[i + 1 :]  # after the host
    if not rest:
        return StdinReader(command, "shell")
    remote = stdin_readers(text=" ".join(rest))
    return StdinReader(command, "shell") if remote and depth < 8 else None


def _su(command: tuple[str, ...], args: list[str], depth: int) -> StdinReader | None:
    for i, word in enumerate(args):
        option, _, attached = word.partition("=")
        if option in ("-c", "--command", "--session-command"):
            text = attached or (args[i + 1] if i + 1 < len(args) else "")
            return StdinReader(command, "shell") if stdin_readers(text=text) else None
    return StdinReader(command, "shell")


def _sudo(command: tuple[str, ...], args: list[str]) -> StdinReader | None:
    """``sudo -s``/``-i`` (``doas -s``) without a command is a shell; with one, commands.py
    unwraps it. Option values may be attached or the next word (``-su root``)."""
    values = frozenset("ughpCDrtU")
    long_values = {"--user", "--group", "--host", "--prompt", "--close-from", "--chdir"}
    shell = False
    i = 0
    while i < len(args) and args[i].startswith("-"):
        word = args[i]
        i += 1
        if word == "--":
            break
        if word.startswith("--"):
            shell = shell or word in ("--shell", "--login")
            i += 1 if word in long_values else 0
            continue
        for at, letter in enumerate(word[1:], start=1):
            if letter in "si":
                shell = True
            if letter in values:
                i += 1 if at == len(word) - 1 else 0
                break
    return StdinReader(command, "shell") if shell and i >= len(args) else None


def _env_split(command: tuple[str, ...], args: list[str], depth: int) -> StdinReader | None:
    """``env -S 'sh -s'`` runs a split string that commands.py does not look into."""
    for i in range(len(args)):
        text = _option_value(args, i, frozenset({"-S", "--split-string"}), short="-S")
        if text is not None:
            readers = stdin_readers(text=text)
            return readers[0] if readers else None
    return None


def _positionals(args: list[str], takes_value: frozenset[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i].startswith("-"):
            i += 2 if args[i] in takes_value or args[i] in ("-cmd", "-init", "-separator") else 1
            continue
        out.append(args[i])
        i += 1
    return out
