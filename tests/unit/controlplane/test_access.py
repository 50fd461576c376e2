"""The access evaluator: deny by default, globs, modes, reviews, admin, delegated scope."""

from datetime import timedelta

from controlplane.auth.identity import ADMIN, AUDIT_READER, Identity
from controlplane.policy.access import decide
from controlplane.policy.document import AccessRule, Review

RULES = [
    AccessRule(name="dba", groups=["dba"], connections=["pg-*"], modes=["exec", "connect"]),
    AccessRule(
        name="oncall-prod",
        groups=["oncall"],
        connections=["pg-prod"],
        modes=["exec"],
        review=Review(groups=["security"], ttl=timedelta(hours=1)),
    ),
    AccessRule(name="web-ro", groups=["web"], connections=["web-*"], modes=["connect"]),
]

ALICE = Identity(subject="alice", groups=("dba",))
BOB = Identity(subject="bob", groups=("security",))
CAROL = Identity(subject="carol", groups=("oncall",))


def test_a_group_rule_grants_its_connections_by_glob() -> None:
    decision = decide(ALICE, "pg-prod", "exec", RULES)
    assert decision.allowed
    assert decision.rule == "dba"
    assert decision.needs_review is None
    assert decide(ALICE, "pg-staging", "connect", RULES).allowed


def test_deny_by_default_without_rules() -> None:
    decision = decide(ALICE, "pg-prod", "exec", [])
    assert not decision.allowed
    assert "no access rule grants exec" in decision.reason


def test_refusal_names_the_rule_and_group_that_would_be_needed() -> None:
    decision = decide(BOB, "pg-prod", "exec", RULES)
    assert not decision.allowed
    assert decision.needs_review is None
    assert "access rule 'dba' grants it to group dba" in decision.reason
    assert "bob (groups security)" in decision.reason


def test_a_rule_for_another_mode_is_named() -> None:
    decision = decide(Identity(subject="w", groups=("web",)), "web-1", "exec", RULES)
    assert not decision.allowed
    assert "access rule 'web-ro' grants only connect" in decision.reason


def test_unknown_connections_are_refused() -> None:
    decision = decide(ALICE, "mysql-prod", "exec", RULES)
    assert not decision.allowed
    assert "connections: [mysql-prod]" in decision.reason


def test_a_review_rule_asks_for_a_review() -> None:
    decision = decide(CAROL, "pg-prod", "exec", RULES)
    assert not decision.allowed
    assert decision.rule == "oncall-prod"
    assert decision.needs_review is not None
    assert decision.needs_review.groups == ["security"]
    assert "review by group security" in decision.reason
    assert not decide(CAROL, "pg-prod", "connect", RULES).allowed


def test_a_rule_without_review_wins_over_one_with_review() -> None:
    both = Identity(subject="dave", groups=("oncall", "dba"))
    decision = decide(both, "pg-prod", "exec", RULES)
    assert decision.allowed
    assert decision.rule == "dba"


def test_admin_role_is_always_allowed() -> None:
    admin = Identity(subject="admin", role=ADMIN)
    assert decide(admin, "anything", "connect", []).allowed


def test_audit_reader_may_not_open_sessions() -> None:
    reader = Identity(subject="token:splunk", role=AUDIT_READER, groups=("dba",))
    decision = decide(reader, "pg-prod", "exec", RULES)
    assert not decision.allowed
    assert "audit-reader" in decision.reason


def test_unknown_mode_is_refused() -> None:
    assert not decide(ALICE, "pg-prod", "ssh", RULES).allowed


def test_delegated_scope_limits_even_what_the_rules_grant() -> None:
    delegated = Identity(subject="alice", groups=("dba",), actor="devin", scope=("pg-staging",))
    assert decide(delegated, "pg-staging", "exec", RULES).allowed
    refused = decide(delegated, "pg-prod", "exec", RULES)
    assert not refused.allowed
    assert "limited to the connections pg-staging" in refused.reason
    admin = Identity(subject="admin", role=ADMIN, actor="devin", scope=())
    assert not decide(admin, "pg-prod", "exec", RULES).allowed
