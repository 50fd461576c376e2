"""Which commands read their *program* from stdin, so that stdin must be recorded and checked.

``echo 'rm -rf /srv' | gatehouse exec ops -- sh`` starts ``sh``, which runs what arrives on
stdin: the command line says ``sh`` and nothing of what ran. Such a session's stdin is a
program, not data, and the control plane holds it, records it and checks it before the
command starts (``controlplane/relay/term/inspector.py``). ``tar c . | gatehouse exec web -- tar x``
sends data to a program that does not interpret it, and keeps streaming.

A command reads its program from stdin (`StdinReader`) when it is

* a shell (``sh``, ``bash``, ``busybox sh``…) without ``-c`` or a script file, or with ``-s``;
* an interpreter (``python*``, ``perl``, ``ruby``, ``node``, ``php``, ``lua``, ``m4``, ``dc``,
  ``Rscript``…) without a program on its command line or with ``-``;
* a database client (``psql``, ``mysql``, ``sqlite3``…) without ``-c``/``-e``/``-f FILE``;
* something that turns stdin into commands run now or later: ``xargs`` and ``parallel``,
  ``ssh HOST`` without a command, ``su``, ``sudo -s``/``-i``, ``newgrp``, ``pkexec``,
  ``script`` without ``-c``, ``chroot``/``nsenter``/``unshare`` without a command, ``docker
  run``, ``at``, ``crontab``, ``ed``, ``gdb``, ``vim -es`` (any ``vi`` without a terminal),
  ``make -f -``, ``sed e``, ``awk '{system($0)}'``;
* any of these reached through launchers (``env``, ``sudo``, ``timeout``, ``nice``, ``nohup``,
  ``sh -c``…, with the splitter of ``commands.py``), or given ``/dev/stdin`` as its script.

**Unsure is yes** (fail closed), and says why (`StdinReader.unsure`):

* a text that cannot be split, a command name that is a variable (``$SHELL``), a program on
  the command line that is decided at run time (``python3 -c "$(cat)"``);
* any redirection of fd 0 in shell text (``sh <&0``, ``exec 3<&0; sh <&3``, ``bash <(cat)``,
  here-strings, ``0<file``; see ``redirections.py``), and a path to a descriptor
  (``/dev/fd/3``) where a script goes;
* a command this module does not know (``pkexec``, ``strace -f``, ``chrt 1``, ``ip netns exec
  X``, ``find -exec``, ``git -c alias.x='!sh'``, an in-house wrapper) with a shell,
  interpreter or database client among its words, or a path to stdin; and a command-line
  program that starts one (``python3 -c 'os.system("sh")'``).

The cost of a wrong yes is small — the stdin is held until it ends (up to a limit) and
recorded — while a wrong no lets a program run unrecorded. Commands known to never run their
arguments (`_DATA_ONLY`: ``grep bash /etc/passwd``, ``ls /bin/sh``) keep streaming, as do
unknown ones that name no such program (``tar x -C /srv``). This is a reading of the command
line, not of the target: a script file on the target, or an unknown program that reads its own
command language from stdin without naming one, is as invisible here as to any gateway.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from controlplane.policy.commands import SHELLS, Unreadable, simple_commands, unwrapped
from controlplane.policy.redirections import stdin_redirection

__all__ = ["SHELLS", "StdinReader", "interpreter", "stdin_readers"]

Language = Literal["shell", "other", "arguments"]
"""How the program is checked: shell text (split like a command line), text of another
language (patterns only, and globs on the command with the text as its last word), or words
appended to a command (xargs)."""


@dataclass(frozen=True, slots=True)
class StdinReader:
    """A command that will (or may: `unsure` says why) read its program from stdin, and in
    which language."""

    command: tuple[str, ...]
    language: Language
    unsure: str | None = None

    def as_event(self) -> dict[str, object]:
        event: dict[str, object] = {"command": list(self.command), "language": self.language}
        if self.unsure is not None:
            event["unsure"] = self.unsure
        return event

    def describe(self) -> str:
        """For the caller: which command, and how sure the gateway is."""
        command = " ".join(self.command)
        if self.unsure is None:
            return f"{command} reads its program from stdin"
        return f"{command} may read its program from stdin ({self.unsure})"


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
    # Macro and calculator languages that run shell commands (m4 `syscmd`, dc `!`, gnuplot
    # `system`), and more REPLs.
    "m4": (frozenset(), frozenset({"-D", "-U", "-I", "-o", "-l", "-t", "-F", "-R"})),
    "dc": (frozenset({"-e", "--expression", "-f", "--file"}), frozenset()),
    "gnuplot": (frozenset(), frozenset({"-e", "-c"})),
    "octave": (frozenset({"--eval"}), frozenset({"-p", "--path"})),
    "ocaml": (frozenset(), frozenset({"-I", "-init"})),
    "racket": (frozenset({"-e", "-f", "-t", "-r", "-u"}), frozenset({"-l", "-S"})),
    "scala": (frozenset({"-e"}), frozenset({"-cp", "-classpath"})),
}
_INTERPRETER_PATTERNS: Final = (
    (re.compile(r"^python[0-9.]*[a-z]?$|^pypy[0-9.]*$|^ipython[0-9.]*$"), "python"),
    (re.compile(r"^perl[0-9.]*$"), "perl"),
    (re.compile(r"^ruby[0-9.]*$|^jruby$"), "ruby"),
    (re.compile(r"^nodejs$"), "node"),
    (re.compile(r"^php[0-9.]*(-cli)?$"), "php"),
    (re.compile(r"^lua[0-9.]*$"), "lua"),
    (re.compile(r"^tclsh[0-9.]*$"), "tclsh"),
    (re.compile(r"^octave-cli$"), "octave"),
)
# Interpreter names too short or too common to look for inside other words.
_WHOLE_WORD_INTERPRETERS: Final = frozenset({"R", "bc", "dc", "m4", "wish", "expect", "erl"})
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
    "lldb": "other",
    "swipl": "other",  # stays at its prompt after loading a file
    "sftp": "other",
    "ftp": "other",
    "lftp": "other",
    "batch": "shell",
}
# Commands that start a shell, or a session somewhere the command line does not show (another
# account or group, a container, another host), which reads this stdin; always held.
_SHELL_STARTERS: Final = frozenset(
    {
        "newgrp", "sg", "pkexec", "run0", "login", "fakeroot", "fakechroot", "firejail",
        "proot", "schroot", "lxc-attach", "machinectl", "toolbox", "distrobox", "vagrant",
        "capsh", "telnet", "rsh", "rlogin", "mosh",
    }
)  # fmt: skip
# Launchers (commands.py looks through them) that start the user's shell without a command.
_SHELL_WITHOUT_COMMAND: Final = frozenset({"chroot", "nsenter", "unshare"})
# Container tools, and their subcommands that run an image's own command (often a shell) or
# attach this stdin to one.
_CONTAINERS: Final = frozenset(
    {"docker", "podman", "nerdctl", "crictl", "ctr", "kubectl", "oc", "lxc", "incus"}
)
_SESSION_SUBCOMMANDS: Final = frozenset({"run", "debug", "attach", "start", "shell", "console"})
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
# A program on the command line that starts another program (which inherits this stdin).
_STARTS_PROGRAMS: Final = re.compile(
    r"\bsystem\b|\bexec\w*\b|\bspawn\w*\b|\bpopen\b|\bsubprocess\b|\bchild_process\b|`|\bqx\b"
    r"|\bproc_open\b|\bshell_exec\b|\bpassthru\b|\bProcess\b|\\!|\bPROGRAM\b|\|\s*[\"'$]"
    r"|\.shell\b|\.system\b"
)
# Decided at run time: a command substitution, or a program that is a variable.
_RUN_TIME: Final = re.compile(r"\$\(|`|^\s*\$\{?\w+\}?\s*$")
# Tools that run commands elsewhere (a container, a namespace, another account, later): a
# shell or interpreter among their words counts even where commands.py looks through them.
_RUNS_ELSEWHERE: Final = _CONTAINERS | frozenset(
    {
        "lxc-execute", "systemd-run", "systemd-nspawn", "nsenter", "unshare", "chpst",
        "runuser", "firejail", "bwrap", "setpriv", "setsid", "flock", "script", "expect",
        "unbuffer", "watch", "dbus-run-session", "gcloud", "aws", "az",
    }
)  # fmt: skip
# Commands that never run their arguments: naming a shell there is data (`grep bash f`).
_DATA_ONLY: Final = frozenset(
    {
        "grep", "egrep", "fgrep", "zgrep", "rg", "ls", "dir", "cat", "tac", "head", "tail",
        "wc", "cut", "paste", "tr", "tee", "echo", "printf", "cp", "mv", "rm", "mkdir",
        "rmdir", "ln", "touch", "chmod", "chown", "chgrp", "stat", "file", "which", "whereis",
        "type", "basename", "dirname", "readlink", "realpath", "du", "df", "diff", "cmp",
        "comm", "md5sum", "sha1sum", "sha256sum", "sha512sum", "b2sum", "cksum", "base64",
        "od", "xxd", "hexdump", "strings", "id", "getent", "pgrep", "pidof", "pkill",
        "killall", "kill", "ps", "man", "whatis", "apropos", "test", "[", "true", "false",
    }
)  # fmt: skip
_SCRIPT_OPTIONS: Final = frozenset({"-f", "--file", "-x", "--command-file"})
_EXPANDED: Final = frozenset("$`{}*?[")  # a command name the shell expands at run time
_STDIN_PATH: Final = re.compile(r"^(-|/dev/stdin|/dev/fd/\d+|/proc/(self|thread-self|\d+)/fd/\d+)$")
_NAMES_STDIN: Final = re.compile(r"/dev/stdin|/dev/fd/\d|/proc/[^/\s]+/fd/\d")
# A variable set to stdin for the command it prefixes: `BASH_ENV=/dev/stdin bash -c ls` sources
# stdin first, and the splitter drops assignments before any rule sees them.
_STDIN_VARIABLE: Final = re.compile(
    r"(?:^|[\s;&|(])[A-Za-z_]\w*=['\"]?(?:/dev/stdin|/dev/fd/\d|/proc/[^/\s]+/fd/\d)"
)
_TOKEN: Final = re.compile(r"[A-Za-z0-9_.+-]+")
_AWKS: Final = frozenset({"awk", "gawk", "mawk", "nawk", "busybox-awk"})
_SEDS: Final = frozenset({"sed", "gsed"})
_VIMS: Final = frozenset(
    {"vi", "vim", "nvim", "view", "rvim", "gvim", "vimdiff", "gvimdiff", "nvi", "nex", "vimx"}
    | {"rview", "rgvim", "rgview", "evim", "eview", "gview", "nvim.appimage"}
    # Debian's and Ubuntu's builds, which `vi` and `vim` point to
    | {f"vim.{build}" for build in ("tiny", "basic", "nox", "gtk", "gtk3", "athena", "motif")}
)
_VIM_INFORMATIONAL: Final = frozenset({"--version", "--help", "-h"})
_MAKES: Final = frozenset({"make", "gmake", "bmake"})
_NAMED_INSIDE_WORDS: Final = _AWKS | frozenset(_DATABASES) | frozenset({"sqlite3", "busybox"})
# Names with a rule of their own in `_reader`, besides the tables: a word naming one of them
# among an unknown command's words makes it unsure.
_PROGRAM_READERS: Final = (
    _AWKS
    | _SEDS
    | _VIMS
    | _MAKES
    | _SHELL_WITHOUT_COMMAND
    | frozenset({"sqlite3", "busybox", "xargs", "parallel", "ssh", "su", "runuser", "sudo"})
    | frozenset({"doas", "script", "at", "crontab", "eval", "source"})
)
_AWK_VALUE_OPTIONS: Final = frozenset({"-F", "-v", "-i", "-l", "--include", "--load"})
_SED_VALUE_OPTIONS: Final = frozenset({"-l", "--line-length"})
_SED_EXECUTES: Final = re.compile(
    r"(^|[;\n{}])\s*[0-9$,/!]*\s*e(\s|;|$)|s(.)(?:(?!\3).|\\.)*\3(?:(?!\3).|\\.)*\3[gpIiMm0-9]*e"
)
_AWK_EXECUTES: Final = re.compile(r"\bsystem\s*\(|(?<!\|)\|(?!\|)")
_SSH_VALUE_OPTIONS: Final = frozenset("BbcDEeFIiJLlmOoPpQRSWw")
_SHELL_VALUE_OPTIONS: Final = frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"})
_TEXT_OPTIONS: Final = frozenset({"-c", "--command", "--session-command"})
_MAX_DEPTH: Final = 8


def stdin_readers(*, argv: Sequence[str] = (), text: str | None = None) -> list[StdinReader]:
    """The commands of an argv (run without a shell) or a command text (read by a shell) that
    will, or may, read their program from stdin; empty when stdin is only data."""
    return _readers(argv, text, 0)


def interpreter(name: str) -> str | None:
    """The interpreter family a command name belongs to (``python3.11`` → ``python``)."""
    if name in _INTERPRETERS:
        return name
    for pattern, family in _INTERPRETER_PATTERNS:
        if pattern.match(name):
            return family
    return None


def _readers(argv: Sequence[str], text: str | None, depth: int) -> list[StdinReader]:
    try:
        commands = unwrapped(argv) if text is None else simple_commands(text)
    except Unreadable as exc:
        whole = text if text is not None else " ".join(argv)
        return [StdinReader((whole,), "shell", f"the command cannot be read: {exc}")]
    found: list[StdinReader] = []

    def add(reader: StdinReader | None) -> None:
        if reader is not None and reader not in found:
            found.append(reader)

    add(_stdin_variable(text if text is not None else " ".join(argv)))
    if text is not None:
        add(_redirected(text))
    for words in commands:
        add(_reader(words, depth))
        for nested in _shell_texts(words):  # `sh -c 'sh <&0'`: the inner text's redirections
            add(_redirected(nested))
            add(_stdin_variable(nested))
    return found


def _stdin_variable(text: str) -> StdinReader | None:
    """Unsure when shell `text` sets a variable to stdin (``BASH_ENV=/dev/stdin``)."""
    assigned = _STDIN_VARIABLE.search(text)
    if assigned is None:
        return None
    return StdinReader((text,), "shell", f"a variable names stdin: {assigned.group(0).strip()}")


def _redirected(text: str) -> StdinReader | None:
    """Unsure when shell `text` redirects fd 0: the program may come from anywhere."""
    written = stdin_redirection(text)
    if written is None:
        return None
    try:
        commands = simple_commands(text)
    except Unreadable:
        commands = []
    # Its program's language is that of the command the redirection belongs to, where the
    # splitter kept the operator among that command's words.
    redirected = (w for w in commands if any(_stdin_operator(word) for word in w))
    name = _name(next(redirected, [""])[0])
    return StdinReader((text,), _language(name), f"stdin is redirected: {written}")


def _stdin_operator(word: str) -> bool:
    """Whether a word as the splitter cut it holds a redirection of fd 0 (``<``, ``sh<``,
    ``0<``, ``0>``), not of another descriptor (``3<``, ``{fd}<``)."""
    prefix, less, _ = word.partition("<")
    if not less:
        return word.startswith("0>")
    return not (prefix.isdigit() and prefix != "0") and not prefix.startswith("{")


def _shell_texts(words: list[str]) -> list[str]:
    """The shell texts a command hands on to a shell as they are (``sh -c TEXT``, ``flock F -c
    TEXT``, ``script -c TEXT``, ``watch TEXT``); ``su -c``, ``env -S``, ``ssh`` and ``eval``
    texts are read whole where those commands are."""
    name, args = _name(words[0]), words[1:]
    if name in SHELLS:
        text = _shell_program(args)
        return [text] if text is not None else []
    if name in ("flock", "script"):
        return [t for i in range(len(args)) if (t := _option_value(args, i, _TEXT_OPTIONS, "-c"))]
    if name == "watch":
        return [" ".join(a for a in args if not a.startswith("-"))]
    return []


def _name(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _reader(words: list[str], depth: int) -> StdinReader | None:
    if not words:
        return None
    command = tuple(words)
    if depth > _MAX_DEPTH:
        return StdinReader(command, "shell", "commands nested too deeply to read")
    name = _name(words[0])
    args = words[1:]
    if name in ("[", "[["):
        return None  # a test: its `<` compares, its words are data
    if not name or any(char in _EXPANDED for char in words[0]):
        return StdinReader(command, "shell", "the command's name is decided at run time")
    if name == "busybox":
        return _reader(args, depth + 1) if args else None
    if name in SHELLS:
        return _shell(command, args)
    if name == "eval":  # its words are a shell text
        if any(_RUN_TIME.search(word) for word in args):
            return StdinReader(command, "shell", "its text is decided at run time")
        readers = _readers((), " ".join(args), depth + 1)
        return readers[0] if readers else None
    if name in (".", "source"):
        return StdinReader(command, "shell") if args and _is_stdin(args[0]) else None
    family = interpreter(name)
    if family is not None:
        return _interpreter(command, args, *_INTERPRETERS[family])
    if name in _DATABASES:
        return _database(command, name, args)
    if name == "sqlite3":
        return _sqlite(command, args)
    if name in _ALWAYS:
        return StdinReader(command, _ALWAYS[name])
    if name in _SHELL_STARTERS:
        return StdinReader(command, "shell", f"{name} starts a shell or a session elsewhere")
    if name in _AWKS or name in _SEDS or name == "jq":
        return _text_tool(command, name, args)
    if name in _VIMS:
        return _vim(command, args)
    if name in ("xargs", "parallel"):
        inner = name == "parallel" and not any(not a.startswith("-") for a in args)
        return StdinReader(command, "shell" if inner else "arguments")
    if name == "ssh":
        return _ssh(command, args, depth)
    if name in ("su", "runuser"):
        return _su(command, args, depth)
    if name in ("sudo", "doas"):
        return _sudo(command, args)
    if name == "script" and not _has_option(args, _TEXT_OPTIONS, "-c"):
        return StdinReader(command, "shell")  # runs the user's shell on a terminal fed by stdin
    if name == "at":  # reads the commands to run later from stdin, unless -f or a listing
        if any(a.startswith(("-f", "-l", "-d", "-r", "-c")) for a in args):
            return None
        return StdinReader(command, "shell")
    if name == "crontab":
        options = [a for a in args if a.startswith("-") and a != "-"]
        if any(o in ("-l", "-r", "-e") for o in options):
            return None
        files = [a for a in args if not a.startswith("-") or a == "-"]
        return StdinReader(command, "other") if not files or _is_stdin(files[-1]) else None
    if name == "env":
        return _env_split(command, args, depth)  # other launchers: commands.py unwraps them
    if name in _MAKES and _script_option(args, frozenset({"-f", "--file", "--makefile"})):
        return StdinReader(command, "shell")  # a makefile's recipes are shell lines
    return _unknown(command, name, args)


def _unknown(command: tuple[str, ...], name: str, args: list[str]) -> StdinReader | None:
    """A command without a rule of its own: unsure when it may start something that reads a
    program, since a tool that runs its arguments passes its stdin on (``pkexec sh``,
    ``strace -f sh``, ``find . -exec sh \\;``)."""
    if name in _SHELL_WITHOUT_COMMAND and not _launches(list(command)):
        return StdinReader(command, "shell")  # `chroot /srv`, `nsenter -t 1 -a`: $SHELL
    if name in _CONTAINERS:
        session = next((a for a in args if a in _SESSION_SUBCOMMANDS), None)
        if session is not None:
            why = f"`{name} {session}` may start the image's own command or a shell"
            return StdinReader(command, "shell", why)
    if name in _DATA_ONLY:
        return None
    if name not in _RUNS_ELSEWHERE and _launches(list(command)):
        return None  # a launcher: the command it starts is read on its own
    for word in args:
        if _NAMES_STDIN.search(word):
            return StdinReader(command, "shell", f"{name} is given {word}")
        if _RUN_TIME.search(word):  # `strace -f $SHELL`: what it starts is decided at run time
            return StdinReader(command, "shell", f"{name} is given {word}, decided at run time")
        named = _named_reader(word)
        if named is not None:
            return StdinReader(command, _language(named), f"{name} may start {named}")
    return None


def _named_reader(word: str) -> str | None:
    """The program reader that `word` names: the word itself (or its file name), or, for a
    shell, interpreter or database client, any name-like piece of it (``EXEC:sh``,
    ``--rsh=bash``, ``alias.x=!sh``)."""
    whole = _name(word)
    if _reads_programs(whole):
        return whole
    tokens: list[str] = _TOKEN.findall(word)
    for token in tokens:
        if token in _WHOLE_WORD_INTERPRETERS:
            continue
        if token in _NAMED_INSIDE_WORDS or token in SHELLS or interpreter(token) is not None:
            return token
    return None


def _reads_programs(name: str) -> bool:
    """Whether command `name` has a rule above that may find it reading a program."""
    return (
        name in _PROGRAM_READERS
        or name in SHELLS
        or interpreter(name) is not None
        or any(name in names for names in (_DATABASES, _ALWAYS, _SHELL_STARTERS))
    )


def _language(name: str) -> Language:
    """How a program read by command `name` is checked."""
    if name in ("xargs", "parallel"):
        return "arguments"
    if interpreter(name) or name in _DATABASES or _ALWAYS.get(name) == "other":
        return "other"
    if name in _AWKS or name in _VIMS or name in ("sqlite3", "crontab"):
        return "other"
    return "shell"


def _launches(words: list[str]) -> bool:
    """Whether commands.py finds a command that `words` start (``nohup sh`` starts ``sh``)."""
    try:
        return len(unwrapped(words)) > 1
    except Unreadable:
        return False


def _is_stdin(word: str) -> bool:
    return _STDIN_PATH.match(word) is not None


def _shell_program(args: list[str]) -> str | None:
    """The program of ``sh -c PROGRAM`` (the first word that is no option, after an option
    cluster with ``c``); None when the shell has no -c."""
    command = False
    i = 0
    while i < len(args):
        word = args[i]
        if word in _SHELL_VALUE_OPTIONS:
            i += 2
            continue
        if word == "--":
            return args[i + 1] if command and i + 1 < len(args) else None
        if word.startswith(("-", "+")) and not word.startswith("--") and len(word) > 1:
            command = command or "c" in word[1:]
            i += 1
            continue
        if word.startswith("--"):
            i += 1
            continue
        return word if command else None
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
            return reader if not rest or _is_stdin(rest[0]) else None
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
        return reader if _is_stdin(word) else None  # a script file
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
    name = _name(command[0])
    clustered = name.startswith(("perl", "ruby"))  # perl -ne: the program option among letters
    i = 0
    while i < len(args):
        word = args[i]
        if _is_stdin(word) or word in _INTERACTIVE.get(interpreter(name) or "", ()):
            return reader
        if word == "--":
            rest = args[i + 1 :]
            return reader if not rest or _is_stdin(rest[0]) else None
        option, equals, attached = word.partition("=")
        cluster = word.startswith("-") and not word.startswith("--") and clustered
        if option in program or (cluster and any(f"-{c}" in program for c in word[1:])):
            text = attached if equals else (args[i + 1] if i + 1 < len(args) else "")
            loops = cluster and ("n" in word[1:] or "p" in word[1:])
            if _is_stdin(text) or _READS_STDIN.search(text):
                return reader
            if loops and _RUNS_CODE.search(text):
                return reader  # each line of stdin goes to eval/system
            return _command_line_program(command, text)
        if word in takes_value:
            i += 2
            continue
        if word.startswith("-"):
            i += 1
            continue
        return None  # a script file, or a subcommand that names one
    return reader


def _command_line_program(command: tuple[str, ...], text: str) -> StdinReader | None:
    """A program given on the command line (``-c``, ``-e``, an SQL text) is unsure when it is
    decided at run time, or when it starts a program that reads one (it inherits stdin)."""
    if _RUN_TIME.search(text):
        return StdinReader(command, "other", "its program is decided at run time")
    if _STARTS_PROGRAMS.search(text):
        named = next((t for t in _TOKEN.findall(text) if _named_reader(t)), None)
        if named is not None:
            return StdinReader(command, _language(named), f"its program may start {named}")
    return None


def _database(command: tuple[str, ...], name: str, args: list[str]) -> StdinReader | None:
    giving = _DATABASES[name]
    for i, word in enumerate(args):
        option, _, attached = word.partition("=")
        if option in giving:
            value = attached if attached else (args[i + 1] if i + 1 < len(args) else "")
            if _is_stdin(value):
                return StdinReader(command, "other")
            return _command_line_program(command, value)
    return StdinReader(command, "other")


def _sqlite(command: tuple[str, ...], args: list[str]) -> StdinReader | None:
    """``sqlite3 DB`` reads SQL (and ``.shell``) from stdin; ``sqlite3 DB SQL`` does not."""
    positionals = _positionals(args, frozenset({"-cmd", "-init", "-separator"}))
    if len(positionals) < 2:
        return StdinReader(command, "other")
    return _command_line_program(command, " ".join(positionals[1:]))


def _text_tool(command: tuple[str, ...], name: str, args: list[str]) -> StdinReader | None:
    """awk, sed, jq: the program is an argument, unless ``-f`` names stdin; an awk program
    that runs commands (``system($0)``, ``print | "sh"``) and a sed ``e`` run the data."""
    if _script_option(args, _SCRIPT_OPTIONS):
        return StdinReader(command, "other")
    if name == "jq":
        return None
    programs = _awk_programs(args) if name in _AWKS else _sed_programs(args)
    executes = _AWK_EXECUTES if name in _AWKS else _SED_EXECUTES
    for program in programs:
        if _RUN_TIME.search(program):
            return StdinReader(command, "shell", "its program is decided at run time")
        if executes.search(program):
            return StdinReader(command, "shell", "its program runs commands")
    return None


def _awk_programs(args: list[str]) -> list[str]:
    """The program texts on an awk command line (``-e``/``--source``, or the first operand
    when no ``-f`` gives one)."""
    names = frozenset({"-e", "--source"})
    sources = [v for i in range(len(args)) if (v := _option_value(args, i, names, "-e"))]
    if sources or _has_option(args, frozenset({"-f", "--file"}), "-f"):
        return sources  # with -f, the first operand is an input file
    return _positionals(args, _AWK_VALUE_OPTIONS)[:1]


def _sed_programs(args: list[str]) -> list[str]:
    """The scripts on a sed command line (``-e``/``--expression``, or the first operand)."""
    names = frozenset({"-e", "--expression"})
    scripts = [v for i in range(len(args)) if (v := _option_value(args, i, names, "-e"))]
    if scripts or _has_option(args, frozenset({"-f", "--file"}), "-f"):
        return scripts  # with -f, the first operand is an input file
    return _positionals(args, _SED_VALUE_OPTIONS)[:1]


def _vim(command: tuple[str, ...], args: list[str]) -> StdinReader | None:
    """``vim -es`` (Ex mode) reads Ex commands from stdin, ``vim -s FILE`` keystrokes from
    FILE, and a vi whose stdin is no terminal (``printf ':!sh\n' | vim``) its keystrokes
    from stdin; ``:!`` runs shell commands from any of them. Only ``--version`` and ``--help``
    read nothing."""
    if args and all(word in _VIM_INFORMATIONAL for word in args):
        return None
    return StdinReader(command, "other")


def _has_option(args: list[str], names: frozenset[str], short: str) -> bool:
    return any(_option_value(args, i, names, short) is not None for i in range(len(args)))


def _script_option(args: list[str], names: frozenset[str]) -> bool:
    """Whether one of the options `names` (``-f``) gives stdin as the script."""
    for i in range(len(args)):
        value = _option_value(args, i, names, short="-f")
        if value is not None and _is_stdin(value):
            return True
    return False


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
    remote = _readers((), " ".join(rest), depth + 1)
    return StdinReader(command, "shell", remote[0].unsure) if remote else None


def _su(command: tuple[str, ...], args: list[str], depth: int) -> StdinReader | None:
    for i, word in enumerate(args):
        option, _, attached = word.partition("=")
        if option in _TEXT_OPTIONS:
            text = attached or (args[i + 1] if i + 1 < len(args) else "")
            remote = _readers((), text, depth + 1)
            return StdinReader(command, "shell", remote[0].unsure) if remote else None
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
            readers = _readers((), text, depth + 1)
            return readers[0] if readers else None
    return None


def _positionals(args: list[str], takes_value: frozenset[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        if args[i].startswith("-") and args[i] != "-":
            i += 2 if args[i] in takes_value else 1
            continue
        out.append(args[i])
        i += 1
    return out
