"""HTTP guardrails: decide, before a request is forwarded, whether a guardrail refuses it.

``deny_requests`` and ``allow_requests`` are ``METHOD /path/glob`` rules: ``*`` as the method
is any method; in the path ``**`` matches anything (slashes too), ``*`` one segment's worth
of characters (no slash), ``?`` one such character. A request matching a deny rule is refused;
when the connection's guardrails have allow rules at all, a request matching none of them is
refused too. ``deny_patterns`` (regular expressions) are searched in the body's text.

Rules are matched against the path a server would act on: percent-escapes decoded, repeated
slashes collapsed and dot segments resolved, so ``/public/../admin/x`` and ``/%61dmin/x`` are
``/admin/x`` and ``/admin/x/..`` is ``/admin/``. A path that climbs above the root is refused
outright.

A glob is matched by RE2, in time linear in the path: the path is the client's, and Python's
backtracking ``re`` took a second on a 2 KB path against ``/**/v1/**/v1/**/export``.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol
from urllib.parse import unquote

import re2

from controlplane.policy.document import Guardrail
from controlplane.policy.guardrails import ALLOW, Decision

__all__ = ["PATH_RULE", "RequestGuard", "normalized_path"]

PATH_RULE: Final = "(path)"
"""The `rule` of a refusal for a path no rule can be matched against."""


class _Glob(Protocol):
    """A compiled RE2 pattern, as far as the rules use one."""

    def fullmatch(self, text: str) -> object | None: ...


@dataclass(frozen=True, slots=True)
class _Rule:
    guardrail: str
    text: str
    method: str  # "*" or upper case
    path: _Glob

    def matches(self, method: str, path: str) -> bool:
        return self.method in ("*", method) and self.path.fullmatch(path) is not None


def _glob(pattern: str) -> _Glob:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    glob: _Glob = re2.compile("(?s)" + "".join(out))
    return glob


def _rule(guardrail: str, text: str) -> _Rule:
    method, _, path = text.partition(" ")
    return _Rule(guardrail, text, method.upper(), _glob(path))


def normalized_path(path: str) -> str | None:
    """The path as a server resolves it, or None when it climbs above the root."""
    decoded = unquote(path, errors="strict") if "%" in path else path
    if not decoded.startswith("/"):
        decoded = "/" + decoded
    parts: list[str] = []
    for segment in decoded.split("/"):
        if segment in ("", "."):
            continue
        if segment == "..":
            if not parts:
                return None
            parts.pop()
            continue
        parts.append(segment)
    # A path ending in a dot segment names a directory, as RFC 3986 §5.2.4 and nginx resolve
    # it: `/admin/x/..` is `/admin/`, which `/admin/**` must match.
    last = decoded.rsplit("/", 1)[-1]
    trailing = "/" if parts and (last in ("", ".", "..")) else ""
    return posixpath.join("/", *parts) + trailing


class RequestGuard:
    """The HTTP part of a connection's guardrails."""

    def __init__(self, guardrails: Sequence[Guardrail]) -> None:
        self._deny = [_rule(g.name, r) for g in guardrails for r in g.deny_requests]
        self._allow = [_rule(g.name, r) for g in guardrails for r in g.allow_requests]
        self._patterns = [(g.name, re.compile(p)) for g in guardrails for p in g.deny_patterns]

    @property
    def reads_body(self) -> bool:
        """Whether a body pattern can refuse a request (its text must be read first)."""
        return bool(self._patterns)

    def check_head(self, method: str, path: str) -> Decision:
        """Decide on the method and path alone."""
        try:
            resolved = normalized_path(path)
        except UnicodeDecodeError:
            resolved = None
        if resolved is None:
            return Decision(
                False, PATH_RULE, f"the path {path[:200]!r} cannot be resolved below the root"
            )
        method = method.upper()
        for rule in self._deny:
            if rule.matches(method, resolved):
                return Decision(
                    False,
                    rule.guardrail,
                    f"{method} {resolved} is denied by guardrail {rule.guardrail} ({rule.text!r})",
                )
        if self._allow and not any(rule.matches(method, resolved) for rule in self._allow):
            name = self._allow[0].guardrail
            return Decision(
                False,
                name,
                f"{method} {resolved} matches none of the allowed requests of guardrail {name}",
            )
        return ALLOW

    def check_body(self, text: str) -> Decision:
        """Decide on the body's text (deny_patterns)."""
        for name, pattern in self._patterns:
            if pattern.search(text):
                return Decision(
                    False,
                    name,
                    f"the request body matches a pattern denied by guardrail {name} "
                    f"({pattern.pattern!r})",
                )
        return ALLOW
