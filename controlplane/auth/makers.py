"""Who made an API token, from the trail: whoever made a token saw its secret and can act as
it, so a decision that needs a second person (a prune's approval, a review) refuses a token
the first one made, or the maker of the first one's token.

Read from the trail's own `token.create` records, not a table an operator could edit.
"""

from __future__ import annotations

import json

from sqlmodel import Session, select

from controlplane.store.models import EventRow

TOKEN_PREFIX = "token:"  # the subject of a machine token (auth/tokens.py: f"token:{name}")
MAX_TOKEN_CHAIN = 1000  # makers followed up a chain of tokens; a bound, not a policy


def minted_by_either(session: Session, one: str, other: str) -> tuple[str, str] | None:
    """(token, maker) when `one` is a token `other` made (up a chain of tokens), or the
    other way round; None when neither made the other. Only a token is made by someone: two
    people's subjects need no reading of the trail."""
    if not (one.startswith(TOKEN_PREFIX) or other.startswith(TOKEN_PREFIX)):
        return None
    creators = _token_creators(session)
    for token, creator in ((one, other), (other, one)):
        if creator in _minted_by(token, creators):
            return token, creator
    return None


def _token_creators(session: Session) -> dict[str, set[str]]:
    """Who made each API token, from the `token.create` records (a name reused after a
    revocation has every maker)."""
    creators: dict[str, set[str]] = {}
    query = select(EventRow.body).where(EventRow.type == "admin.change")
    for body in session.exec(query):
        if '"token.create"' not in body:
            continue
        event = json.loads(body)
        change, user = event.get("change", {}), event.get("user", {})
        if change.get("action") == "token.create":
            creators.setdefault(f"{TOKEN_PREFIX}{change.get('name')}", set()).add(
                str(user.get("sub"))
            )
    return creators


def _minted_by(subject: str, creators: dict[str, set[str]]) -> set[str]:
    """Everyone up the chain of tokens that made `subject` (a token minted by a token minted
    by alice is alice's)."""
    found: set[str] = set()
    todo = [subject]
    while todo and len(found) < MAX_TOKEN_CHAIN:
        for maker in creators.get(todo.pop(), ()):
            if maker not in found:
                found.add(maker)
                todo.append(maker)
    return found
