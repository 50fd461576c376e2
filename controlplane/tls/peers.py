"""Who is at the other end of a connection the TLS front accepted.

The front terminates TLS and forwards each connection to the gRPC and HTTP servers over a unix
socket bound to a path of its own; that path is what the servers see as the peer, and this
registry maps it back to the client's address (from the socket, or a trusted PROXY header) and
the client certificate it presented, if any (verified against the control plane's CA).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography import x509


@dataclass(frozen=True)
class Peer:
    address: str
    certificate_der: bytes | None = None

    @property
    def certificate(self) -> x509.Certificate | None:
        if self.certificate_der is None:
            return None
        return x509.load_der_x509_certificate(self.certificate_der)


_PEERS: dict[str, Peer] = {}


def register(path: str, peer: Peer) -> None:
    _PEERS[path] = peer


def forget(path: str) -> None:
    _PEERS.pop(path, None)


def lookup(local_peer: str) -> Peer | None:
    """A gRPC peer (`unix:/run/x/c-1`) or an aiohttp peername (`/run/x/c-1`) → the real peer."""
    path = local_peer.removeprefix("unix:")
    return _PEERS.get(path)


def peer_certificate(context: Any) -> x509.Certificate | None:
    """The client certificate the caller of this RPC presented and the front verified against
    the control plane's CA; None when it presented none (or in --dev, which has no TLS)."""
    peer = lookup(context.peer())
    return peer.certificate if peer is not None else None


__all__ = ["Peer", "forget", "lookup", "peer_certificate", "register"]
