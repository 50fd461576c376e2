"""Which commands read their program from stdin: those whose stdin the gateway must record
and check before they start; every other command's stdin is data and streams.

One table: each command line and what the classifier must say of it — `PROGRAM` (it surely
reads its program from stdin), `UNSURE` (it may: held all the same, with the reason) or `DATA`.
An argv is also read as the command line a remote shell gets (`shlex.join`), except where the
quoting is the point (`TEXTS`)."""

import shlex

import pytest

from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import Guardrail
from controlplane.policy.programs import StdinReader, stdin_readers
from controlplane.policy.redirections import stdin_redirection

PROGRAM, UNSURE, DATA = "program", "unsure", "data"

ARGVS: list[tuple[list[str], str]] = [
    # shells, interpreters and database clients without a program on their command line
    (["sh"], PROGRAM),
    (["bash", "-s", "arg"], PROGRAM),
    (["bash", "-e"], PROGRAM),
    (["bash", "/dev/stdin"], PROGRAM),
    (["bash", "/dev/fd/3"], PROGRAM),
    (["sh", "-"], PROGRAM),
    (["zsh", "-i"], PROGRAM),
    (["dash"], PROGRAM),
    (["mksh"], PROGRAM),
    (["fish"], PROGRAM),
    (["busybox", "sh"], PROGRAM),
    (["/usr/bin/python3.11"], PROGRAM),
    (["python3", "-"], PROGRAM),
    (["python3", "-W", "ignore"], PROGRAM),
    (["perl"], PROGRAM),
    (["ruby"], PROGRAM),
    (["node"], PROGRAM),
    (["php"], PROGRAM),
    (["lua"], PROGRAM),
    (["tclsh"], PROGRAM),
    (["m4"], PROGRAM),
    (["dc"], PROGRAM),
    (["Rscript", "-"], PROGRAM),
    (["psql", "-d", "app"], PROGRAM),
    (["psql", "-f", "-"], PROGRAM),
    (["mysql", "app"], PROGRAM),
    (["sqlite3", "db.sqlite"], PROGRAM),
    # tools that turn stdin into commands, now, later or elsewhere
    (["xargs", "rm"], PROGRAM),
    (["xargs", "sh"], PROGRAM),
    (["parallel"], PROGRAM),
    (["parallel", "rm", "-rf"], PROGRAM),
    (["ssh", "host"], PROGRAM),
    (["ssh", "-p", "22", "host", "bash"], PROGRAM),
    (["su"], PROGRAM),
    (["su", "-", "root"], PROGRAM),
    (["su", "-c", "sh"], PROGRAM),
    (["sudo", "-s"], PROGRAM),
    (["sudo", "-i"], PROGRAM),
    (["sudo", "-su", "root"], PROGRAM),
    (["sudo", "-u", "root", "sh"], PROGRAM),
    (["script", "-q", "/dev/null"], PROGRAM),
    (["script", "-qc", "sh", "/dev/null"], PROGRAM),
    (["chroot", "/srv"], PROGRAM),
    (["nsenter", "-t", "1", "-a"], PROGRAM),
    (["unshare", "-r"], PROGRAM),
    (["at", "now"], PROGRAM),
    (["crontab", "-"], PROGRAM),
    (["ed", "file"], PROGRAM),
    (["gdb", "/bin/ls"], PROGRAM),
    (["lldb", "/bin/ls"], PROGRAM),
    (["vim", "-es"], PROGRAM),
    (["vim", "-s", "/dev/stdin", "file"], PROGRAM),
    (["vim", "file"], PROGRAM),
    (["vi"], PROGRAM),
    (["view", "/etc/hosts"], PROGRAM),
    (["nvim", "-u", "NONE"], PROGRAM),
    (["busybox", "vi", "file"], PROGRAM),
    (["vim.tiny"], PROGRAM),
    (["/usr/bin/vim.basic", "file"], PROGRAM),
    (["vimdiff", "a", "b"], PROGRAM),
    (["rview", "file"], PROGRAM),
    (["nvi", "file"], PROGRAM),
    (["make", "-f", "-"], PROGRAM),
    (["make", "--file=/dev/stdin"], PROGRAM),
    (["awk", "-f", "/dev/stdin"], PROGRAM),
    (["jq", "-f", "/dev/stdin"], PROGRAM),
    (["python3", "-i", "x.py"], PROGRAM),
    (["python3", "-c", "import sys; exec(sys.stdin.read())"], PROGRAM),
    (["perl", "-ne", "system $_"], PROGRAM),
    (["ruby", "-e", "eval(gets)"], PROGRAM),
    # launchers looked through
    (["env", "FOO=1", "sh"], PROGRAM),
    (["env", "-S", "sh -s"], PROGRAM),
    (["env", "-S", "sh"], PROGRAM),
    (["timeout", "5", "bash"], PROGRAM),
    (["nice", "-n", "5", "sh"], PROGRAM),
    (["ionice", "-c2", "sh"], PROGRAM),
    (["stdbuf", "-oL", "sh"], PROGRAM),
    (["nohup", "sh"], PROGRAM),
    (["setsid", "bash"], PROGRAM),
    (["eval", "sh"], PROGRAM),
    (["sh", "-c", "cat | sh"], PROGRAM),
    (["sh", "-c", "while read l; do $l; done"], UNSURE),
    (["sh", "-c", 'eval "$(cat)"'], UNSURE),
    (["sh", "-c", '"$(cat)"'], UNSURE),
    # unknown wrappers with a shell, interpreter or database client among their words
    (["pkexec", "sh"], UNSURE),
    (["strace", "-f", "sh"], UNSURE),
    (["chrt", "1", "sh"], UNSURE),
    (["chrt", "-o", "0", "bash"], UNSURE),
    (["ip", "netns", "exec", "blue", "sh"], UNSURE),
    (["find", ".", "-maxdepth", "0", "-exec", "sh", ";"], UNSURE),
    (["strace", "-f", "/usr/bin/python3"], UNSURE),
    (["ltrace", "psql"], UNSURE),
    (["my-wrapper", "--run=bash"], UNSURE),
    (["socat", "-", "EXEC:sh"], UNSURE),
    (["git", "-c", "alias.x=!sh", "x"], UNSURE),
    (["tar", "x", "--to-command=sh"], UNSURE),
    (["sort", "--compress-program=sh"], UNSURE),
    (["strace", "xargs", "rm"], UNSURE),
    (["emacs", "--script", "/dev/stdin"], UNSURE),
    (["strace", "-f", "$SHELL"], UNSURE),
    (["strace", "-f", "$(which sh)"], UNSURE),
    (["env", "BASH_ENV=/dev/stdin", "bash", "-c", "ls"], UNSURE),
    (["apt-get", "install", "-y", "python3"], UNSURE),  # -o hooks run commands
    (["kubectl", "exec", "-i", "pod", "--", "python3"], UNSURE),
    (["nsenter", "-t", "1", "-m", "bash"], PROGRAM),
    (["docker", "exec", "-i", "ctr", "sh"], UNSURE),
    # commands that start a shell, or a session the command line does not show
    (["newgrp"], UNSURE),
    (["newgrp", "wheel"], UNSURE),
    (["sg", "wheel"], UNSURE),
    (["pkexec"], UNSURE),
    (["fakeroot"], UNSURE),
    (["docker", "run", "-i", "alpine"], UNSURE),
    (["kubectl", "debug", "-it", "pod"], UNSURE),
    # a program on the command line decided at run time, or starting a reader
    (["python3", "-c", "$(cat)"], UNSURE),
    (["python3", "-c", "$PROGRAM"], UNSURE),
    (["node", "-e", "`cat`"], UNSURE),
    (["mysql", "-e", "$(cat)"], UNSURE),
    (["python3", "-c", "import os; os.system('sh')"], UNSURE),
    (["perl", "-e", 'exec "bash"'], UNSURE),
    (["psql", "-c", "\\! sh"], UNSURE),
    (["sqlite3", "db", ".shell sh"], UNSURE),
    (["awk", "{system($0)}"], UNSURE),
    (["awk", 'BEGIN { system("sh") }'], UNSURE),
    (["awk", '{ print | "sh" }'], UNSURE),
    (["sed", "e"], UNSURE),
    (["sed", "s/^/rm /e"], UNSURE),
    (["sed", "-e", "1e sh"], UNSURE),
    # stdin is data
    (["tar", "x", "-C", "/srv"], DATA),
    (["tar", "x", "-f", "-", "-C", "/srv"], DATA),
    (["cat"], DATA),
    (["cat", "/dev/stdin"], DATA),
    (["sha256sum"], DATA),
    (["gzip", "-d"], DATA),
    (["sort"], DATA),
    (["jq", "."], DATA),
    (["bash", "-c", "ls"], DATA),
    (["bash", "-lc", "ls"], DATA),
    (["bash", "script.sh"], DATA),
    (["python3", "x.py"], DATA),
    (["python3", "-c", "print(1)"], DATA),
    (["python3", "-c", "import subprocess; print(1)"], DATA),
    (["python3", "-m", "json.tool"], DATA),
    (["perl", "-ne", "print"], DATA),
    (["perl", "-e", "$x = 1; print $x"], DATA),
    (["node", "-e", "1"], DATA),
    (["ruby", "-e", "1"], DATA),
    (["php", "-r", "1;"], DATA),
    (["psql", "-c", "select 1"], DATA),
    (["mysql", "-e", "select 1"], DATA),
    (["sqlite3", "db", "select 1"], DATA),
    (["ssh", "-p", "22", "host", "ls"], DATA),
    (["su", "-c", "ls"], DATA),
    (["sudo", "ls"], DATA),
    (["sudo", "-Eu", "root", "ls"], DATA),
    (["busybox", "ls"], DATA),
    (["awk", "{print $1}"], DATA),
    (["awk", "-f", "prog.awk", "data"], DATA),
    (["sed", "s/a/b/g"], DATA),
    (["sed", "-n", "p"], DATA),
    (["sed", "s/</\\&lt;/g"], DATA),
    (["crontab", "-l"], DATA),
    (["sh", "-c", "ls"], DATA),
    (["sh", "-c", "if true; then ls; fi"], DATA),
    (["sh", "-c", "echo '<b>'"], DATA),
    (["grep", "bash", "/etc/passwd"], DATA),
    (["ls", "/bin/sh"], DATA),
    (["which", "python3"], DATA),
    (["make", "all"], DATA),
    (["chroot", "/srv", "ls"], DATA),
    (["unshare", "-r", "ls"], DATA),
    (["find", ".", "-name", "*.py"], DATA),
    (["git", "status"], DATA),
    (["docker", "ps"], DATA),
    (["kubectl", "apply", "-f", "-"], DATA),
    # without a terminal, vi takes its keystrokes (`:!sh`) from stdin
    (["vim", "--version"], DATA),
    (["openssl", "enc", "-d", "-aes-256-cbc"], DATA),
]

# Shell texts whose quoting and redirections matter: read as a remote shell reads them.
TEXTS: list[tuple[str, str]] = [
    ("sh <&0", UNSURE),
    ("sh<&0", UNSURE),
    ("sh 0<&0", UNSURE),
    ("sh 0>&3", UNSURE),
    ("exec 3<&0; sh <&3", UNSURE),
    ("exec {fd}<&0; sh <&$fd", UNSURE),
    ("bash <(cat)", UNSURE),
    ("python3 <(cat)", UNSURE),
    ('sh <<< "$(cat)"', UNSURE),
    ("sh </dev/stdin", UNSURE),
    ("sh < script.sh", UNSURE),
    ("cat <<EOF\nrm -rf /srv\nEOF", UNSURE),
    ("source <(cat)", UNSURE),
    ("tar x < archive.tar", UNSURE),
    ('echo "$(sh <&0)"', UNSURE),
    ("[[ -n $(sh <&0) ]]", UNSURE),
    ("((sh <&0) )", UNSURE),
    ("sh -c 'sh <&0'", UNSURE),
    ("ssh host 'bash <(cat)'", UNSURE),
    ("su -c 'sh <&0'", UNSURE),
    ("env -S 'sh <&0'", UNSURE),
    ("watch -n 1 'sh <&0'", UNSURE),
    ("BASH_ENV=/dev/stdin bash -c ls", UNSURE),
    ("sh -c 'BASH_ENV=/dev/fd/0 bash -c ls'", UNSURE),
    ("tar x -C $DIR", UNSURE),
    ("python3 /dev/fd/0", PROGRAM),
    (". /dev/stdin", PROGRAM),
    ("ls; sh", PROGRAM),
    ("cat | bash", PROGRAM),
    ("sudo -u root bash -s", PROGRAM),
    ("$SHELL", UNSURE),
    ("echo 'unclosed", UNSURE),
    ("`x`", UNSURE),
    ("{sh,}", UNSURE),
    ("/bin/s?", UNSURE),
    ("/bin/[s]h", UNSURE),
    ("cat < /dev/null", DATA),
    ("ls </dev/null", DATA),
    ("sh -c 'ls' <&-", DATA),
    ("grep '<' file", DATA),
    ('echo "<b>"', DATA),
    ("sed 's/</\\&lt;/g' file", DATA),
    ("for ((i = 0; i < 3; i++)); do echo $i; done", DATA),
    ("[[ a < b ]] && ls", DATA),
    ("echo $((1 < 2))", DATA),
    ("ls 2>&1", DATA),
    ("echo x >&2", DATA),
    ("ls # a < b", DATA),
    ("tar x -C $HOME/app", DATA),
    ("LC_ALL=C sort", DATA),
]


def verdict(readers: list[StdinReader]) -> str:
    if not readers:
        return DATA
    return UNSURE if all(r.unsure for r in readers) else PROGRAM


@pytest.mark.parametrize(("argv", "expected"), ARGVS, ids=[shlex.join(a) for a, _ in ARGVS])
def test_an_argv_is_classified(argv: list[str], expected: str) -> None:
    assert verdict(stdin_readers(argv=argv)) == expected
    assert verdict(stdin_readers(text=shlex.join(argv))) == expected  # as a remote shell reads it


@pytest.mark.parametrize(("text", "expected"), TEXTS, ids=[t for t, _ in TEXTS])
def test_a_shell_text_is_classified(text: str, expected: str) -> None:
    assert verdict(stdin_readers(text=text)) == expected


def test_an_unsure_reader_says_why_in_its_event() -> None:
    [reader] = stdin_readers(argv=["strace", "-f", "sh"])
    assert reader.as_event() == {
        "command": ["strace", "-f", "sh"],
        "language": "shell",
        "unsure": "strace may start sh",
    }
    [reader] = stdin_readers(text="exec 3<&0; python3 <&3")
    assert reader.language == "other"  # the redirected command is an interpreter
    assert reader.unsure == "stdin is redirected: <&3"
    assert stdin_readers(argv=["python3"])[0].as_event() == {
        "command": ["python3"],
        "language": "other",
    }


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("sh <&0", "<&0"),
        ("bash <(cat)", "<(cat)"),
        ("sh 0</dev/stdin", "0</dev/stdin"),
        ("cat <<- EOF", "<<- EOF"),
        ("sh 0>&3", "0>&3"),
        ("ls 3<&0", None),
        ("ls 2</tmp/x", None),
        ("echo \"a<b\" 'c<d' e\\<f", None),
        (
            "echo " + "$(" * 100 + "x" + ")" * 100,
            "(cannot tell: substitutions nested deeper than 64)",
        ),
    ],
)
def test_a_redirection_is_reported_as_written(text: str, written: str | None) -> None:
    assert stdin_redirection(text) == written


def test_argv_words_are_not_shell_text() -> None:
    """A shell connection runs an argv without a shell: a `<` word is an argument."""
    assert stdin_readers(argv=["grep", "-c", "<", "index.html"]) == []
    assert stdin_readers(argv=["sh", "-c", "grep -c '<' index.html"]) == []
    assert verdict(stdin_readers(argv=["sh", "-c", "grep -c < index.html"])) == UNSURE


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
