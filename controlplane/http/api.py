"""HTTP endpoints for machines: `/healthz`, `/metrics`, and `GET /v1/audit/events`.

The export endpoint is what a SIEM polls (Elastic `httpjson`, Splunk REST, Sentinel's codeless
connector): NDJSON in seq order, a `next` cursor in a header and in a `Link` header, bearer
tokens with the read-only `audit-reader` role. The contract is `openapi.yaml` beside this file.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane.audit.reader import export_line, read_page
from controlplane.auth.identity import ADMIN, AUDIT_READER
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import GatehouseError, InvalidArgument
from controlplane.store.database import Database

OPENAPI = Path(__file__).with_name("openapi.yaml")
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
) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response(health())

    async def metrics_endpoint(_request: web.Request) -> web.Response:
        return web.Response(body=metrics(), content_type="text/plain", charset="utf-8")

    async def openapi(_request: web.Request) -> web.FileResponse:
        return web.FileResponse(OPENAPI, headers={"Content-Type": "application/yaml"})

    async def events(request: web.Request) -> web.StreamResponse:
        await auth.require_role(
            [("authorization", request.headers.get("Authorization", ""))], ADMIN, AUDIT_READER
        )
        after = _int(request, "after", 0)
        limit = _int(request, "limit", 0)
        fmt = request.query.get("format", "json")
        if fmt not in FORMATS:
            raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}")
        types = [t for t in request.query.get("types", "").split(",") if t]
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

    app = web.Application(middlewares=[errors])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/v1/openapi.yaml", openapi)
    app.router.add_get("/v1/audit/events", events)
    return app


def _int(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"{name} must be an integer, not {raw!r}") from None
