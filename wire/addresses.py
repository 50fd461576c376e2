"""Whether an address names this machine: the one test the control plane, the agent and the CLI
share for what is allowed without TLS (--dev, --insecure) and for loopback redirect URIs."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback IP (a name that only resolves there does not count)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_loopback(address: str) -> bool:
    """Whether `host:port` (or a bare host) names this machine."""
    return is_loopback_host(address.rpartition(":")[0].strip("[]") or address)
