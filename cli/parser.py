"""The one command-line parser: every verb declared as data (cli/commands.py), parsed by the
standard library's argparse.

Why argparse under a small table of our own (docs/decisions/0022): argparse costs ~1.5 ms to
import where typer with its click and pydantic cost ~30 ms, and AI agents run `gatehouse exec`
again and again. The table is walked without importing any verb's module: a command line
builds one argparse parser, for the one command it names, and imports only that command's
module; `--help` imports none.

What this layer adds to argparse: options that fall back to an environment variable (flag >
variable > default), converters whose messages say what to write, groups of verbs with their
own help, a usage error as an exception (exit status 2, printed once by cli.main), and `--`
kept as a word after the first one (argparse 3.11 drops every `--` a positional receives).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, NoReturn, TypeVar

from cli.errors import USAGE, CliError

# Imported on every command line, `exec`'s included: what only help or an error needs
# (textwrap, difflib, importlib's helpers) is imported where it is used.

C = TypeVar("C", bound=str)
Convert = Callable[[str], Any]

HELP_FLAGS = ("-h", "--help")


class Arg(NamedTuple):
    """A positional argument; `dest` is the handler's parameter."""

    dest: str
    metavar: str
    help: str
    variadic: bool = False
    """Takes every word left, `--` and what follows it included: a list, maybe empty."""


class Opt(NamedTuple):
    """An option: its spellings, the handler's parameter it fills, and how."""

    flags: tuple[str, ...]
    help: str
    dest: str = ""
    """Default: the first long flag without its dashes (`--no-stdin`: `no_stdin`)."""
    type: Convert = str
    """Text to value; ValueError's message becomes the usage error (see `whole`, `choice`)."""
    default: Any = None
    metavar: str | None = None
    env: str | None = None
    """The variable read when the flag is not given (an empty one counts as not set)."""
    switch: bool = False
    """Takes no value: True when given, else False."""
    negatable: bool = False
    """`--x` / `--no-x`: True, False, or None when neither is given (settings layering)."""
    repeat: bool = False
    """May be given again: a list of every value, or the default when none."""
    required: bool = False
    shown_default: str | None = None
    """The default as --help shows it, when that is not the default itself."""

    @property
    def name(self) -> str:
        if self.dest:
            return self.dest
        long = next((f for f in self.flags if f.startswith("--")), self.flags[0])
        return long.lstrip("-").replace("-", "_")


Param = Arg | Opt


class Command(NamedTuple):
    """A verb that runs: the handler is called with one keyword argument per parameter."""

    handler: str
    """`module:function`, imported only when this command runs."""
    help: str
    """Paragraphs; the first is the summary its group lists."""
    examples: tuple[str, ...]
    params: tuple[Param, ...] | str = ()
    """The parameters, or `module:function` returning them (made from a settings class)."""
    exit_at_once: bool = False
    """End the process as soon as the handler returns and the output is flushed (cli.main)."""


class Group(NamedTuple):
    """A verb made of verbs (`admin agents create`)."""

    help: str
    examples: tuple[str, ...]
    commands: Mapping[str, Command | Group]
    default: Command | None = None
    """Run when no command word follows (`audit prune --before DATE`)."""


class Invocation(NamedTuple):
    """What a command line asks for: the verb's words, its command and the handler's
    arguments."""

    words: tuple[str, ...]
    command: Command
    arguments: dict[str, Any]


class UsageError(CliError):
    """The command line is wrong: exit status 2, with the usage line of what was parsed."""

    def __init__(self, message: str, usage: str = "") -> None:
        super().__init__(message, USAGE)
        self.usage = usage


class Exit(Exception):
    """Help or the version was printed; end with `status`."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


# ---- converters: text to value, ValueError saying what to write -----------------------------


def whole(minimum: int = 0, maximum: int = 2**63 - 1) -> Convert:
    """A whole number from `minimum` to `maximum` (by default what an int64 field holds)."""

    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be a whole number, not {text!r}") from None
        if not minimum <= value <= maximum:
            raise ValueError(f"must be from {minimum} to {maximum}, not {value}")
        return value

    return convert


def number(minimum: float | None = None) -> Convert:
    """A number (`0.5`, `2`), at least `minimum`."""

    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"must be a number, not {text!r}") from None
        import math

        if math.isnan(value) or (minimum is not None and value < minimum):
            least = "" if minimum is None else f" of at least {minimum:g}"
            raise ValueError(f"must be a number{least}, not {text!r}")
        return value

    return convert


def choice(values: Iterable[C]) -> Callable[[str], C]:
    """One of `values` (strings, or a StrEnum's members), in any case (`-o JSON`)."""
    allowed = tuple(values)

    def convert(text: str) -> C:
        for value in allowed:
            if value == text.lower():
                return value
        raise ValueError(f"must be {' or '.join(allowed)}, not {text!r}")

    return convert


def duration(maximum: int = 2**63 - 1) -> Convert:
    """Whole seconds, 1 to `maximum`, from `90s`, `30m`, `8h`, `90d` or a bare number of
    seconds: the syntax of every duration Gatehouse reads (trail.times)."""

    def convert(text: str) -> int:
        from trail.times import parse_duration

        seconds = parse_duration(text, "the value").total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"must be a whole number of seconds, at least 1s, not {text!r}")
        if seconds > maximum:
            raise ValueError(f"must be at most {maximum} seconds, not {text!r}")
        return int(seconds)

    return convert


# ---- from a command line to an invocation ---------------------------------------------------


def resolve(
    root: Group, argv: Sequence[str], *, prog: str = "gatehouse", version: Callable[[], str]
) -> Invocation:
    """Walk the groups by the words of `argv`, then parse the rest for the command found.
    Raises UsageError for a wrong command line and Exit once help or the version is printed."""
    node: Group | Command = root
    words: list[str] = []
    rest = list(argv)
    listed: Mapping[str, Command | Group] = {}
    while isinstance(node, Group):
        if rest and rest[0] in node.commands:
            words.append(rest.pop(0))
            node = node.commands[words[-1]]
            continue
        if node.default is not None:
            listed = node.commands  # its --help names them after its own options
            node = node.default
            break
        root_version = version if node is root else None
        _group_words(node, " ".join([prog, *words]), rest, root_version)
    params = _params(node)
    name = " ".join([prog, *words])
    parser = _parser(name, node, params, listed)
    try:
        arguments = _arguments(parser, params, rest)
    except UsageError:
        # argparse says what is missing before what is unknown; a misspelt option is the
        # likelier cause (`--fiel x` for a required --file), so it is named first.
        lenient = _parser(name, node, params, listed, lenient=True)
        _refuse_unknown(lenient, params, rest, parser.format_usage())
        raise
    return Invocation(tuple(words), node, arguments)


def _group_words(
    group: Group, name: str, rest: list[str], root_version: Callable[[], str] | None
) -> NoReturn:
    """A group given no command word: its help, the version, or a usage error."""
    if not rest:
        sys.stdout.write(group_help(group, name, root_version is not None))
        raise Exit(USAGE)
    word = rest[0]
    if word in HELP_FLAGS:
        sys.stdout.write(group_help(group, name, root_version is not None))
        raise Exit(0)
    if word == "--version" and root_version is not None:
        sys.stdout.write(f"gatehouse {root_version()}\n")
        raise Exit(0)
    usage = _group_usage(name, root_version is not None)
    if word.startswith("-"):
        raise UsageError(f"no such option: {word} (`{name} --help` lists what it takes)", usage)
    raise UsageError(
        f"no such command {word!r}; "
        + _suggest(word, group.commands, f"`{name} --help` lists them"),
        usage,
    )


def _params(command: Command) -> tuple[Param, ...]:
    if isinstance(command.params, str):
        made: tuple[Param, ...] = tuple(load(command.params)())
        return made
    return command.params


def load(reference: str) -> Any:
    """`module:attribute`, imported now."""
    import importlib

    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


# The words after `--` are positional whatever they look like, and argparse (3.11) mishandles
# them: it drops every `--` a positional receives, and intermixed parsing reads a `-x` after
# `--` as an option. So argparse gets placeholders for them (argv cannot hold a NUL), and the
# words are put back after parsing.
_HELD = "\0"


def _words(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(what argparse parses, the words after `--` that its placeholders stand for)."""
    words = list(argv)
    if "--" not in words:
        return words, []
    cut = words.index("--")
    after = words[cut + 1 :]
    return words[:cut] + [f"{_HELD}{i}" for i in range(len(after))], after


def _put_back(word: str, after: Sequence[str]) -> str:
    return after[int(word[1:])] if word.startswith(_HELD) else word


def _arguments(parser: _Parser, params: Sequence[Param], argv: Sequence[str]) -> dict[str, Any]:
    words, after = _words(argv)
    namespace, extra = parser.parse_known_intermixed_args(words)
    if extra:
        _refuse_unknown(parser, params, extra, parser.format_usage())
        raise UsageError(
            f"unexpected argument {_put_back(extra[0], after)!r}", parser.format_usage()
        )
    values = vars(namespace)
    for param in params:
        value = values.get(param.dest if isinstance(param, Arg) else param.name)
        if isinstance(param, Arg):
            if isinstance(value, list):
                value = [_put_back(word, after) for word in value]
            elif isinstance(value, str):
                value = _put_back(value, after)
            values[param.dest] = value
            continue
        values[param.name] = _with_fallback(param, value, parser)
    return values


def _refuse_unknown(
    parser: _Parser, params: Sequence[Param], argv: Sequence[str], usage: str
) -> None:
    """A usage error (with `usage`) naming the first option of `argv` that `parser` does not
    know, if one is there."""
    try:
        _, extra = parser.parse_known_intermixed_args(_words(argv)[0])
    except UsageError:
        return
    for word in extra:
        if word.startswith("-") and word != "-":
            flags = [f for p in params if isinstance(p, Opt) for f in p.flags]
            raise UsageError(
                f"no such option: {word}; "
                + _suggest(word.partition("=")[0], flags, f"`{parser.prog} --help` lists them"),
                usage,
            )


def _with_fallback(option: Opt, value: Any, parser: _Parser) -> Any:
    """The flag's value, else the environment variable's, else the default."""
    if option.switch:
        return bool(value)
    if value is None and option.env:
        text = os.environ.get(option.env, "")
        if text:
            try:
                value = option.type(text)
            except ValueError as exc:
                raise UsageError(f"{option.env}={text!r}: {exc}", parser.format_usage()) from None
            if option.repeat:
                value = [value]
    return option.default if value is None else value


class _Parser(argparse.ArgumentParser):
    """argparse, with errors raised instead of printed and the process ended."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message:
            sys.stderr.write(message)
        raise Exit(status)

    def format_help(self) -> str:
        # The help is wrapped only when shown: parsing `exec` need not pay for it.
        self.description = wrapped(self.description or "")
        return super().format_help()


def wrapped(text: str, width: int | None = None) -> str:
    """Paragraphs filled to the terminal's width (at most 100 columns), blank lines between;
    a paragraph with indented lines or examples is kept as written."""
    import textwrap

    width = width or _width()
    first, _, rest = text.strip().partition("\n")  # a docstring's layout: dedent the rest
    paragraphs = []
    for paragraph in f"{first}\n{textwrap.dedent(rest)}".strip().split("\n\n"):
        lines = paragraph.splitlines()
        if any(line.startswith((" ", "Example:")) for line in lines):
            paragraphs.append("\n".join(lines))
        else:
            paragraphs.append(textwrap.fill(" ".join(line.strip() for line in lines), width))
    return "\n\n".join(paragraphs)


def _parser(
    name: str,
    command: Command,
    params: Sequence[Param],
    listed: Mapping[str, Command | Group],
    lenient: bool = False,
) -> _Parser:
    """The command's argparse parser; a `lenient` one requires nothing and converts nothing,
    to find the options a wrong command line names that the command does not have."""
    epilog = [f"Example: {example}" for example in command.examples]
    if listed:
        epilog += ["", _commands(listed), "", f"Run `{name} COMMAND --help` for its options."]
    options = [p for p in params if isinstance(p, Opt)]
    usage = None  # argparse's: every option
    if len(options) > 8:  # the settings commands: --help lists them one per line anyway
        usage = " ".join(
            [name, "[-h] [options]", *(p.metavar for p in params if isinstance(p, Arg))]
        )
    parser = _Parser(
        prog=name,
        usage=usage,
        description=command.help,
        epilog="\n".join(epilog),
        formatter_class=_formatter,
        allow_abbrev=False,
    )
    for param in params:
        if isinstance(param, Arg):
            nargs: dict[str, Any] = {"nargs": "*", "default": []} if param.variadic else {}
            if lenient and not param.variadic:
                nargs = {"nargs": "?"}
            parser.add_argument(
                param.dest, metavar=param.metavar, help=_escaped(param.help), **nargs
            )
            continue
        kwargs: dict[str, Any] = {"dest": param.name, "help": _option_help(param)}
        if param.switch:
            kwargs["action"] = "store_true"
        elif param.negatable:
            kwargs.update(action=argparse.BooleanOptionalAction, default=None)
        else:
            kwargs.update(metavar=param.metavar, default=None)
            if not lenient:
                kwargs["type"] = _checked(param.type)
            if param.repeat:
                kwargs["action"] = "append"
        if param.required and not lenient:
            kwargs["required"] = True
        parser.add_argument(*param.flags, **kwargs)
    return parser


def _checked(convert: Convert) -> Convert:
    """The converter, its ValueError shown as argparse's "argument --x: MESSAGE"."""

    def checked(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return checked


def _option_help(option: Opt) -> str:
    notes = []
    shown = option.shown_default
    if shown is None and option.default not in (None, False, "", ()):
        shown = str(option.default)  # a StrEnum member shows its value
    if shown:
        notes.append(f"default: {shown}")
    if option.env:
        notes.append(f"env {option.env}")
    if option.required:
        notes.append("required")
    return _escaped(option.help + (f" [{'; '.join(notes)}]" if notes else ""))


def _escaped(text: str) -> str:
    """argparse formats option help with `%`: a literal one is written twice."""
    return text.replace("%", "%%")


def _suggest(word: str, known: Iterable[str], otherwise: str) -> str:
    """ "did you mean X?" for the closest known word, else `otherwise`."""
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.75)
    return f"did you mean {close[0]}?" if close else otherwise


# ---- help of a group ------------------------------------------------------------------------


def summary(node: Command | Group) -> str:
    """The first sentence of the help, on one line."""
    text = " ".join(node.help.strip().split("\n\n")[0].split())
    return text.split(". ")[0].removesuffix(".") + "."


def _group_usage(name: str, root: bool) -> str:
    version = " [--version]" if root else ""
    return f"usage: {name} [-h]{version} COMMAND ...\n"


def group_help(group: Group, name: str, root: bool = False) -> str:
    """Usage, the group's help, its commands with their summaries, options and examples."""
    options = ["options:", "  -h, --help".ljust(16) + "show this help message and exit"]
    if root:
        options.append("  --version".ljust(16) + "print the installed version and exit")
    return "\n".join(
        [
            _group_usage(name, root),
            wrapped(group.help) + "\n",
            _commands(group.commands) + "\n",
            "\n".join(options) + "\n",
            *(f"Example: {example}" for example in group.examples),
            f"Run `{name} COMMAND --help` for a command's options.\n",
        ]
    )


def _commands(commands: Mapping[str, Command | Group]) -> str:
    """`commands:` and one line each: the word and its summary, wrapped beside it."""
    import textwrap

    width = _width()
    column = max(len(word) for word in commands) + 4
    lines = ["commands:"]
    for word, node in commands.items():
        text = textwrap.wrap(summary(node), max(20, width - column)) or [""]
        lines.append(f"  {word.ljust(column - 2)}{text[0]}")
        lines += [" " * column + more for more in text[1:]]
    return "\n".join(lines)


def _width() -> int:
    """Help's width: the terminal's, at most 100 columns."""
    return max(40, min(100, _columns() - 2))


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size reads it ($COLUMNS, else stdout's,
    else 80), without shutil, which imports bz2 and lzma (2-3 ms of every `exec`)."""
    try:
        return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    stdout = sys.__stdout__
    try:
        return (os.get_terminal_size(stdout.fileno()).columns if stdout else 0) or 80
    except (ValueError, OSError):  # not a terminal, or closed
        return 80


def _formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's, given the width: argparse makes one for every option it adds, and one
    without a width imports shutil."""
    return argparse.RawDescriptionHelpFormatter(prog, width=_width())
