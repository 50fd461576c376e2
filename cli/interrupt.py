"""Ctrl-C during `gatehouse exec` on a database: cancel the statement, as psql and mysql do.

The first Ctrl-C sends the session a cancel (the agent cancels the statement on the target its
own way; a `db.cancel` event records it) and `exec` goes on to print what the target answered,
usually its "interrupted" error. A second Ctrl-C stops the CLI at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

from cli.output import echo
from cli.session import Call
from gatehouse.v1 import client_pb2

__all__ = ["cancel_on_interrupt"]


@contextlib.contextmanager
def cancel_on_interrupt(call: Call) -> Iterator[None]:
    """While inside, the first SIGINT cancels what the session runs; outside (or on a second
    SIGINT) SIGINT does what it did before. Only for the main thread's loop: elsewhere (no
    signals there) it does nothing."""
    loop = asyncio.get_running_loop()
    before = signal.getsignal(signal.SIGINT) or signal.default_int_handler
    sending: set[asyncio.Task[None]] = set()

    def restore() -> None:
        loop.remove_signal_handler(signal.SIGINT)
        signal.signal(signal.SIGINT, before)

    def interrupted() -> None:
        restore()  # the next Ctrl-C stops the CLI
        echo("Cancel request sent (Ctrl-C again to stop waiting)", err=True)
        task = loop.create_task(_cancel(call))
        sending.add(task)
        task.add_done_callback(sending.discard)

    try:
        loop.add_signal_handler(signal.SIGINT, interrupted)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread's loop
        yield
        return
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is not before:
            restore()


async def _cancel(call: Call) -> None:
    """The session may have ended meanwhile: then there is nothing left to cancel."""
    import grpc

    with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
        await call.write(client_pb2.ClientFrame(cancel=client_pb2.Cancel()))
