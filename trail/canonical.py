"""RFC 8785 (JCS) canonical JSON: the byte form of an event that its hash covers.

orjson writes most events byte for byte as RFC 8785 does, at a fraction of `rfc8785`'s cost
(and a tenth of the standard library's C encoder's, ADR 0026); `canonical` checks that it does
(`_plain`) before taking it. The bytes are RFC 8785's either way: old trails verify unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import orjson
import rfc8785

_SAFE_INT = 2**53 - 1  # RFC 8785 refuses integers a double cannot hold exactly
# For plain values (see `_plain`) orjson writes what RFC 8785 writes: no whitespace, keys
# sorted, UTF-8 text unescaped, the same control escapes, floats in their shortest form.
_SORTED = orjson.OPT_SORT_KEYS


def canonical(event: Mapping[str, object]) -> bytes:
    """RFC 8785 canonical JSON: the byte form every verifier can reproduce.

    `rfc8785` walks every character in Python and cost more than the commit itself, so values
    that orjson provably writes byte for byte the same go through it; anything else (a float
    with an exponent or `.0`, a non-ASCII key, an integer beyond 2**53, a lone surrogate, a type
    that is not JSON) takes `rfc8785` as before, which also raises its errors.
    """
    value = dict(event)
    if _plain(value):
        try:
            return orjson.dumps(value, option=_SORTED)
        except orjson.JSONEncodeError:  # a lone surrogate, too deep: rfc8785 says why
            pass
    return bytes(rfc8785.dumps(value))  # type: ignore[arg-type]  # JSON values only


def _plain(container: Any) -> bool:
    """True when orjson writes `container` exactly as RFC 8785 does.

    They differ only in key order (UTF-16 units against code points: equal for ASCII keys), in
    how some floats are written (exponents, `1.0` against `1`, `-0.0`), in integers beyond
    2**53 (RFC 8785 refuses them), in non-string keys and in types that are not JSON's own.
    """
    values: Iterable[Any]
    if type(container) is dict:
        for key in container:
            if type(key) is not str or not key.isascii():
                return False
        values = container.values()
    else:
        values = container
    for value in values:
        kind = type(value)
        if kind is str or value is None or kind is bool:
            continue
        if kind is dict or kind is list or kind is tuple:
            if not _plain(value):
                return False
        elif kind is int:
            if not -_SAFE_INT <= value <= _SAFE_INT:
                return False
        elif kind is float:
            # repr() is what both write for a finite, non-integral float in fixed notation.
            text = repr(value)
            if "e" in text or text.endswith(".0") or not text[-1].isdigit():
                return False
        else:
            return False
    return True


def loads(text: str | bytes) -> Any:
    """JSON as RFC 8785 reads it: every number is an IEEE 754 double.

    RFC 8785 writes an integral double of 2**53 or more as an integer literal (1e20 is
    `100000000000000000000`); read back as a Python int, that has no canonical form and the
    event would look edited. An integer literal beyond 2**53 is read as the double it names,
    so the canonical form is recomputed from what the writer encoded (an integer no double
    holds exactly then no longer matches its text: edited). NaN and Infinity, which JSON has
    not, are refused (ValueError).
    """
    return json.loads(text, parse_int=_number, parse_constant=_not_json)


def _number(literal: str) -> int | float:
    value = int(literal)
    return value if -_SAFE_INT <= value <= _SAFE_INT else float(literal)


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
