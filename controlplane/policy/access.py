"""Who may open which connection, and how: the policy's `access:` rules, deny by default.

`decide` is pure (no I/O): the relay asks it before a session opens and `connections list`
asks it for every connection and mode. A refusal names the rule (or the rule that would be
needed), so the person knows whom to ask for what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from controlplane.auth.identity import ADMIN, USER, Identity
from controlplane.policy.document import AccessRule, Review

MODES = ("exec", "connect")


@dataclass(frozen=True, slots=True)
class AccessDecision:
    """`allowed`: the session may open now. `needs_review`: it may open once a reviewer of
    `needs_review.groups` approves (then `allowed` is False and `rule` names the rule)."""

    allowed: bool
    rule: str | None
    needs_review: Review | None
    reason: str


def covers(patterns: Sequence[str], connection: str) -> bool:
    """Whether `connection` matches one of the globs (case-sensitive, like names)."""
    return any(fnmatchcase(connection, pattern) for pattern in patterns)


def decide(
    identity: Identity, connection: str, mode: str, rules: Sequence[AccessRule]
) -> AccessDecision:
    who = identity.subject
    if mode not in MODES:
        return AccessDecision(False, None, None, f"unknown mode {mode!r}: use exec or connect")
    if identity.scope is not None and not covers(identity.scope, connection):
        allowed = ", ".join(identity.scope) or "none"
        return AccessDecision(
            False,
            None,
            None,
            f"this delegated token (actor {identity.actor or '?'}) is limited to the "
            f"connections {allowed}; {connection!r} is not one of them",
        )
    if identity.role == ADMIN:
        return AccessDecision(True, None, None, f"{who} has the admin role")
    if identity.role != USER:
        return AccessDecision(
            False,
            None,
            None,
            f"{who} (role {identity.role!r}) may not open sessions: it needs a person's "
            "identity or a delegated token",
        )
    mine = set(identity.groups)
    for_connection = [rule for rule in rules if covers(rule.connections, connection)]
    for_mode = [rule for rule in for_connection if mode in rule.modes]
    granted = [rule for rule in for_mode if mine & set(rule.groups)]
    direct = next((rule for rule in granted if rule.review is None), None)
    if direct is not None:
        return AccessDecision(
            True, direct.name, None, f"access rule {direct.name!r} grants {mode} on {connection!r}"
        )
    if granted:
        rule = granted[0]
        assert rule.review is not None
        return AccessDecision(
            False,
            rule.name,
            rule.review,
            f"access rule {rule.name!r} grants {mode} on {connection!r} after a review by "
            f"{_groups(rule.review.groups)}",
        )
    groups = f"groups {', '.join(sorted(mine))}" if mine else "no groups"
    refused = f"access denied: {who} ({groups}) may not {mode} on {connection!r}: "
    if for_mode:
        needed = "; ".join(
            f"access rule {rule.name!r} grants it to {_groups(rule.groups)}" for rule in for_mode
        )
        return AccessDecision(False, None, None, refused + needed)
    if for_connection:
        needed = "; ".join(
            f"access rule {rule.name!r} grants only {', '.join(rule.modes)}"
            for rule in for_connection
        )
        return AccessDecision(
            False, None, None, f"{refused}{needed}; a rule with mode {mode} is needed"
        )
    return AccessDecision(
        False,
        None,
        None,
        f"{refused}no access rule grants {mode} on it; an admin must add one to the "
        f"policy's access section (connections: [{connection}], modes: [{mode}], "
        "groups: [a group of yours])",
    )


def _groups(groups: Sequence[str]) -> str:
    return ("group " if len(groups) == 1 else "groups ") + ", ".join(groups)
