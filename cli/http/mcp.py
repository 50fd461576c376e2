"""MCP's `http_request` on an http connection: one request on the same session and client as
`gatehouse exec NAME -- METHOD /path`, its response's body kept up to a cap."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from h11 import Response

from cli.errors import CliError
from cli.http.exec_ import METHODS, encode_request, exchange
from cli.session import Opened


class Prepared:
    """A request ready to send: its method (HEAD's response has no body) and its bytes."""

    def __init__(self, method: str, raw: bytes) -> None:
        self.method = method
        self.raw = raw


def prepare(method: str, path: str, headers: dict[str, str], body: str | None) -> Prepared:
    """The request's bytes, checked before a session opens: what h11 refuses, or a method or
    path `exec` would not send, is a CliError and nothing is recorded or sent."""
    method = method.upper()
    if method not in METHODS or not path.startswith("/"):
        raise CliError(
            f"method is one of {', '.join(sorted(METHODS))} and path starts with /, "
            "e.g. GET /v1/items?q=1"
        )
    try:
        raw = encode_request(
            method,
            path,
            list(headers.items()),
            None if body is None else body.encode("utf-8", "replace"),
        )
    except UnicodeError:
        raise CliError("the path and headers are ASCII (percent-encode the rest)") from None
    return Prepared(method, raw)


async def request(opened: Opened, prepared: Prepared, max_bytes: int) -> dict[str, Any]:
    """Status, headers and the body as text (its first `max_bytes`, then `truncated`: the
    rest is not read). A guardrail's refusal (the control plane's 403 naming its rule) is a
    CliError naming the rule, as a refused statement is."""
    head: Response | None = None
    kept = bytearray()
    seen = 0
    async with contextlib.aclosing(exchange(opened, prepared.method, prepared.raw)) as events:
        async for event in events:
            if isinstance(event, Response):
                head = event
                continue
            seen += len(event.data)
            kept += event.data[: max(0, max_bytes - len(kept))]
            if seen > max_bytes:
                break  # the rest is not read: the session ends here
    assert head is not None  # exchange raises when no response came
    text = bytes(kept).decode("utf-8", "replace")
    if head.status_code == 403:
        _refused(text)
    return {
        "status": head.status_code,
        "reason": head.reason.decode("latin-1"),
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in head.headers],
        "body": text,
        "truncated": seen > max_bytes,
        "session_id": opened.session_id,
    }


def _refused(body: str) -> None:
    """The control plane answers a refusal with a JSON body naming the rule; a 403 without
    one is the target's, a result like any other."""
    try:
        document = json.loads(body)
    except ValueError:
        return
    if isinstance(document, dict) and isinstance(document.get("rule"), str):
        reason = document.get("reason") or document.get("error") or "denied"
        raise CliError(f"refused by guardrail {document['rule']!r}: {reason} (HTTP 403)")
