"""The identity the control plane attaches to everything a caller does."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

ADMIN = "admin"
AUDIT_READER = "audit-reader"  # may read the audit trail and nothing else
USER = "user"
ROLES = (ADMIN, AUDIT_READER, USER)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is acting, as the control plane itself authenticated them (never an agent's word)."""

    subject: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    actor: str | None = None
    role: str = "user"  # admin | audit-reader | user
    # A delegated token's connections (globs); None: not limited beyond the access rules.
    scope: tuple[str, ...] | None = None
    token_id: str | None = None  # the stored token that authenticated the caller, if any
    # When the credential stops working (an OIDC token's exp plus leeway); sessions end then.
    expires_at: datetime | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    def as_user(self) -> dict[str, Any]:
        return {"sub": self.subject, "email": self.email, "groups": list(self.groups)}
