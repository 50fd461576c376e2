"""host:port parsing for the listeners (the loopback test is `wire.addresses`, shared)."""

from __future__ import annotations

from controlplane.errors import InvalidArgument


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)
