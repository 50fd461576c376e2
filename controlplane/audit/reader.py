"""Reading the trail in pages, shared by the gRPC and HTTP export APIs.

A reader that always asks for `seq > cursor` sees every event once: seq is dense and becomes
visible in commit order (docs/decisions/0003), so no page can skip an event that commits later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlmodel import Session, col, select

from controlplane.errors import InvalidArgument
from controlplane.store.database import Database
from controlplane.store.models import EventRow
from trail.chain import export_line

DEFAULT_LIMIT = 500
MAX_LIMIT = 5000
MAX_SEQ = 2**63 - 1  # seq is a signed 64-bit column
MAX_TYPES = 50
__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MAX_SEQ",
    "MAX_TYPES",
    "Page",
    "check_request",
    "export_line",
    "read_page",
]
TYPE_RE = re.compile(r"^[a-z]+(\.[a-z_]+)+$")


@dataclass(frozen=True, slots=True)
class Page:
    events: list[EventRow]
    next: int  # pass as `after` for the next page; unchanged when nothing was new


def check_request(after: int, limit: int, types: Sequence[str]) -> int:
    """Validate a page request; returns the effective limit."""
    if not 0 <= after <= MAX_SEQ:
        raise InvalidArgument("after must be 0 or a seq that was returned")
    if not 0 <= limit <= MAX_SEQ:
        raise InvalidArgument("limit must be positive")
    if len(types) > MAX_TYPES:
        raise InvalidArgument(f"at most {MAX_TYPES} event types, not {len(types)}")
    for name in types:
        if len(name) > 64 or not TYPE_RE.fullmatch(name):
            shown = name if len(name) <= 40 else name[:37] + "..."
            raise InvalidArgument(f"{shown!r} is not an event type (e.g. db.query)")
    return min(limit or DEFAULT_LIMIT, MAX_LIMIT)


async def read_page(db: Database, after: int, limit: int, types: Sequence[str] = ()) -> Page:
    limit = check_request(after, limit, types)

    def page(session: Session) -> list[EventRow]:
        query = select(EventRow).where(EventRow.seq > after)
        if types:
            query = query.where(col(EventRow.type).in_(list(types)))
        return list(session.exec(query.order_by(col(EventRow.seq)).limit(limit)))

    rows = await db.read(page)
    return Page(rows, rows[-1].seq if rows else after)
