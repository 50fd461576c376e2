"""What an `http.request` event says about a request, and what it must never say.

Credentials and cookies in headers (`Authorization`, `Cookie`, any header whose name says
token, secret, key, signature, password, auth or session) and query values under such names
(and `sig`) become `[redacted]`; every other value passes through the connection's detectors
(always `secret`, plus those of its masking rules). The body is recorded as its size and
SHA-256, and — when its type is text — its first bytes as masked text.
"""

from __future__ import annotations

import hashlib
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from redact.detectors import DetectorSet
from wire.http.codec import Request

__all__ = ["BODY_TEXT", "REDACTED", "described", "redacted_headers", "redacted_query"]

BODY_TEXT: Final = 64 * 1024
"""Most bytes of a request body kept as text in its event (its digest covers all of it)."""
REDACTED: Final = "[redacted]"
_CREDENTIAL_HEADERS: Final = frozenset(
    {"authorization", "proxy-authorization", "cookie", "set-cookie", "sig"}
)
# `key` covers `api_key`, `X-Functions-Key`, Google's `?key=`; `signature` a presigned URL's
# `X-Amz-Signature` and a webhook's `X-Hub-Signature` (with `sig`, Azure's SAS, above).
_SECRETISH: Final = ("token", "secret", "passw", "key", "signature", "auth", "session")
_TEXTUAL: Final = ("text/", "json", "xml", "x-www-form-urlencoded", "javascript", "yaml")


def _secretish(name: str) -> bool:
    lowered = name.lower()
    return lowered in _CREDENTIAL_HEADERS or any(word in lowered for word in _SECRETISH)


def redacted_headers(
    headers: tuple[tuple[str, str], ...], detectors: DetectorSet
) -> list[list[str]]:
    """Headers for an event: credentials and cookies replaced, other values masked."""
    out: list[list[str]] = []
    for name, value in headers:
        if _secretish(name):
            out.append([name, REDACTED])
        else:
            out.append([name, detectors.mask(value) or value])
    return out


def redacted_query(query: str, detectors: DetectorSet) -> str:
    """A query string for an event: values under credential-like names replaced, others masked."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode(
        [(k, REDACTED if _secretish(k) else (detectors.mask(v) or v)) for k, v in pairs]
    )


def _textual(content_type: str | None) -> bool:
    """Whether a body of this type is text worth keeping in the event (and masking)."""
    if content_type is None:
        return True  # curl -d sends form data; text it is, if it decodes
    lowered = content_type.lower()
    return any(kind in lowered for kind in _TEXTUAL)


def described(
    request: Request, detectors: DetectorSet, body_text: int = BODY_TEXT, *, body_read: bool = True
) -> dict[str, Any]:
    """The `request` member of an `http.request` event: method, path, query and headers with
    credentials redacted and other values masked, the body's size and digest, and up to
    `body_text` bytes of its text, masked (none when it was refused before it was sent)."""
    body = request.body
    out: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "query": redacted_query(request.query, detectors) or None,
        "headers": redacted_headers(request.headers, detectors),
    }
    if request.upgrade is not None:
        out["upgrade"] = request.upgrade
    if not body_read:
        out["body"] = {"bytes": None, "note": "refused before its body was sent"}
        return out
    about: dict[str, Any] = {"bytes": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    if body and _textual(request.header("content-type")):
        kept = body[:body_text]
        text = kept.decode("utf-8", "replace")
        about["text"] = detectors.mask(text) or text
        if len(kept) < len(body):
            about["truncated"] = True
    out["body"] = about
    return out
