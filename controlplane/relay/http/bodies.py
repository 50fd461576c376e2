"""A request body's text as the target's application may read it, for `deny_patterns`.

A pattern searched in the body's bytes alone is evaded by any encoding the application undoes
before it acts: `q=DROP%20TABLE` is `DROP TABLE` to a form parser, `"\\u0044ROP TABLE"` to a
JSON one, a gzip body to a server that inflates it, UTF-16 to a JSON reader that detects it.
So the patterns are searched in every reading of the body an application may make:

- its `Content-Encoding` undone (gzip, deflate; identity); any other coding (br, zstd...) is
  `Unreadable`, and a body that inflates past the connection's limit too;
- its text in UTF-8, in each `charset` its `Content-Type` declares (an unknown one is
  `Unreadable`), and in the UTF-16/32 a JSON reader detects (a BOM, or NUL bytes);
- each such text with percent-escapes and `+` decoded (a form, a query-like body), its JSON
  strings unescaped (keys and values, one a line) if it is a JSON document, and the JSON
  strings of each form value — two levels, as `payload=<url-encoded JSON>` needs.

A pattern that matches any reading refuses the request (fail closed): a pattern found only
after decoding is one the application would have met.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
import zlib
from collections.abc import Iterator
from typing import Final
from urllib.parse import unquote_plus

from wire.http.codec import Request

__all__ = ["BODY_RULE", "Unreadable", "form_values", "readings"]

BODY_RULE: Final = "(body)"
"""The `rule` of a refusal for a body the patterns cannot be searched in."""

_MAX_CHARSETS: Final = 4
"""Most charsets a body is read in; a body that declares more is refused."""
_MAX_JSON_VALUES: Final = 10_000
"""Most form values read as JSON; a body with more that may be JSON is refused."""


class Unreadable(Exception):
    """The body's text cannot be read as the application would: the request is refused."""


def _codings(request: Request) -> list[str]:
    joined = ",".join(v for k, v in request.headers if k == "content-encoding")
    return [c.strip().lower() for c in joined.split(",") if c.strip()]


def _inflate(body: bytes, wbits: int, limit: int, coding: str) -> bytes:
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise Unreadable(f"the body is not valid {coding}: {exc}") from None
    if len(out) > limit:
        raise Unreadable(f"the body inflates past the connection's limit of {limit} bytes")
    return out


def decoded(request: Request, limit: int) -> bytes:
    """The body with its Content-Encoding undone (the last coding applied is undone first)."""
    body = request.body
    for coding in reversed(_codings(request)):
        if coding == "identity":
            continue
        if coding in ("gzip", "x-gzip"):
            body = _inflate(body, 16 + zlib.MAX_WBITS, limit, coding)
        elif coding == "deflate":
            try:
                body = _inflate(body, zlib.MAX_WBITS, limit, coding)
            except Unreadable:  # some clients send raw deflate, without zlib's wrapper
                body = _inflate(body, -zlib.MAX_WBITS, limit, coding)
        else:
            raise Unreadable(
                f"the body is {coding}-encoded, which the gateway cannot read for the "
                "connection's deny_patterns"
            )
    return body


def _charsets(request: Request) -> list[str]:
    """Every charset the Content-Type declares (a second Content-Type header, or a second
    charset parameter, is one some application reads)."""
    found = []
    for key, value in request.headers:
        if key != "content-type":
            continue
        for parameter in value.replace(",", ";").split(";")[1:]:
            name, _, charset = parameter.partition("=")
            charset = charset.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset and charset not in found:
                found.append(charset)
    return found


def _texts(body: bytes, charsets: list[str]) -> list[str]:
    texts = [body.decode("utf-8", "replace")]
    encodings: list[str] = []
    if len(charsets) > _MAX_CHARSETS:
        raise Unreadable(f"the body declares more than {_MAX_CHARSETS} charsets")
    for charset in charsets:
        try:
            encodings.append(codecs.lookup(charset).name)
        except LookupError:
            raise Unreadable(
                f"the body's charset {charset[:50]!r} is unknown to the gateway"
            ) from None
    if b"\x00" in body or body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encodings.append(json.detect_encoding(body))
    for encoding in encodings:
        try:
            text = body.decode(encoding, "replace")
        except (LookupError, UnicodeError, ValueError) as exc:  # `rot13`, `idna`: not charsets
            raise Unreadable(f"the body cannot be read in {encoding!r}: {exc}") from None
        if text not in texts:
            texts.append(text)
    return texts


def _json_strings(text: str) -> str | None:
    stripped = text.strip().removeprefix("\ufeff").strip()  # a UTF-8 BOM: body-parser, Jackson
    if not stripped.startswith(("{", "[", '"')):
        return None
    try:
        document = json.loads(stripped)
    except (ValueError, RecursionError):
        return None
    strings: list[str] = []
    stack = [document]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            strings.append(value)
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                strings.append(key)
                stack.append(item)
    return "\n".join(strings)


def _derived(text: str) -> Iterator[str]:
    if "%" in text or "+" in text:
        yield unquote_plus(text, errors="replace")
    strings = _json_strings(text)
    if strings is not None:
        yield strings
    if "=" in text:
        # The JSON in form values (`payload=<url-encoded JSON>`), all of it as one reading.
        found = []
        for count, value in enumerate(form_values(text, _JSONISH)):
            if count >= _MAX_JSON_VALUES:
                raise Unreadable(
                    f"the body has more than {_MAX_JSON_VALUES} form values that may be JSON"
                )
            strings = _json_strings(value)
            if strings is not None:
                found.append(strings)
        if found:
            yield "\n".join(found)


_FIELD: Final = re.compile(r"(?:^|(?<=[&;]))([^&;=]*)=([^&;]*)")
_JSONISH: Final = re.compile(r"\s*(?:[{\[\"]|%7b|%5b|%22)", re.IGNORECASE)


def form_values(text: str, start: re.Pattern[str], name: str | None = None) -> Iterator[str]:
    """The decoded values of a form's fields (named `name`, if given) whose encoded value
    opens with `start`, read one by one: a body of millions of fields is never held as a
    list of them."""
    for field in _FIELD.finditer(text):
        key, value = field.groups()
        if name is not None and (
            not len(name) <= len(key) <= 3 * len(name)
            or unquote_plus(key, errors="replace") != name
        ):
            continue
        if start.match(value):
            yield unquote_plus(value, errors="replace")


def readings(request: Request, limit: int) -> Iterator[str]:
    """Every text of the body the patterns are searched in, one at a time (raises Unreadable,
    before the first or while they are read)."""
    seen: set[bytes] = set()

    def walk(text: str, depth: int) -> Iterator[str]:
        digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass")).digest()
        if digest in seen:
            return
        seen.add(digest)
        yield text
        if depth < 2:
            for derived in _derived(text):
                yield from walk(derived, depth + 1)

    for text in _texts(decoded(request, limit), _charsets(request)):
        yield from walk(text, 0)
