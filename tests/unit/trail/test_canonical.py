"""The hash chain's canonical JSON: the fast path through orjson must write exactly what
RFC 8785 (the `rfc8785` package) writes, or refuse exactly when it refuses."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trail import canonical as chain

TEXT = st.text(max_size=12) | st.sampled_from(
    ["", "\ue000", "\U0001f600", "\x7f", "\u2028", "\ud800", '\x00\x1f"\\\b\f\n\r\t', "é"]
)
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [0.0, -0.0, 1.0, 1e16, 1e21, 1e-7, 1e-6, 0.41, 5e-324, 1.7976931348623157e308, 0.1 + 0.2]
)
INTS = st.integers() | st.sampled_from([2**53 - 1, 2**53, -(2**53) + 1, -(2**53), 0, -1])
LEAF = st.none() | st.booleans() | INTS | FLOATS | TEXT
KEYS = TEXT | st.sampled_from(["seq", "prev_hash", "A", "a", "\ue000x", "\U0001f600x"])
VALUES = st.recursive(
    LEAF,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(KEYS, inner, max_size=6),
    max_leaves=30,
)
ASCII_KEYS = st.text(alphabet=st.characters(max_codepoint=127), max_size=6)
ASCII_VALUES = st.recursive(
    st.none() | st.booleans() | INTS | FLOATS | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(ASCII_KEYS, inner, max_size=6),
    max_leaves=30,
)


def outcome(encode: Any, value: dict[str, Any]) -> tuple[str, object]:
    try:
        return "ok", bytes(encode(value))
    except Exception as exc:  # both must refuse the same values, with the same kind of error
        return "refused", type(exc).__name__


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=8))
def test_canonical_is_rfc8785_for_any_json(value: dict[str, Any]) -> None:
    assert outcome(chain.canonical, value) == outcome(rfc8785.dumps, value)


@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.dictionaries(ASCII_KEYS, ASCII_VALUES, max_size=8))
def test_canonical_is_rfc8785_on_the_fast_path(value: dict[str, Any]) -> None:
    # ASCII keys: most of these take orjson, the path every real event takes.
    assert outcome(chain.canonical, value) == outcome(rfc8785.dumps, value)


@settings(max_examples=2000, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1, max_size=4))
def test_floats_on_the_fast_path_are_written_as_rfc8785_writes_them(values: list[float]) -> None:
    # Where orjson and RFC 8785 could differ: the digits and notation of a float.
    event = {"result": {"duration_ms": values}}
    assert outcome(chain.canonical, event) == outcome(rfc8785.dumps, event)


def test_a_real_event_takes_the_fast_path_and_keeps_its_bytes() -> None:
    event = {
        "seq": 7,
        "type": "db.query",
        "request": {"statement": "select 'é', '\u2028'", "params": [None, "1.5"]},
        "result": {"duration_ms": 0.41, "rows": 1},
        "prev_hash": "0" * 64,
    }
    assert chain._plain(event)
    assert chain.canonical(event) == bytes(rfc8785.dumps(event))
