"""HTTP endpoints for machines: `/healthz`, `/readyz`, `/metrics`, and `GET /v1/audit/events`.

`/healthz` says the process answers (a liveness probe: restart me if not); `/readyz` says it
can do its job now (store reachable, schema at this code's migration head, audit writer
running; a readiness probe: send me no traffic if not). Neither needs a token or tells more
than counts.

The export endpoint is what a SIEM polls (Elastic `httpjson`, Splunk REST, Sentinel's codeless
connector): NDJSON in seq order, a `next` cursor in a header and in a `Link` header, bearer
tokens with the read-only `audit-reader` role. The contract is `openapi.yaml` beside this file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.audit.reader import MAX_LIMIT, MAX_SEQ, MAX_TYPES, export_line, read_page
from controlplane.auth.identity import ADMIN, AUDIT_READER
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import GatehouseError, InvalidArgument
from controlplane.store.database import Database

log = logging.getLogger(__name__)
OPENAPI = Path(__file__).with_name("openapi.yaml")
EVENTS_PARAMETERS = ("after", "limit", "types", "format")
NEXT_HEADER = "Gatehouse-Next-After"
FORMATS = ("json", "ocsf")
STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "UNAVAILABLE": 503,
}


def build_app(
    auth: TokenAuthenticator,
    db: Database,
    health: Callable[[], dict[str, Any]],
    metrics: Callable[[], bytes],
    ready: Callable[[], Awaitable[tuple[bool, dict[str, str]]]] | None = None,
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response(health())

    async def readyz(_request: web.Request) -> web.Response:
        if ready is None:
            return web.json_response({"status": "ready", "checks": {}})
        ok, checks = await ready()
        body = {"status": "ready" if ok else "unready", "checks": checks}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics_endpoint(_request: web.Request) -> web.Response:
        return web.Response(body=metrics(), content_type="text/plain", charset="utf-8")

    async def openapi(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})

    async def events(request: web.Request) -> web.StreamResponse:
        await auth.require_role(
            [("authorization", request.headers.get("Authorization", ""))], ADMIN, AUDIT_READER
        )
        _only(request, EVENTS_PARAMETERS)
        after = _int(request, "after", 0, MAX_SEQ)
        limit = _int(request, "limit", 0, MAX_LIMIT)
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}, not {_shown(fmt)}")
        types = [t for t in request.query.get("types", "").split(",") if t]
        if len(types) > MAX_TYPES:
            raise InvalidArgument(f"types: at most {MAX_TYPES} event types, not {len(types)}")
        page = await read_page(db, after, limit, types)
        lines = [export_line(row.body, row.hash) for row in page.events]
        if fmt == "ocsf":
            from controlplane.audit.ocsf import to_ocsf

            lines = [json.dumps(to_ocsf(json.loads(line)), separators=(",", ":")) for line in lines]
        query = {k: v for k, v in request.query.items() if k != "after"}
        query["after"] = str(page.next)
        next_url = request.url.with_query(query).relative()
        body = "".join(line + "\n" for line in lines).encode("utf-8")
        return web.Response(
            body=body,
            content_type="application/x-ndjson",
            charset="utf-8",
            headers={NEXT_HEADER: str(page.next), "Link": f'<{next_url}>; rel="next"'},
        )

    @web.middleware
    async def errors(
        request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except GatehouseError as exc:
            status = STATUS.get(exc.code.name, 500)
            headers = {"WWW-Authenticate": 'Bearer realm="gatehouse"'} if status == 401 else {}
            return web.json_response({"error": str(exc)}, status=status, headers=headers)
        except web.HTTPException:
            raise
        except Exception:  # a bug, not the caller's fault: say so without the details
            log.exception("HTTP %s %s failed", request.method, request.path)
            return web.json_response({"error": "internal error; see the server log"}, status=500)

    app = web.Application(middlewares=[errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/v1/openapi.yaml", openapi)
    app.router.add_get("/v1/audit/events", events)
    return app


def _only(request: web.Request, allowed: tuple[str, ...]) -> None:
    """Unknown or repeated parameters are refused: a typo must not silently mean "from 0"."""
    for name in request.query:
        if name not in allowed:
            raise InvalidArgument(
                f"unknown parameter {_shown(name)}: this endpoint takes {', '.join(allowed)}"
            )
        if len(request.query.getall(name)) > 1:
            raise InvalidArgument(f"{name} is given more than once")


def _int(request: web.Request, name: str, default: int, maximum: int) -> int:
    """A decimal integer from 0 to `maximum`, ASCII digits only (no sign, exponent, spaces)."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19 or int(raw) > maximum:
        raise InvalidArgument(
            f"{name} must be a whole number from 0 to {maximum}, not {_shown(raw)}"
        )
    return int(raw)


def _shown(value: str) -> str:
    """A caller's value as an error message may quote it: short and printable."""
    text = value if len(value) <= 40 else value[:37] + "..."
    return json.dumps(text)
