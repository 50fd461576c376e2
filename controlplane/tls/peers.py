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
    port: int = 0

    @property
    def grpc_form(self) -> str:
        """As gRPC writes a TCP peer: `ipv4:10.0.0.7:5555`, `ipv6:[::1]:5555`."""
        if ":" in self.address:
            return f"ipv6:[{self.address}]:{self.port}"
        return f"ipv4:{self.address}:{self.port}"

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


def grpc_peer(context: Any) -> str:
    """`context.peer()`, with a connection the TLS front forwarded shown as the client's."""
    peer: str = context.peer()
    forwarded = lookup(peer) if peer.startswith("unix:") else None
    return forwarded.grpc_form if forwarded is not None else peer


def peer_certificate(context: Any) -> x509.Certificate | None:
    """The client certificate the caller of this RPC presented and the front verified against
    the control plane's CA; None when it presented none (or in --dev, which has no TLS)."""
    peer = lookup(context.peer())
    return peer.certificate if peer is not None else None


__all__ = ["Peer", "forget", "grpc_peer", "lookup", "peer_certificate", "register"]
