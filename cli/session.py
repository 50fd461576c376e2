"""Opening a ClientService session: the `open` frame, a review's wait, the `opened` frame.

Every verb that reaches a target (`exec` for SQL and for commands, `ssh`, both local
listeners) starts its session here, so a refusal and a pending review read the same
everywhere. What flows after `opened` is the caller's protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import NamedTuple, Protocol, TypeGuard

import grpc

from cli.errors import PENDING, CliError
from gatehouse.v1 import client_pb2

log = logging.getLogger("gatehouse.session")


class Call(Protocol):
    """A session's stream as the protocol clients (cli.pg.query, cli.term.stream) use it: the gRPC
    call of ClientService.Session, or an in-process session of the control plane's own
    (its /mcp endpoint). `read` returns a ServerFrame, or something else at the end."""

    async def write(self, request: client_pb2.ClientFrame) -> None: ...

    async def read(self) -> object: ...

    async def done_writing(self) -> None: ...

    def cancel(self) -> bool: ...


ReviewWait = Callable[[client_pb2.ReviewPending, str], AbstractContextManager[None]]
"""Shown while a session waits for a review: entered at the first `review_pending`, left
when the decision arrives."""


class ReviewPending(CliError):
    """A caller that does not wait (`exec --no-wait`, MCP tools) was told its review is
    pending: exit status 3, the review's id on stderr; the review stays open."""

    def __init__(self, pending: client_pb2.ReviewPending, connection: str) -> None:
        groups = ", ".join(pending.reviewer_groups)
        super().__init__(
            f"review {pending.review_id} is pending: access rule {pending.rule!r} on "
            f"{connection} needs the approval of {groups} "
            f"(`gatehouse reviews approve {pending.review_id}`); run it again once approved",
            PENDING,
        )
        self.pending = pending


class Opened(NamedTuple):
    """A session the control plane opened: its stream, id and connection type."""

    call: Call
    session_id: str
    connection_type: str


@contextlib.contextmanager
def review_spinner(pending: client_pb2.ReviewPending, connection: str) -> Iterator[None]:
    """For a person at a terminal: who must approve, and a spinner on stderr until they do
    (Ctrl-C stops waiting and withdraws the request)."""
    from rich.console import Console

    groups = ", ".join(pending.reviewer_groups)
    noun = "group" if len(pending.reviewer_groups) == 1 else "groups"
    console = Console(stderr=True, highlight=False)
    console.print(
        f"waiting for review {pending.review_id} by {noun} {groups} "
        f"(access rule {pending.rule!r} on {connection}); they run "
        f"`gatehouse reviews approve {pending.review_id}`; Ctrl-C stops waiting",
        markup=False,
        soft_wrap=True,
    )
    with console.status(f"waiting for review by {noun} {groups}…"):
        yield
    console.print(f"review {pending.review_id} approved", markup=False)


@contextlib.contextmanager
def review_log(pending: client_pb2.ReviewPending, connection: str) -> Iterator[None]:
    """For a listener, whose clients cannot show anything: one log line per waiting session."""
    log.warning(
        "session on %s waits for review %s by %s (they run `gatehouse reviews approve %s`)",
        connection,
        pending.review_id,
        ", ".join(pending.reviewer_groups),
        pending.review_id,
    )
    yield


async def open_session(
    channel: grpc.aio.Channel,
    metadata: tuple[tuple[str, str], ...],
    connection: str,
    mode: str,
    client: str,
    review: ReviewWait = review_spinner,
    *,
    no_wait: bool = False,
    retry: str = "",
    mcp: client_pb2.McpCall | None = None,
) -> Opened:
    """Send `open` and wait for `opened`; a refusal raises grpc.aio.AioRpcError with the
    control plane's reason (cli.rpc.explained turns it into words). With `no_wait` a pending
    review raises ReviewPending at once (`retry`: the review a retry follows)."""
    session = _session_method(channel)
    call: Call = session(metadata=metadata)  # type: ignore[call-arg]  # read/write API
    open_ = client_pb2.SessionOpen(
        connection=connection, mode=mode, client=client, no_wait=no_wait, review_id=retry, mcp=mcp
    )
    try:
        with contextlib.suppress(grpc.aio.AioRpcError):
            # If the control plane refused first, reading the opening below raises its reason.
            await call.write(client_pb2.ClientFrame(open=open_))
        frame = await call.read()
        if _pending(frame) and no_wait:
            raise ReviewPending(frame.review_pending, connection)
        if _pending(frame):
            with review(frame.review_pending, connection):
                while _pending(frame):
                    frame = await call.read()
                _require_opened(frame)
        _require_opened(frame)
    except BaseException:
        call.cancel()
        raise
    assert isinstance(frame, client_pb2.ServerFrame)
    return Opened(call, frame.opened.session_id, frame.opened.connection_type)


async def finish(call: Call, goodbye: bytes | None, rest: AsyncIterator[object]) -> None:
    """End a session the client is done with: say `goodbye` (the protocol's quit; None when
    the control plane already ended the session with a fatal error), then read `rest` to the
    end, so the control plane records the session's end before the call goes away.

    A goodbye that races the control plane's own end fails in grpc as "Internal error from
    Core", and the call's status is then that, not the control plane's; once grpc has the
    status, the write is refused with InvalidStateError. A failed goodbye means the session had
    ended, and what it said was read already."""
    if goodbye is not None:
        try:
            await call.write(client_pb2.ClientFrame(data=goodbye))
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            return
    async for _ in rest:
        pass


def _session_method(
    channel: grpc.aio.Channel,
) -> grpc.aio.StreamStreamMultiCallable[client_pb2.ClientFrame, client_pb2.ServerFrame]:
    """ClientService.Session through grpc's public channel API. The generated stub module
    (client_pb2_grpc: every RPC of the service, and grpc's version check) is not imported for
    the one RPC `exec` needs: it costs ~10 ms a command. The stub also passes grpc's private
    `_registered_method`, which saves nothing measurable on one call a process."""
    method = client_pb2.DESCRIPTOR.services_by_name["ClientService"].methods_by_name["Session"]
    return channel.stream_stream(
        f"/{method.containing_service.full_name}/{method.name}",
        request_serializer=client_pb2.ClientFrame.SerializeToString,
        response_deserializer=client_pb2.ServerFrame.FromString,
    )


def _pending(frame: object) -> TypeGuard[client_pb2.ServerFrame]:
    return isinstance(frame, client_pb2.ServerFrame) and frame.HasField("review_pending")


def _require_opened(frame: object) -> None:
    """The stream ended cleanly without opening (a refusal would have raised on read)."""
    if not isinstance(frame, client_pb2.ServerFrame) or not frame.HasField("opened"):
        raise CliError("the control plane closed the session before it opened")
