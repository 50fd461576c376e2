"""The target of an `http` connection, as the agent reaches it: its address, TLS, the headers
added to every request (the connection's own and its credential), and one kept-alive
connection to it.

The credential comes from the connection's secret references (`bearer`, `basic` with
`basic_user`, `header:NAME`: the control plane's flat form of `secret: {bearer | basic |
headers}`), resolved here in the agent's environment; its values are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import h11

from agent.secrets import resolve

__all__ = ["READ_SIZE", "StaleConnection", "Target", "TargetError", "Upstream"]

CONNECT_TIMEOUT: Final = 10.0
READ_TIMEOUT: Final = 300.0
"""Most seconds the target may stay silent while a response is awaited."""
READ_SIZE: Final = 256 * 1024


class TargetError(Exception):
    """The target could not be reached or answered nonsense; the client gets a 502."""


class StaleConnection(TargetError):
    """A kept-alive connection the target had closed: the request never got an answer."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go and what is added to each."""

    scheme: str
    host: str
    port: int
    prefix: str  # the URL's path, put before every request's
    host_header: str
    tls: ssl.SSLContext | None
    server_name: str | None
    headers: tuple[tuple[str, str], ...]  # the connection's headers and its credential

    @classmethod
    def from_spec(cls, target: Mapping[str, Any], secret: Mapping[str, str]) -> Target:
        """Raises SecretError (a reference the agent cannot resolve) or ValueError."""
        url = urlsplit(str(target["url"]))
        https = url.scheme == "https"
        port = url.port or (443 if https else 80)
        host = url.hostname or ""
        tls_spec = target.get("tls") or {}
        context = None
        if https:
            context = ssl.create_default_context(cafile=tls_spec.get("ca_file") or None)
        default_port = port == (443 if https else 80)
        host_header = host if default_port else f"{host}:{port}"
        headers = [(str(k).lower(), str(v)) for k, v in (target.get("headers") or {}).items()]
        headers += _credential(secret)
        return cls(
            url.scheme,
            host,
            port,
            url.path.rstrip("/"),
            host_header,
            context,
            tls_spec.get("server_name") or None,
            tuple(headers),
        )

    async def open(self) -> Upstream:
        """A new connection to the target (TLS checked against the connection's CA and name)."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                reader, writer = await asyncio.open_connection(
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=(self.server_name or self.host) if self.tls else None,
                    limit=READ_SIZE,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise TargetError(
                f"cannot reach {self.scheme}://{self.host_header}: {exc or 'timeout'}"
            ) from None
        return Upstream(reader, writer)


def _credential(secret: Mapping[str, str]) -> list[tuple[str, str]]:
    """The headers the connection's secret makes (values resolved here, never logged)."""
    out: list[tuple[str, str]] = []
    if "bearer" in secret:
        out.append(("authorization", f"Bearer {resolve(secret['bearer'])}"))
    if "basic" in secret:
        pair = f"{secret.get('basic_user', '')}:{resolve(secret['basic'])}".encode()
        out.append(("authorization", f"Basic {base64.b64encode(pair).decode()}"))
    for key, reference in secret.items():
        if key.startswith("header:"):
            out.append((key[len("header:") :].lower(), resolve(reference)))
    return out


@dataclass
class Upstream:
    """One connection to the target, kept alive across requests."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))

    @property
    def reusable(self) -> bool:
        """Whether a next request may go on it: its last exchange ended, and the target has
        not closed it while it was idle (a keep-alive timeout; the FIN has been read)."""
        return self.conn.our_state is h11.IDLE and not self.reader.at_eof()

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Event):
                return event
            if event is h11.PAUSED:
                raise TargetError("the target's connection is paused (it switched protocols)")
            async with asyncio.timeout(READ_TIMEOUT):
                data = await self.reader.read(READ_SIZE)
            if not data and self.conn.their_state is h11.SEND_RESPONSE:
                raise StaleConnection("the target closed the connection before it answered")
            self.conn.receive_data(data)

    def close(self) -> None:
        self.writer.close()
