"""`gatehouse connect NAME`: the local listener of the connection's protocol, on loopback.

The connection's type comes from the caller's own list of connections; `cli/protocols.py`
says which module listens for it (PostgreSQL clients, or an SSH server for an ssh
connection). Whoever reaches the listener acts as the caller, so it binds to loopback only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import grpc

from cli import protocols
from cli.errors import USAGE, CliError
from gatehouse.v1 import client_pb2, client_pb2_grpc
from wire.addresses import is_loopback

log = logging.getLogger("gatehouse.connect")


def connect(
    connection: str,
    port: int | None,
    host: str,
    authorized_keys: list[Path] | None,
    controlplane: str | None,
) -> None:
    """Listen until Ctrl-C for the connection's native clients."""
    from cli import rpc
    from cli.logs import setup_logging

    if not is_loopback(f"{host}:0"):
        raise CliError(
            f"--host {host}: the listener accepts anyone who can reach it, so it only binds "
            "to loopback",
            USAGE,
        )
    address = rpc.controlplane_address(controlplane)
    md = rpc.metadata()
    setup_logging(False)
    kind = connection_type(address, md, connection)
    listen = protocols.listen_for(kind)
    if listen is None:
        served = " and ".join(sorted(protocols.CONNECT))
        raise CliError(
            f"{connection} is a {kind} connection: connect serves {served} connections; "
            f"run commands with `gatehouse exec {connection} -- CMD`",
            USAGE,
        )
    request = protocols.ListenRequest(address, md, connection, host, port, authorized_keys)
    listening = listen(request)
    try:
        rpc.run(listening.serve)
    except OSError as exc:
        raise CliError(f"cannot listen on {host}:{listening.port}: {exc.strerror}") from None
    except KeyboardInterrupt:
        pass


def connection_type(address: str, metadata: tuple[tuple[str, str], ...], name: str) -> str | None:
    """The connection's type from the caller's own list; None when it is not there (the
    control plane then answers each client with its reason, in the client's protocol)."""
    from cli.rpc import call

    async def work(channel: grpc.aio.Channel) -> Any:
        stub = client_pb2_grpc.ClientServiceStub(channel)
        return await stub.ListConnections(client_pb2.ListMyConnectionsRequest(), metadata=metadata)

    for item in call(address, work).connections:
        if item.name == name:
            return str(item.type)
    log.warning(
        "%s is not among the connections you may use; listening for %s", name, protocols.DEFAULT
    )
    return None
