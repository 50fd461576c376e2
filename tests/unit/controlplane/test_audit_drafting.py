"""Drafting a session's events: its shared fields are checked once and made again when the
context changed, only the event's own fields are checked per event, and one clock reading gives
the event's moment, its text and its id's milliseconds."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.audit import events
from controlplane.audit.events import SessionContext, draft, rfc3339
from controlplane.audit.writer import InvalidEvent
from controlplane.auth.identity import Identity


def context(**changes: Any) -> SessionContext:
    fields: dict[str, Any] = {
        "session_id": "s-1",
        "identity": Identity("alice", "alice@example.com", ("dba",), "claude"),
        "connection": {"name": "pg", "type": "postgres", "agent": "a-1"},
        "audit_mode": "strict",
        "source": {"ip": "192.0.2.1"},
        "mcp_call": {"seq": 7, "id": "e-7"},
    }
    fields.update(changes)
    return SessionContext(**fields)


def test_a_session_event_has_the_fields_and_order_it_always_had() -> None:
    ctx = context()
    for _ in range(2):  # made, then cached
        body = draft("db.query", session=ctx, request={"statement": "select 1"}, skip=None).body
        assert list(body) == [
            "id",
            "time",
            "type",
            "session_id",
            "connection",
            "audit_mode",
            "source",
            "mcp_call",
            "user",
            "actor",
            "request",
        ]
        assert body["user"] == {"sub": "alice", "email": "alice@example.com", "groups": ["dba"]}
        assert body["actor"] == "claude" and body["mcp_call"] == {"seq": 7, "id": "e-7"}
    plain = draft("db.query", session=context(source={}, mcp_call=None)).body
    assert "source" not in plain and "mcp_call" not in plain


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"argv": ["sh", "-c", "echo \ud800"]}, "request.argv[2]"),
        ({"n": -(2**53)}, "request.n"),
        ({"ratio": float("nan")}, "request.ratio"),
        ({"\udc80": 1}, "request.\\udc80"),
    ],
)
def test_the_events_own_fields_are_still_checked(value: Any, where: str) -> None:
    ctx = context()
    draft("db.query", session=ctx)  # the shared fields are cached and fine
    with pytest.raises(InvalidEvent, match=re.escape(f"field {where}")):
        draft("db.query", session=ctx, request=value)
    with pytest.raises(InvalidEvent, match="field type"):
        draft("\ud800", session=ctx)


def test_a_changed_context_is_checked_again() -> None:
    ctx = context()
    draft("db.query", session=ctx)
    ctx.connection["name"] = "pg-\ud800"  # changed inside the dict the cache was made from
    with pytest.raises(InvalidEvent, match=r"field connection\.name"):
        draft("db.query", session=ctx)
    ctx.connection["name"] = "pg-2"
    assert draft("db.query", session=ctx).body["connection"]["name"] == "pg-2"
    ctx.identity = Identity("bob")
    body = draft("db.query", session=ctx).body
    assert body["user"]["sub"] == "bob" and "actor" not in body
    ctx.audit_mode = "async"
    ctx.source = {"ip": "\udc00"}
    with pytest.raises(InvalidEvent, match=r"field source\.ip"):
        draft("db.query", session=ctx)
    ctx.source = {"ip": "192.0.2.2"}
    body = draft("db.query", session=ctx).body
    assert body["audit_mode"] == "async" and body["source"] == {"ip": "192.0.2.2"}


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**60), max_value=2**60)
        | st.floats()
        | st.text(max_size=6)
        | st.sampled_from(["\ud800", "a\udfff"]),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=10,
    )
)
def test_a_session_event_is_refused_exactly_when_a_plain_one_is(value: object) -> None:
    """The shortcut for session events accepts and refuses what the full check does."""
    try:
        events.check_body({"value": value})
        fine = True
    except InvalidEvent:
        fine = False
    try:
        draft("test.event", session=context(), value=value)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == fine


def test_one_clock_reading_gives_the_moment_its_text_and_the_ids_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = 1_764_979_199_000_000_000  # 2025-12-05T23:59:59Z
    readings = [
        base + 999_999_999,  # the last nanosecond of a second
        base + 1_000_000_000,  # the next second (and day)
        base + 1_000_000_999,
        base + 1_000_001_000,
        base + 61_500_000_000,
        base,  # the clock went back
    ]
    clock = events._Clock()
    for nanos in readings:
        monkeypatch.setattr(time, "time_ns", lambda nanos=nanos: nanos)
        moment, text, millis = clock.read()
        expected = datetime.fromtimestamp(nanos // 1000 / 1_000_000, UTC)
        assert moment == expected and moment.tzinfo is UTC
        assert text == rfc3339(moment)
        assert millis == nanos // 1_000_000
    monkeypatch.undo()
    moment, text, _ = events._Clock().read()
    assert text == rfc3339(moment)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 5
