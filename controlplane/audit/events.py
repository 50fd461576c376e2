"""The shape of an audit event (DESIGN §5) and the context every event of a session shares."""

from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controlplane.audit.errors import InvalidEvent
from controlplane.auth.identity import Identity

JSON = dict[str, Any]
SAFE_INT = 2**53 - 1  # RFC 8785: an integer a double cannot hold exactly has no canonical form
MAX_DEPTH = 32  # nesting of objects and arrays in one event; deeper is refused, not recursed
_SURROGATE = re.compile("[\ud800-\udfff]")


def new_event_id(millis: int | None = None) -> str:
    """A UUIDv7: time-ordered, so ids sort roughly like seq even across replicas.

    48 bits of Unix milliseconds (``millis``, or now), then 74 random bits around the version
    (7) and variant (10) bits; set on bytes, which costs less than the same arithmetic on one
    big integer.
    """
    if millis is None:
        millis = time.time_ns() // 1_000_000
    raw = bytearray((millis & 0xFFFF_FFFF_FFFF).to_bytes(6, "big"))
    raw += os.urandom(10)
    raw[6] = 0x70 | raw[6] & 0x0F
    raw[8] = 0x80 | raw[8] & 0x3F
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def utc_now() -> datetime:
    return datetime.now(UTC)


class _Clock:
    """One reading of the clock as an event needs it: the moment, its `rfc3339` text and its
    Unix milliseconds (for the id). The text of the whole second is made once per second;
    every event then only adds its microseconds (`isoformat` was a sixth of drafting). The
    second's parts are one tuple, replaced whole: a thread that drafts meanwhile (a store
    transaction) reads the old second's or the new one's, never a mix."""

    __slots__ = ("_second",)

    def __init__(self) -> None:
        self._second: tuple[int, str, tuple[int, int, int, int, int, int]] = (-1, "", (0,) * 6)

    def read(self) -> tuple[datetime, str, int]:
        nanos = time.time_ns()
        second, rest = divmod(nanos, 1_000_000_000)
        known = self._second
        if known[0] != second:
            base = datetime.fromtimestamp(second, UTC)
            text = rfc3339(base)  # …T12:34:56.000000Z
            parts = (base.year, base.month, base.day, base.hour, base.minute, base.second)
            known = self._second = (second, text[: text.rindex(".") + 1], parts)
        _, prefix, (year, month, day, hour, minute, sec) = known
        micros = rest // 1000
        moment = datetime(year, month, day, hour, minute, sec, micros, UTC)
        return moment, prefix + str(1_000_000 + micros)[1:] + "Z", nanos // 1_000_000


_clock = _Clock()


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything was stored in UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def rfc3339(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.ffffffZ` in UTC. isoformat() is the same text at a third of
    strftime's cost (every event pays it); strftime stays for years before 1000, which it
    does not pad."""
    utc = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    if utc.year < 1000:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


@dataclass(slots=True)
class SessionContext:
    """What every event of one session repeats, so each event stands on its own in a SIEM."""

    session_id: str
    identity: Identity
    connection: JSON
    audit_mode: str
    source: JSON = field(default_factory=dict)
    # The `mcp.call` event ({"seq", "id"}) of the MCP tool call that opened the session.
    mcp_call: JSON | None = None
    # `shared()`'s fields, and a copy of what they were made from (see there).
    _shared: tuple[tuple[Any, ...], JSON | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def shared(self) -> JSON | None:
        """The fields every event of the session repeats, in the order `draft` puts them, once
        they were found encodable (None: one is not, and `draft` names it).

        Made and checked once, not for every event: a session's events differ only in their
        own fields. Made again when a field of the context changed since, or what one of its
        dicts holds (compared with a copy taken then).
        """
        made_of = (
            self.session_id,
            self.identity,
            self.audit_mode,
            self.connection,
            self.source,
            self.mcp_call,
        )
        cached = self._shared
        if cached is not None:
            was = cached[0]
            if (
                was[0] == made_of[0]
                and was[1] is made_of[1]  # frozen
                and was[2] == made_of[2]
                and was[3:] == made_of[3:]  # copies: compared by what they hold
            ):
                return cached[1]
        fields: JSON = {
            "session_id": self.session_id,
            "connection": self.connection,
            "audit_mode": self.audit_mode,
        }
        if self.source:
            fields["source"] = self.source
        if self.mcp_call is not None:
            fields["mcp_call"] = self.mcp_call
        fields["user"] = self.identity.as_user()
        if self.identity.actor:
            fields["actor"] = self.identity.actor
        checked = fields if _fine(fields, 0) else None
        snapshot = (*made_of[:3], *copy.deepcopy(made_of[3:]))
        self._shared = (snapshot, checked)
        return checked


@dataclass(slots=True)
class Draft:
    """An event before the writer gives it seq, prev_hash and hash."""

    type: str
    time: datetime
    body: JSON

    @property
    def session_id(self) -> str | None:
        value = self.body.get("session_id")
        return value if isinstance(value, str) else None


def draft(
    event_type: str,
    *,
    session: SessionContext | None = None,
    identity: Identity | None = None,
    **fields: Any,
) -> Draft:
    """Build an event; `None` fields are left out so that absent means "does not apply"."""
    moment, text, millis = _clock.read()
    body: JSON = {"id": new_event_id(millis), "time": text, "type": event_type}
    own = {k: v for k, v in fields.items() if v is not None}
    if session is not None:
        shared = session.shared()  # checked when it was made
        if shared is not None:
            body.update(shared)
            body.update(own)
            # Only the event's own fields are left to check (the id and time are ours).
            if not (_fine(own, 0) and _fine(event_type, 0)):
                check_body(body)  # raises, naming the field
            return Draft(event_type, moment, body)
        identity = session.identity
        body["session_id"] = session.session_id
        body["connection"] = session.connection
        body["audit_mode"] = session.audit_mode
        if session.source:
            body["source"] = session.source
        if session.mcp_call is not None:
            body["mcp_call"] = session.mcp_call
    if identity is not None:
        body["user"] = identity.as_user()
        if identity.actor:
            body["actor"] = identity.actor
    body.update(own)
    check_body(body)
    return Draft(event_type, moment, body)


def draft_result(
    event_type: str, *, session: SessionContext, ref: int, result: JSON, **fields: Any
) -> Draft:
    """A result event that is always recordable: the request already ran, so a value the
    target sent that has no canonical form (a lone surrogate) must not cost the trail its
    result. Only the values that cannot be encoded are left out; everything else (rows, exit
    status, the recording's digest, the stdin program's digest, run_as) is kept, and
    `dropped` names each value left out and why."""
    try:
        return draft(event_type, session=session, ref=ref, result=result, **fields)
    except InvalidEvent:
        dropped: dict[str, str] = {}
        kept = _encodable({"result": result, **fields}, "", 0, dropped)
        assert isinstance(kept, dict)  # a dict stays a dict: only its values are dropped
        shown = dict(list(dropped.items())[:MAX_DROPPED])
        if len(dropped) > MAX_DROPPED:
            shown["..."] = f"{len(dropped) - MAX_DROPPED} more values were left out"
        return draft(event_type, session=session, ref=ref, dropped=shown, **kept)


MAX_DROPPED = 20  # values named in a result's `dropped`; more are counted
_LEFT_OUT = object()


def _encodable(value: Any, path: str, depth: int, dropped: dict[str, str]) -> Any:
    """`value` without what RFC 8785 cannot encode: a dict loses those entries, a list has
    None in their place, a value that cannot be encoded at all becomes `_LEFT_OUT`. Each
    one is named in `dropped` (path → why)."""
    if isinstance(value, dict) and depth < MAX_DEPTH:
        kept: dict[str, Any] = {}
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or (not key.isascii() and _SURROGATE.search(key)):
                dropped[_shown_path(where)] = "has a key that is not valid text"
                continue
            encodable = _encodable(item, where, depth + 1, dropped)
            if encodable is not _LEFT_OUT:
                kept[key] = encodable
        return kept
    if isinstance(value, list | tuple) and depth < MAX_DEPTH:
        items = [
            _encodable(item, f"{path}[{i}]", depth + 1, dropped) for i, item in enumerate(value)
        ]
        return [None if item is _LEFT_OUT else item for item in items]
    problem = _problem(value, path, depth)
    if problem is None:
        return value
    where, why = problem
    dropped[_shown_path(where)] = why
    return _LEFT_OUT


def _shown_path(where: str) -> str:
    """A field's path as an event may hold it: printable, bounded, never a surrogate."""
    where = where.encode("utf-8", "backslashreplace").decode("utf-8")
    return where if len(where) <= 120 else where[:117] + "..."


def check_body(body: JSON) -> None:
    """Raise InvalidEvent unless `body` has an RFC 8785 encoding.

    Checked when the event is drafted, so that a value taken from a request (a lone surrogate
    in a JSON string, an integer beyond 2**53, NaN) fails that request with a clear error instead
    of reaching the writer, where it would fail a group commit shared with other sessions.
    """
    if _fine(body, 0):
        return
    problem = _problem(body, "", 0)  # the slow walk only to name what is wrong
    if problem is not None:
        where, why = problem
        # The path is made of the request's own keys: printable, bounded, never a surrogate.
        where = _shown_path(where)
        subject = f"field {where}" if where else "the event"
        raise InvalidEvent(f"the request cannot be recorded: {subject} {why}")


def _fine(value: Any, depth: int) -> bool:
    """The common case, fast: exact built-in types, all encodable (half `_problem`'s cost;
    every event pays it). False means "look closer", not necessarily "invalid"."""
    kind = type(value)
    if kind is str:
        return value.isascii() or not _SURROGATE.search(value)
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or not _SURROGATE.search(key)):
                return False
            if type(item) is str:
                if not (item.isascii() or not _SURROGATE.search(item)):
                    return False
            elif not _fine(item, depth + 1):
                return False
        return True
    if kind is list or kind is tuple:
        for item in value:
            if type(item) is str:
                if not (item.isascii() or not _SURROGATE.search(item)):
                    return False
            elif not _fine(item, depth + 1):
                return False
        return True
    if value is None or kind is bool:
        return True
    if kind is int:
        return bool(-SAFE_INT <= value <= SAFE_INT)
    if kind is float:
        return math.isfinite(value)
    return False


def _problem(value: Any, path: str, depth: int) -> tuple[str, str] | None:
    """(where, why) of the first value RFC 8785 cannot encode, or None."""
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            return path, "holds a lone surrogate: it is not valid Unicode text"
        return None
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        if -SAFE_INT <= value <= SAFE_INT:
            return None
        return path, "holds an integer beyond ±(2**53-1), which JSON cannot carry exactly"
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "holds a number that is not finite")
    if depth >= MAX_DEPTH:
        return path, f"nests deeper than {MAX_DEPTH} levels"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return path, f"has a key that is not a string ({type(key).__name__})"
            where = f"{path}.{key}" if path else key
            if not key.isascii() and _SURROGATE.search(key):
                return where, "is a key holding a lone surrogate"
            problem = _problem(item, where, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = _problem(item, f"{path}[{index}]", depth + 1)
            if problem is not None:
                return problem
        return None
    return path, f"holds a {type(value).__name__}, which is not a JSON value"
