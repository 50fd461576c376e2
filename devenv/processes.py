"""The life of every throwaway service (PostgreSQL, sshd, the OpenID Provider): waiting until
it answers, stopping it politely then firmly, and never leaving one running."""

from __future__ import annotations

import atexit
import contextlib
import logging
import random
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


def stop_process(
    process: subprocess.Popen[bytes],
    name: str,
    steps: Sequence[tuple[signal.Signals, float]],
) -> None:
    """Send each signal in turn until the process has exited, waiting that long after each."""
    for sig, timeout in steps:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s pid %d ignored %s; escalating", name, process.pid, sig.name)
        else:
            return


class Service:
    """A throwaway server this process started: stopped by `with`, and at interpreter exit
    if still running, so a failing test run leaks nothing. Subclasses implement `stop`."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _track(self) -> None:
        _LIVE[id(self)] = self

    def _untrack(self) -> None:
        _LIVE.pop(id(self), None)


_LIVE: dict[int, Service] = {}


@atexit.register
def _stop_all() -> None:
    for service in list(_LIVE.values()):
        with contextlib.suppress(Exception):
            service.stop()


class PortTaken(Exception):
    """The service's port was taken before it could bind: pick another and start again."""


def tail(path: Path, offset: int = 0, lines: int = 40) -> str:
    """The last lines of a log from `offset` on, for error messages."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:]) or "(empty)"


def wait_ready(
    process: subprocess.Popen[bytes],
    probe: Callable[[], str | None],
    *,
    name: str,
    log_file: Path,
    offset: int,
    timeout: float,
    port_taken: str,
    error: type[Exception],
) -> None:
    """Poll `probe` (None: ready; else why not yet) until the service answers. Raises
    PortTaken when it exited saying `port_taken`, `error` when it exited or never answered."""
    deadline = time.monotonic() + timeout
    last_error = "none yet"
    while True:
        status = process.poll()
        if status is not None:
            output = tail(log_file, offset)
            if port_taken in output:
                raise PortTaken(output)
            raise error(
                f"{name} exited with status {status} while starting; its log "
                f"({log_file}) ends with:\n{output}"
            )
        why = probe()
        if why is None:
            return
        last_error = why
        if time.monotonic() >= deadline:
            raise error(
                f"{name} did not answer within {timeout:g}s (last error: {last_error}); "
                f"its log ({log_file}) ends with:\n{tail(log_file, offset)}"
            )
        time.sleep(0.05)


def free_port() -> int:
    """A loopback port nobody listens on now, below the kernel's ephemeral range.

    The kernel's own pick (bind to port 0) lies in the ephemeral range, where every outgoing
    connection also takes its local port: between this call and the service's bind, a client
    connection elsewhere in the run could take it ("in use?"). Below that range only
    listeners take ports, and each is handed out once per process."""
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(FIRST_PORT, low)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as sock:  # the low range is crowded: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


FIRST_PORT = 10_000  # below it: well-known and registered services' ports
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: net.ipv4.ip_local_port_range)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32_768
    return low if low > FIRST_PORT + 1_000 else 32_768
