"""One exception hierarchy for the control plane, mapped to gRPC status codes in one place.

Messages are read by people at a terminal: say what went wrong and what to do next, and never
include a token, password or payload.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

log = logging.getLogger(__name__)


class GatehouseError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(GatehouseError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(GatehouseError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(GatehouseError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(GatehouseError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GatehouseError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GatehouseError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class Unavailable(GatehouseError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(GatehouseError):
    """Stored data no longer matches what the hash chain vouches for."""

    code = grpc.StatusCode.DATA_LOSS


R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


def unary(handler: Handler[R]) -> Handler[R]:
    """Turn a GatehouseError raised by a handler into the matching gRPC status."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await handler(self, request, context)
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))
            raise  # unreachable: abort raises

    return wrapper


def streaming(handler: Callable[..., AsyncIterator[R]]) -> Callable[..., AsyncIterator[R]]:
    """The same mapping for server-streaming handlers written as async generators."""

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[R]:
        try:
            async for item in handler(self, request, context):
                yield item
        except GatehouseError as exc:
            await context.abort(exc.code, str(exc))

    return wrapper
