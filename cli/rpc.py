"""Reaching the control plane: address, credential, channel, the command's one event loop,
and gRPC errors in plain words.

Light at import (the standard library and cli.errors): `gatehouse exec` imports this on every
call, grpc only once it dials."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cli.errors import REFUSED, USAGE, CliError
from wire.addresses import is_loopback

if TYPE_CHECKING:
    import grpc

T = TypeVar("T")

DEFAULT_CONTROLPLANE = "127.0.0.1:8443"


def controlplane_address(flag: str | None) -> str:
    """--controlplane, GATEHOUSE_CONTROLPLANE, the profile's, or 127.0.0.1:8443 (cli.profiles);
    the choice also fixes the CA and the stored login the command uses."""
    from cli.profiles import resolve

    return resolve(flag).address


def token(flag: str | None = None) -> str:
    """The caller's credential: --token, GATEHOUSE_TOKEN, or the stored login (refreshed)."""
    value = flag or os.environ.get("GATEHOUSE_TOKEN")
    if value:
        return value
    from cli.tokenstore import TokenStore

    if TokenStore().load() is None:
        raise CliError(
            "no credential: run `gatehouse login`, or set GATEHOUSE_TOKEN (in dev mode: "
            "export GATEHOUSE_TOKEN=$(cat DATA_DIR/admin.token))",
            USAGE,
        )
    return TokenStore().current()


def metadata(flag: str | None = None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token(flag)}"),)


def channel(address: str) -> grpc.aio.Channel:
    """TLS, verified against the CA file (--ca-file, GATEHOUSE_CA_FILE or the profile's) or the
    system's trust store. Plaintext only to a loopback address with no CA file (a --dev control
    plane: traffic never leaves the host)."""
    import grpc

    options = [
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ]
    ca = _ca_file()  # --ca-file, GATEHOUSE_CA_FILE, or the profile's copy
    if is_loopback(address) and not ca:
        return grpc.aio.insecure_channel(address, options=options)
    try:
        root = Path(ca).read_bytes() if ca else None
    except OSError as exc:
        raise CliError(
            f"the CA file {ca} (--ca-file, GATEHOUSE_CA_FILE or the profile's): {exc.strerror}",
            USAGE,
        ) from None
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    return grpc.aio.secure_channel(address, creds, options=options)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """One event loop for the whole command (uvloop where available)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - platforms without uvloop
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def call(address: str, work: Callable[[Any], Awaitable[T]]) -> T:
    """Open a channel to the control plane, run `work` on it, explain gRPC failures."""

    async def main() -> T:
        async with channel(address) as opened:
            with explained(address):
                return await work(opened)

    return run(main())


@contextmanager
def explained(address: str) -> Iterator[None]:
    """Turn gRPC failures into messages that say what to do."""
    import grpc

    try:
        yield
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE and _tls_failed(exc):
            raise CliError(
                f"TLS with the control plane at {address} failed: its certificate is not "
                "trusted or does not name this address (set GATEHOUSE_CA_FILE to its CA, "
                f"e.g. DATA_DIR/ca.pem) [{exc.details()}]",
                REFUSED,
            ) from None
        if code == grpc.StatusCode.UNAVAILABLE and _unreachable(exc):
            hint = (
                " (a production control plane serves TLS: set GATEHOUSE_CA_FILE)"
                if is_loopback(address) and not _ca_file()
                else ""
            )
            raise CliError(
                f"cannot reach the control plane at {address}: is it running? "
                f"(set GATEHOUSE_CONTROLPLANE or --controlplane){hint}",
                REFUSED,
            ) from None
        if code == grpc.StatusCode.UNAVAILABLE and _dropped(exc):
            raise CliError(
                f"the connection to the control plane at {address} was lost while it was "
                "serving this (the replica may have stopped); whatever was running may or may "
                f"not have completed: check before running it again [{exc.details()}]",
                REFUSED,
            ) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise CliError(f"the control plane at {address} did not answer in time") from None
        raise CliError(exc.details() or code.name, REFUSED) from None


def _ca_file() -> str | None:
    from cli.profiles import selected

    return selected().ca_file


def _tls_failed(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return any(word in details for word in ("handshake", "certificate", "ssl_error", "tls"))


def _dropped(exc: grpc.aio.AioRpcError) -> bool:
    """An established connection that broke (gRPC says "Stream removed", "Socket closed")."""
    details = (exc.details() or "").lower()
    return any(word in details for word in ("stream removed", "socket closed", "connection reset"))


def _unreachable(exc: grpc.aio.AioRpcError) -> bool:
    details = (exc.details() or "").lower()
    return any(
        word in details
        for word in ("failed to connect", "connection refused", "dns resolution", "unavailable")
    )
