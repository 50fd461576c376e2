"""The one parser over the command table: every verb answers --help with an example, a wrong
command line is a usage error (exit 2) that names what is wrong, options read their
environment variables, `exec` loads only what it needs, and the CLI reference in the README
and in DESIGN names exactly what the table has."""

from __future__ import annotations

import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.commands import ROOT, walk
from cli.main import installed_version, main
from cli.output import Format
from cli.parser import Arg, Command, Group, Opt, UsageError, load, resolve

REPO = Path(__file__).resolve().parents[3]
COMMANDS = walk()
GROUPS: list[tuple[tuple[str, ...], Group]] = []


def _groups(group: Group, words: tuple[str, ...]) -> None:
    GROUPS.append((words, group))
    for word, node in group.commands.items():
        if isinstance(node, Group):
            _groups(node, (*words, word))


_groups(ROOT, ())


def named(words: tuple[str, ...]) -> str:
    return " ".join(("gatehouse", *words))


def arguments(*argv: str) -> dict[str, Any]:
    return resolve(ROOT, argv, version=installed_version).arguments


def options_of(command: Command) -> list[Opt]:
    params = load(command.params)() if isinstance(command.params, str) else command.params
    return [p for p in params if isinstance(p, Opt)]


# ---- help ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[named(w) for w, _ in COMMANDS])
def test_every_verb_answers_help_with_an_example(
    words: tuple[str, ...], command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*words, "--help"]) == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: {named(words)} ")
    assert re.search(rf"^Example: .*{re.escape(named(words))}\b", shown, re.MULTILINE), shown
    for option in options_of(command):
        assert option.flags[0] in shown


@pytest.mark.parametrize(("words", "group"), GROUPS, ids=[named(w) for w, _ in GROUPS])
def test_every_group_lists_its_commands_and_shows_an_example(
    words: tuple[str, ...], group: Group, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*words, "--help"]) == 0
    shown = capsys.readouterr().out
    assert re.search(rf"^Example: {re.escape(named(words))}\b", shown, re.MULTILINE), shown
    for word in group.commands:
        assert re.search(rf"^  {re.escape(word)} ", shown, re.MULTILINE), (word, shown)
    if group.default is None:
        # A group given nothing to do shows its help, and says so with the usage status.
        assert main(list(words)) == 2
        assert capsys.readouterr().out.startswith(f"usage: {named(words)} [-h]")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gatehouse {installed_version()}\n"


# ---- usage errors --------------------------------------------------------------------------


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[named(w) for w, _ in COMMANDS])
def test_an_unknown_option_is_a_usage_error_that_names_it(
    words: tuple[str, ...], command: Command, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*words, "--no-such-option", "x"]) == 2
    said = capsys.readouterr()
    assert said.out == ""
    assert "error: no such option: --no-such-option" in said.err
    assert main([*words, "--help"]) == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert said.err.split("\nerror: ")[0] == usage  # the command's own usage, as --help shows


def test_a_usage_error_from_the_installed_command_exits_2_before_anything_runs() -> None:
    """What a script sees: status 2, the usage and the reason on stderr, nothing on stdout;
    the control plane (nowhere) is never asked."""
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "exec", "pg", "--outptu", "json", "-c", "select 1"],
        cwd=REPO,
        env={**os.environ, "GATEHOUSE_CONTROLPLANE": "127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines()[-1] == (
        "error: no such option: --outptu; did you mean --output?"
    )
    assert done.stderr.startswith("usage: gatehouse exec ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["exce", "pg"], "no such command 'exce'; did you mean exec?"),
        (["admin", "agent", "list"], "no such command 'agent'; did you mean agents?"),
        (["exec", "pg", "--comm", "x"], "no such option: --comm"),  # no abbreviations
        (["exec"], "the following arguments are required: NAME"),
        (["exec", "pg", "-c", "select 1", "-o", "xml"], "-o/--output: must be table or json"),
        (["tokens", "create", "--ttl", "8h"], "the following arguments are required: --actor"),
        (["admin", "agents", "create", "a", "--uses", "0"], "--uses: must be from 1 to"),
        (["admin", "agents", "create", "a", "--ttl", "1.5s"], "whole number of seconds"),
        (["admin", "agents", "create", "a", "--ttl", "soon"], "must be a duration such as"),
        (["admin", "agents", "create", "a", "--ttl", "99999d"], "at most 4294967295 seconds"),
        (["sessions", "replay", "x", "--speed", "0"], "--speed: must be a number of at least"),
        (["connect", "pg", "--port", "70000"], "--port: must be from 0 to 65535"),
        (["sessions", "show", "a", "b"], "unexpected argument 'b'"),
    ],
)
def test_what_is_wrong_is_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# ---- what the handler gets -----------------------------------------------------------------


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[named(w) for w, _ in COMMANDS])
def test_every_handler_takes_the_parameters_its_command_declares(
    words: tuple[str, ...], command: Command
) -> None:
    accepted = inspect.signature(load(command.handler)).parameters
    if isinstance(command.params, str):  # a settings class's keys, whatever they are
        assert [p.kind for p in accepted.values()] == [inspect.Parameter.VAR_KEYWORD]
        return
    declared = [p.dest if isinstance(p, Arg) else p.name for p in command.params]
    assert len(set(declared)) == len(declared)
    assert set(accepted) == set(declared)


def test_words_after_dashes_reach_the_command_verbatim() -> None:
    given = arguments("exec", "web-1", "-n", "--", "git", "log", "--", "-p", "file")
    assert given["args"] == ["git", "log", "--", "-p", "file"]
    assert given["no_stdin"] is True
    assert arguments("exec", "web-1", "--", "--")["args"] == ["--"]
    assert arguments("sessions", "show", "--", "-odd-id")["session_id"] == "-odd-id"


def test_options_go_anywhere_and_values_are_typed() -> None:
    given = arguments("exec", "-o", "JSON", "pg", "-c", "select 1")
    assert given["output"] is Format.json
    assert (given["connection"], given["command"], given["args"]) == ("pg", "select 1", [])
    assert arguments("exec", "pg", "--command=-- a comment\nselect 1")["command"].startswith("--")
    assert arguments("admin", "agents", "create", "a", "--ttl", "90m")["ttl"] == 5400
    assert arguments("admin", "agents", "create", "a")["ttl"] == 3600
    assert arguments("admin", "tokens", "create", "siem")["ttl"] is None
    assert arguments("tokens", "create", "--actor", "devin", "--ttl", "600")["ttl"] == 600
    keys = arguments("audit", "verify", "--key", "a.pem", "--key", "b.pem")["key"]
    assert keys == [Path("a.pem"), Path("b.pem")]
    assert arguments("audit", "verify")["key"] is None
    assert arguments("audit", "export", "--format", "OCSF", "-f")["fmt"] == "ocsf"


def test_an_option_falls_back_to_its_variable_and_a_flag_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("GATEHOUSE_CONTROLPLANE", raising=False)
    assert arguments("sessions", "list")["controlplane"] is None
    monkeypatch.setenv("GATEHOUSE_CONTROLPLANE", "")  # empty: not set
    assert arguments("sessions", "list")["controlplane"] is None
    monkeypatch.setenv("GATEHOUSE_CONTROLPLANE", "gw.example.com:8443")
    assert arguments("sessions", "list")["controlplane"] == "gw.example.com:8443"
    given = arguments("sessions", "list", "--controlplane", "other:8443")
    assert given["controlplane"] == "other:8443"
    monkeypatch.setenv("GATEHOUSE_OIDC_GROUPS_CLAIM", "roles")
    assert arguments("whoami")["groups_claim"] == "roles"
    monkeypatch.delenv("GATEHOUSE_OIDC_GROUPS_CLAIM")
    assert arguments("whoami")["groups_claim"] == "groups"


def test_settings_flags_are_given_as_text_or_left_to_the_lower_layers() -> None:
    given = arguments("controlplane", "serve", "--dev", "--no-verbose", "--grpc-listen", "h:1")
    assert (given["dev"], given["verbose"], given["grpc_listen"]) == (True, False, "h:1")
    assert arguments("controlplane", "serve")["dev"] is None  # the variable, file or default
    assert arguments("agent", "run", "-v")["verbose"] is True


def test_the_parser_raises_instead_of_ending_the_process() -> None:
    with pytest.raises(UsageError) as raised:
        resolve(ROOT, ["exec", "pg", "-x"], version=installed_version)
    assert raised.value.exit_code == 2
    assert raised.value.usage.startswith("usage: gatehouse exec ")


# ---- exec stays lean -----------------------------------------------------------------------

LOADED = """
import json, sys
from cli.main import main
status = main(["exec", "pg", "-c", "select 1"])
print(json.dumps([status, sorted(sys.modules)]))
"""
EXEC_MODULES = {
    *("cli", "cli.main", "cli.commands", "cli.parser", "cli.errors", "cli.output"),
    *("cli.execute", "cli.rpc", "cli.profiles", "cli.session", "cli.protocols"),
    *("cli.pg", "cli.pg.query"),
}


def test_exec_imports_no_other_verb_and_no_library_it_does_not_use() -> None:
    env = {**os.environ, "GATEHOUSE_CONTROLPLANE": "127.0.0.1:1", "GATEHOUSE_TOKEN": "x"}
    done = subprocess.run(
        [sys.executable, "-c", LOADED],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    status, modules = json.loads(done.stdout.splitlines()[-1])
    assert status == 1 and "cannot reach the control plane" in done.stderr
    ours = {m for m in modules if m.partition(".")[0] == "cli"}
    assert ours <= EXEC_MODULES, ours - EXEC_MODULES
    heavy = ("rich", "yaml", "authlib", "requests", "typer", "click", "pydantic", "asyncssh")
    assert [m for m in modules if m.partition(".")[0] in heavy] == []


# ---- the references in the docs ------------------------------------------------------------


def _command_words(words: list[str]) -> tuple[str, ...]:
    """The longest start of `words` that names a command (or a group with a default)."""
    node: Group | Command = ROOT
    found: list[str] = []
    for word in words:
        if not isinstance(node, Group) or word not in node.commands:
            break
        node = node.commands[word]
        found.append(word)
    assert isinstance(node, Command) or node.default is not None, ("not a command", words)
    return tuple(found)


def _synopses(segments: list[list[str]]) -> list[tuple[tuple[str, ...], list[str]]]:
    """(command words, every word) of `gatehouse a b [--x] / c [--y]`: a later segment names
    a sibling of the first one's command, or a command under its group."""
    first = segments[0]
    assert first[0] == "gatehouse", first
    words = _command_words(first[1:])
    found = [(words, first)]
    for segment in segments[1:]:
        for depth in range(len(words) - 1, -1, -1):
            try:
                found.append((_command_words([*words[:depth], *segment]), segment))
                break
            except AssertionError:
                continue
        else:
            raise AssertionError(("not a command", segment))
    return found


def _check(synopses: list[tuple[tuple[str, ...], list[str]]]) -> set[tuple[str, ...]]:
    """Each synopsis's flags are options of its command; the commands named."""
    commands = dict(COMMANDS)
    for words, segment in synopses:
        flags = {f for p in options_of(commands[words]) for f in p.flags}
        flags |= {
            "--no-" + f[2:] for p in options_of(commands[words]) if p.negatable for f in p.flags
        }
        text = " ".join(segment)
        text = text.split(" -- ")[0]  # what follows `--` is the remote command's
        for flag in re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", text):
            assert flag in flags, (named(words), flag)
    return {words for words, _ in synopses}


def test_the_readme_cli_reference_names_every_command_and_only_real_options() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    named_here: set[tuple[str, ...]] = set()
    for row in section.splitlines():
        if not row.startswith("| `gatehouse "):
            continue
        first_cell = row.split(" | ")[0]
        segments = [s.replace("\\|", "|").split() for s in re.findall(r"`([^`]+)`", first_cell)]
        named_here |= _check(_synopses(segments))
    missing = {named(w) for w, _ in COMMANDS} - {named(w) for w in named_here}
    assert missing == set()


def test_the_design_cli_contract_names_only_real_commands_and_options() -> None:
    design = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    block = design.split("## 9. The CLI contract", 1)[1].split("```", 2)[1]
    for line in block.splitlines():
        text = line.split("#", 1)[0].strip()
        if text.startswith("gatehouse "):
            _check(_synopses([s.split() for s in text.split(" | ")]))
