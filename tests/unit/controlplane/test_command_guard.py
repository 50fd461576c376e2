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
    ],
)
def test_denied_texts_name_their_rule(text: str, rule: str) -> None:
    decision = GUARD.check_text(text)
    assert not decision.allowed
    assert decision.rule == rule
    assert decision.reason and (rule in decision.reason or rule == UNPARSEABLE_RULE)


@pytest.mark.parametrize(
    "text",
    ["ls -l /", "rm -rf ./build", "echo 'rm -rf /'", "git push origin main", "uname -a", ""],
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
