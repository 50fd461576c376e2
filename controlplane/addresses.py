"""host:port parsing and the loopback test, for listeners and for URLs the control plane calls."""

from __future__ import annotations

import ipaddress

from controlplane.errors import InvalidArgument


def split_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise InvalidArgument(f"{value!r} is not host:port")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
