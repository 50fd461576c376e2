"""The accept loop shared by the listeners that take raw sockets (the TLS fronts, `--pg-listen`).

Each accepted connection is served by a task the listener owns: `close` cancels them all, so a
stopping process ends every connection (and each session records its end) instead of leaving
tasks behind.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from controlplane.tls import proxy

log = logging.getLogger(__name__)


class Acceptor:
    """One TCP listening socket; subclasses say whether to take a connection and serve it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def listen(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        dual = family == socket.AF_INET6 and host == "::"
        sock = socket.create_server(
            (host, port), family=family, backlog=1024, reuse_port=False, dualstack_ipv6=dual
        )
        sock.setblocking(False)
        self._listener = sock

    @property
    def port(self) -> int:
        assert self._listener is not None
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    def stop_accepting(self) -> None:
        """New connections are refused; those open keep flowing until `close`."""
        if self._accepting is not None:
            self._accepting.cancel()
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    async def close(self) -> None:
        self.stop_accepting()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    def _takes(self) -> bool:
        """Whether a new connection is served now (False: it is closed at once)."""
        return True

    async def _serve(self, conn: socket.socket, client: tuple[str, int]) -> None:
        raise NotImplementedError

    async def _accept(self) -> None:
        assert self._listener is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, address = await loop.sock_accept(self._listener)
            except OSError as exc:  # e.g. EMFILE: back off instead of spinning
                log.warning("%s: accept failed: %s", self.name, exc)
                await asyncio.sleep(0.1)
                continue
            if not self._takes():
                conn.close()
                continue
            conn.setblocking(False)
            client = (proxy.normal_ip(address[0]), int(address[1]))
            task = loop.create_task(self._serve(conn, client))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
