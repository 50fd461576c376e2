"""`gatehouse ssh NAME [-- CMD]`: an interactive terminal on a server, through the gateway.

The local terminal goes into raw mode, so every key (Ctrl-C, Ctrl-Z, arrows) is a byte for
the remote terminal to interpret, exactly as with ssh; it is restored on every way out. A
resize of the local window is sent as a WINDOW message. The session is `connect` mode and
the control plane records it as a terminal recording (`gatehouse sessions replay ID`).

Without a terminal on stdin there is nothing to be interactive with: a command then runs as
`gatehouse exec` would (no pty, stdin streamed), and a login shell is refused with what to
do instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from cli.errors import USAGE, CliError
from cli.output import echo
from cli.rpc import call

if TYPE_CHECKING:
    from cli.term.stream import Output, TermSession
    from wire.term.codec import Exit


def ssh(connection: str, args: list[str], controlplane: str | None) -> int:
    """Returns the remote shell's (or command's) exit status, gatehouse's own."""
    interactive = os.isatty(0)
    if not interactive and not args:
        raise CliError(
            "stdin is not a terminal, and a login shell needs one: run `gatehouse ssh` from a "
            f"terminal, or run a command with `gatehouse exec {connection} -- CMD`",
            USAGE,
        )
    from cli import __version__, rpc

    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()

    async def work(channel: Any) -> int:
        from cli.session import open_session
        from cli.term import stream as term
        from wire.term.codec import Start

        opened = await open_session(
            channel, md, connection, "connect", f"gatehouse-cli/{__version__} ssh"
        )
        if opened.connection_type not in term.TERMINAL_TYPES:
            opened.call.cancel()
            raise CliError(
                f"{connection} is a {opened.connection_type} connection, not a server: use "
                f"`gatehouse connect {connection}` with its own client, or `gatehouse exec`",
                USAGE,
            )
        streams = term.StdStreams()
        async with term.TermSession(opened) as session:
            if not interactive:
                echo("gatehouse: stdin is not a terminal; running without one", err=True)
                start = Start(argv=tuple(args or ()))
                exit_ = await term.relay(session, start, term.read_fd(0), streams)
            else:
                exit_ = await _interactive(session, tuple(args or ()), streams)
        return term.exit_status(exit_, streams.said)

    try:
        return call(address, work)
    except Stopped as stop:
        return stop.status


class Stopped(Exception):
    """SIGTERM or SIGHUP ended an interactive session: exit 128 + the signal, as a shell
    reports a command a signal ended."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


async def _interactive(session: TermSession, argv: tuple[str, ...], output: Output) -> Exit:
    """Raw mode, resize forwarding and the relay; SIGTERM or SIGHUP end the session with the
    terminal restored."""
    from cli.term import stream as term
    from wire.term.codec import Pty, Start

    cols, rows = terminal_size()
    pty = Pty(os.environ.get("TERM") or "xterm-256color", cols, rows)
    task = asyncio.current_task()
    assert task is not None
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        task.cancel()

    def resized() -> None:
        with contextlib.suppress(term.SessionClosed):
            session.window(*terminal_size())

    handlers: dict[int, Callable[[], None]] = {
        signal.SIGWINCH: resized,
        signal.SIGTERM: lambda: stop(signal.SIGTERM),
        signal.SIGHUP: lambda: stop(signal.SIGHUP),
    }
    try:
        with raw_terminal(0), _signal_handlers(handlers):
            return await term.relay(session, Start(argv=argv, pty=pty), term.read_fd(0), output)
    except asyncio.CancelledError:
        if not stopped:
            raise
        raise Stopped(128 + stopped[0]) from None


def terminal_size() -> tuple[int, int]:
    """Columns and rows of the local terminal (stdout's, else stdin's), 80x24 if neither."""
    for fd in (1, 0):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return size.columns, size.lines
    return 80, 24


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """The terminal in raw mode for the block; its settings come back however it ends."""
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _signal_handlers(handlers: dict[int, Callable[[], None]]) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum, handler in handlers.items():
        loop.add_signal_handler(signum, handler)
    try:
        yield
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
