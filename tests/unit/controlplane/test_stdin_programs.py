"""Which commands read their program from stdin: those whose stdin the gateway must record
and check before they start; every other command's stdin is data and streams."""

import shlex

import pytest

from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import Guardrail
from controlplane.policy.programs import stdin_readers

READS_PROGRAM = [
    ["sh"],
    ["bash", "-s", "arg"],
    ["bash", "-e"],
    ["bash", "/dev/stdin"],
    ["sh", "-"],
    ["zsh", "-i"],
    ["dash"],
    ["mksh"],
    ["fish"],
    ["busybox", "sh"],
    ["/usr/bin/python3.11"],
    ["python3", "-"],
    ["python3", "-W", "ignore"],
    ["perl"],
    ["ruby"],
    ["node"],
    ["php"],
    ["lua"],
    ["tclsh"],
    ["Rscript", "-"],
    ["psql", "-d", "app"],
    ["psql", "-f", "-"],
    ["mysql", "app"],
    ["sqlite3", "db.sqlite"],
    ["xargs", "rm"],
    ["ssh", "host"],
    ["ssh", "-p", "22", "host", "bash"],
    ["su"],
    ["su", "-", "root"],
    ["sudo", "-s"],
    ["sudo", "-i"],
    ["sudo", "-u", "root", "sh"],
    ["env", "FOO=1", "sh"],
    ["env", "-S", "sh -s"],
    ["timeout", "5", "bash"],
    ["nice", "-n", "5", "sh"],
    ["nohup", "sh"],
    ["sh", "-c", "cat | sh"],
    ["setsid", "bash"],
    ["kubectl", "exec", "-i", "pod", "--", "python3"],
    ["nsenter", "-t", "1", "-m", "bash"],
    ["docker", "exec", "-i", "ctr", "sh"],
    ["awk", "-f", "/dev/stdin"],
    ["at", "now"],
    ["crontab", "-"],
    ["ed", "file"],
    ["sudo", "-su", "root"],
    ["python3", "-i", "x.py"],
    ["python3", "-c", "import sys; exec(sys.stdin.read())"],
    ["perl", "-ne", "system $_"],
    ["ruby", "-e", "eval(gets)"],
    ["sh", "-c", 'eval "$(cat)"'],
    ["sh", "-c", "while read l; do $l; done"],
]

READS_DATA = [
    ["tar", "x", "-C", "/srv"],
    ["tar", "x", "-f", "-", "-C", "/srv"],
    ["cat"],
    ["bash", "-c", "ls"],
    ["bash", "-lc", "ls"],
    ["bash", "script.sh"],
    ["python3", "x.py"],
    ["python3", "-c", "print(1)"],
    ["python3", "-m", "json.tool"],
    ["perl", "-ne", "print"],
    ["node", "-e", "1"],
    ["ruby", "-e", "1"],
    ["php", "-r", "1;"],
    ["psql", "-c", "select 1"],
    ["mysql", "-e", "select 1"],
    ["sqlite3", "db", "select 1"],
    ["ssh", "-p", "22", "host", "ls"],
    ["su", "-c", "ls"],
    ["sudo", "ls"],
    ["busybox", "ls"],
    ["awk", "{print}"],
    ["crontab", "-l"],
    ["sh", "-c", "ls"],
    ["sudo", "-Eu", "root", "ls"],
    ["perl", "-ne", "print"],
    ["sh", "-c", "if true; then ls; fi"],
    ["grep", "bash", "/etc/passwd"],
    ["ls", "/bin/sh"],
    ["apt-get", "install", "-y", "python3"],
]


@pytest.mark.parametrize("argv", READS_PROGRAM, ids=" ".join)
def test_reads_its_program_from_stdin(argv: list[str]) -> None:
    assert stdin_readers(argv=argv)
    assert stdin_readers(text=shlex.join(argv))  # as a command line for a remote shell


@pytest.mark.parametrize("argv", READS_DATA, ids=" ".join)
def test_reads_data_from_stdin(argv: list[str]) -> None:
    assert stdin_readers(argv=argv) == []


@pytest.mark.parametrize(
    "text",
    [
        "$SHELL",
        "echo 'unclosed",
        "ls; sh",
        "cat | bash",
        "sudo -u root bash -s",
        "`x`",
        "{sh,}",
        "/bin/s?",
        "/bin/[s]h",
    ],
)
def test_unsure_texts_fail_closed(text: str) -> None:
    assert stdin_readers(text=text)


def test_programs_are_checked_like_command_lines() -> None:
    guard = CommandGuard(
        [Guardrail(name="no-rm", deny_commands=["rm -rf *"], deny_patterns=[r"shutil\.rmtree"])]
    )
    assert not guard.check_program("shell", ("sh",), "cd /srv\nrm -rf data\n").allowed
    assert not guard.check_program("shell", ("sh",), "ls && sudo rm -rf x").allowed
    assert guard.check_program("shell", ("sh",), "ls -l\necho rm -rf\n").allowed
    assert not guard.check_program("other", ("python3",), "shutil.rmtree('/srv')").allowed
    assert guard.check_program("other", ("python3",), "print(1)").allowed
    assert not guard.check_program("arguments", ("xargs", "rm", "-rf"), "/srv\n").allowed
    assert not guard.check_program("shell", ("sh",), "echo 'unclosed").allowed
