"""The identity the control plane attaches to everything a caller does."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Identity:
    """Who is acting, as the control plane itself authenticated them (never an agent's word)."""

    subject: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    actor: str | None = None
    is_admin: bool = False

    def as_user(self) -> dict[str, Any]:
        return {"sub": self.subject, "email": self.email, "groups": list(self.groups)}
