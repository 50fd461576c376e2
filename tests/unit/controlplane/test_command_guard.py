"""Command guardrails: what a remote shell would run is what gets checked."""

import pytest

from controlplane.policy.commands import CommandGuard
from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import UNPARSEABLE_RULE

GUARD = CommandGuard(
    [
        Guardrail(name="no-rm-root", deny_commands=["rm -rf /", "rm -rf /*"]),
        Guardrail(name="no-force-push", deny_commands=["git push *--force*", "git push -f*"]),
        Guardrail(name="no-shutdown", deny_patterns=[r"\bshutdown\b"]),
    ]
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("rm -rf /", "no-rm-root"),
        ("ls; rm -rf /", "no-rm-root"),
        ("ls && rm -rf /var", "no-rm-root"),
        ("true || rm  -rf   /", "no-rm-root"),
        ("echo hi | rm -rf /", "no-rm-root"),
        ("ls\nrm -rf /", "no-rm-root"),
        ("(cd /tmp; rm -rf /)", "no-rm-root"),
        ("sudo -u root rm -rf /", "no-rm-root"),
        ("sudo sh -c 'rm -rf /'", "no-rm-root"),
        ('bash -lc "cd / && rm -rf /"', "no-rm-root"),
        ("FOO=1 env BAR=2 nohup rm -rf /", "no-rm-root"),
        ("timeout 5 rm -rf /", "no-rm-root"),
        ("echo $(rm -rf /)", "no-rm-root"),
        ("echo `rm -rf /`", "no-rm-root"),
        ("/usr/bin/env rm '-rf' \"/\"", "no-rm-root"),
        ("git push origin main --force", "no-force-push"),
        ("git push -f origin", "no-force-push"),
        ("sudo shutdown -h now", "no-shutdown"),
        ("echo 'unclosed", UNPARSEABLE_RULE),
        # launchers whose options take values in every spelling, and other launchers
        ("sudo -Eu root rm -rf /", "no-rm-root"),
        ("sudo -uroot rm -rf /", "no-rm-root"),
        ("sudo --user root rm -rf /", "no-rm-root"),
        ("sudo --user=root rm -rf /", "no-rm-root"),
        ("timeout --signal KILL 5 rm -rf /", "no-rm-root"),
        ("nice --adjustment 5 rm -rf /", "no-rm-root"),
        ("busybox rm -rf /", "no-rm-root"),
        ("busybox sh -c 'rm -rf /'", "no-rm-root"),
        ("setsid rm -rf /", "no-rm-root"),
        ("su -c 'rm -rf /' root", "no-rm-root"),
        ("runuser -u x --command='rm -rf /'", "no-rm-root"),
        ("flock /tmp/lock rm -rf /", "no-rm-root"),
        ("flock /tmp/lock -c 'rm -rf /'", "no-rm-root"),
        ("chroot /mnt rm -rf /", "no-rm-root"),
        ("taskset -c 0 rm -rf /", "no-rm-root"),
        ("watch -n 1 rm -rf /", "no-rm-root"),
        ("script -qc 'rm -rf /' /dev/null", "no-rm-root"),
        # every shell programs.py knows (one list), and program runners that split or join
        # their words into a command: env -S, GNU parallel, PowerShell's -Command
        ("tcsh -c 'rm -rf /'", "no-rm-root"),
        ("csh -fc 'rm -rf /'", "no-rm-root"),
        ("ksh93 -c 'rm -rf /'", "no-rm-root"),
        ("env -S 'rm -rf /'", "no-rm-root"),
        ("env -S'rm -rf /'", "no-rm-root"),
        ("env -iS 'FOO=1 rm -rf' /", "no-rm-root"),
        ("env --split-string='rm -rf /'", "no-rm-root"),
        ("/usr/bin/env -S 'sudo rm -rf /'", "no-rm-root"),
        ("parallel rm -rf ::: /", "no-rm-root"),
        ("parallel -j 2 'rm -rf {}' ::: /tmp /", "no-rm-root"),
        ("parallel 'cd /; rm -rf /'", "no-rm-root"),
        ("pwsh -NoProfile -Command 'rm -rf /'", "no-rm-root"),
        ("pwsh -c 'rm -rf /'", "no-rm-root"),
        ("pwsh -EncodedCommand cgBtACAALQByAGYAIAAvAA==", UNPARSEABLE_RULE),
        # simple commands inside compound ones
        ("if true; then rm -rf /; fi", "no-rm-root"),
        ("if false; then :; else rm -rf /; fi", "no-rm-root"),
        ("for i in 1; do rm -rf /; done", "no-rm-root"),
        ("while true; do rm -rf /; done", "no-rm-root"),
        ("{ rm -rf /; }", "no-rm-root"),
        ("! rm -rf /", "no-rm-root"),
        ("f() { rm -rf /; }; f", "no-rm-root"),
        # redirections before the command name, and bash's coproc
        (">/dev/null rm -rf /", "no-rm-root"),
        ("> /dev/null rm -rf /", "no-rm-root"),
        ("2>&1 rm -rf /", "no-rm-root"),
        ("2> err rm -rf /", "no-rm-root"),
        ("<in rm -rf /", "no-rm-root"),
        ("&>/dev/null rm -rf /", "no-rm-root"),
        (">|out rm -rf /", "no-rm-root"),
        ("{fd}>x rm -rf /", "no-rm-root"),
        ("ls; 2>&1 >/dev/null FOO=1 rm -rf /", "no-rm-root"),
        ("coproc rm -rf /", "no-rm-root"),
        ("coproc NAME { rm -rf /; }", "no-rm-root"),
        ("rm>/dev/null -rf /", "no-rm-root"),
        ("rm</dev/null -rf /", "no-rm-root"),
        ("rm>&/dev/null -rf /", "no-rm-root"),
        ("sudo rm 2>/dev/null -rf /", "no-rm-root"),
        ("FOO=1 rm>x -rf /", "no-rm-root"),
        ("rm -rf > out /", "no-rm-root"),
        # a quoted `>` before `&` or `|` is no redirection: what follows is a command
        ("echo '2>' & rm -rf /", UNPARSEABLE_RULE),
        ("echo '>' | rm -rf /", UNPARSEABLE_RULE),
        ('echo "1>" & rm -rf /', UNPARSEABLE_RULE),
        ("echo 2\\> & rm -rf /", UNPARSEABLE_RULE),
        # command names the shell makes at run time
        ("{rm,-rf,/}", UNPARSEABLE_RULE),
        ("sudo " * 3000 + "rm -rf /", UNPARSEABLE_RULE),  # not a RecursionError
        ("env " * 3000 + "ls", UNPARSEABLE_RULE),
        ("/bin/r? -rf /", UNPARSEABLE_RULE),
    ],
)
def test_denied_texts_name_their_rule(text: str, rule: str) -> None:
    decision = GUARD.check_text(text)
    assert not decision.allowed
    assert decision.rule == rule
    assert decision.reason and (rule in decision.reason or rule == UNPARSEABLE_RULE)


@pytest.mark.parametrize(
    "text",
    [
        "ls -l /",
        "rm -rf ./build",
        "echo 'rm -rf /'",
        "git push origin main",
        "parallel echo ::: / /tmp",
        "env -S 'ls -l' /",
        "env -u HOME ls /",
        "pwsh -c Get-Date",
        "tcsh -c 'rm -rf ./build'",
        "uname -a",
        "",
        "echo $((6*7))",
        "(( i = 2*3 )); echo $i",
        "~/bin/tool --x",
        "echo done >&2",
        "ls 2>&1 | grep x",
        "ls >|out",
        "echo failed>&2",
        "exec 3<&0",
        "ls 'a>' 2>&1",
    ],
)
def test_allowed_texts(text: str) -> None:
    assert GUARD.check_text(text).allowed


def test_an_argv_runs_without_a_shell() -> None:
    # Without a shell, `;` in an argument is just a character: no second command runs.
    assert GUARD.check_argv(["echo", ";rm -rf /"]).allowed
    assert not GUARD.check_argv(["rm", "-rf", "/"]).allowed
    assert not GUARD.check_argv(["sh", "-c", "ls; rm -rf /"]).allowed
    assert not GUARD.check_argv(["sudo", "shutdown"]).allowed


def test_no_rules_allow_everything_even_unreadable_text() -> None:
    guard = CommandGuard([])
    assert not guard
    assert guard.check_text("echo 'unclosed").allowed
