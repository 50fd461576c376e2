"""Which address a request came from, for the code that authenticates it.

`identify` is called with a request's metadata only, by every servicer and the HTTP API; the
listeners put the caller's address in a context variable instead (the gRPC interceptor and the
HTTP middleware below), so failed authentications can be counted and throttled per source.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import unquote

import grpc
from aiohttp import web

from controlplane.tls import peers
from controlplane.tls.proxy import normal_ip

UNKNOWN = "unknown"  # no address known (a call made outside a listener, e.g. in-process)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
SOURCE: ContextVar[str | None] = ContextVar("gatehouse_auth_source", default=None)


def current_source() -> str:
    return SOURCE.get() or UNKNOWN


def peer_ip(peer: str) -> str:
    """gRPC's `ipv4:127.0.0.1:5555` → `127.0.0.1`; `ipv6:[::1]:5555` (or `%5B::1%5D:5555`)
    → `::1`; a connection the TLS front forwarded (`unix:…`) → the address the front saw."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return normal_ip(unquote(rest).rpartition(":")[0].strip("[]"))
    if kind == "ipv4":
        return rest.rpartition(":")[0]
    if kind == "unix":
        forwarded = peers.lookup(peer)
        return forwarded.address if forwarded is not None else UNKNOWN
    return peer or UNKNOWN


def _wrap(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            SOURCE.set(peer_ip(context.peer()))
            async for item in behaviour(request, context):
                yield item

        return stream

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        SOURCE.set(peer_ip(context.peer()))
        return await behaviour(request, context)

    return call


if TYPE_CHECKING:
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _Interceptor = grpc.aio.ServerInterceptor  # generic only in the type stubs


class SourceInterceptor(_Interceptor):
    """Sets SOURCE to the peer's address for the duration of each RPC."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        kinds = (
            ("unary_unary", grpc.unary_unary_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
            ("stream_unary", grpc.stream_unary_rpc_method_handler),
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
        )
        for attribute, make in kinds:
            behaviour = getattr(handler, attribute)
            if behaviour is not None:
                made: Handler = make(
                    _wrap(behaviour),
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
                return made
        return handler


@web.middleware
async def source_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    SOURCE.set(http_remote(request.remote))
    return await handler(request)


def http_remote(remote: str | None) -> str:
    """An HTTP client's address: the peer, or the one the TLS front accepted (a trusted
    proxy's word for it) when the peer is the front's socket."""
    if remote is not None and remote.startswith("/"):  # forwarded by the TLS front
        forwarded = peers.lookup(remote)
        remote = forwarded.address if forwarded is not None else None
    return remote or UNKNOWN


__all__ = [
    "SOURCE",
    "SourceInterceptor",
    "current_source",
    "http_remote",
    "peer_ip",
    "source_middleware",
]
