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

import grpc
from aiohttp import web

UNKNOWN = "unknown"  # no address known (a call made outside a listener, e.g. in-process)

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
SOURCE: ContextVar[str | None] = ContextVar("gatehouse_auth_source", default=None)


def current_source() -> str:
    return SOURCE.get() or UNKNOWN


def peer_ip(peer: str) -> str:
    """gRPC's `ipv4:127.0.0.1:5555` → `127.0.0.1`; `ipv6:[::1]:5555` → `::1`."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]")
    if kind == "ipv4":
        return rest.rpartition(":")[0]
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
    SOURCE.set(request.remote or UNKNOWN)
    return await handler(request)


__all__ = ["SOURCE", "SourceInterceptor", "current_source", "peer_ip", "source_middleware"]
