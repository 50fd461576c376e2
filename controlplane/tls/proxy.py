"""PROXY protocol v2 (the binary header a TCP load balancer puts before the client's bytes).

Only headers from configured trusted proxies are read: anyone else could otherwise claim any
source address. Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt (section 2.2).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PREFIX = 16  # signature, version/command, family/protocol, length
MAX_BODY = 2048  # addresses plus TLVs; a larger header is refused, not buffered

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyHeaderError(ValueError):
    """The bytes are not a PROXY v2 header we accept."""


@dataclass(frozen=True)
class ProxyHeader:
    source: str | None  # None: a LOCAL command (the proxy's own health check) or unknown family
    length: int  # bytes the header takes, including the prefix
    port: int = 0  # the client's source port


def body_length(prefix: bytes) -> int:
    """From the first 16 bytes: how many more bytes the header has."""
    if len(prefix) < PREFIX or not prefix.startswith(SIGNATURE):
        raise ProxyHeaderError("not a PROXY protocol v2 header")
    if prefix[12] >> 4 != 2:
        raise ProxyHeaderError("PROXY protocol version is not 2")
    (length,) = struct.unpack("!H", prefix[14:16])
    if length > MAX_BODY:
        raise ProxyHeaderError(f"PROXY header of {length} bytes is larger than {MAX_BODY}")
    return int(length)


def parse(header: bytes) -> ProxyHeader:
    """A whole header (prefix and body) → the client's address."""
    length = body_length(header[:PREFIX])
    body = header[PREFIX : PREFIX + length]
    if len(body) < length:
        raise ProxyHeaderError("PROXY header is truncated")
    command = header[12] & 0x0F
    if command == 0x0:  # LOCAL: the proxy speaking for itself
        return ProxyHeader(None, PREFIX + length)
    if command != 0x1:
        raise ProxyHeaderError(f"unknown PROXY command {command}")
    family = header[13] >> 4
    if family == 0x1:  # AF_INET: src(4) dst(4) sport(2) dport(2)
        if length < 12:
            raise ProxyHeaderError("PROXY header too short for IPv4 addresses")
        (port,) = struct.unpack("!H", body[8:10])
        return ProxyHeader(str(ipaddress.IPv4Address(body[:4])), PREFIX + length, port)
    if family == 0x2:  # AF_INET6: src(16) dst(16) sport(2) dport(2)
        if length < 36:
            raise ProxyHeaderError("PROXY header too short for IPv6 addresses")
        (port,) = struct.unpack("!H", body[32:34])
        source = normal_ip(str(ipaddress.IPv6Address(body[:16])))
        return ProxyHeader(source, PREFIX + length, port)
    return ProxyHeader(None, PREFIX + length)  # UNSPEC or unix: no address to record


def build(source: str, source_port: int, dest: str, dest_port: int) -> bytes:
    """A PROXY v2 PROXY/STREAM header (what a load balancer sends; for tests and tools)."""
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(dest)
    if src.version != dst.version:
        raise ValueError("source and destination must be the same IP version")
    body = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port)
    family = 0x11 if src.version == 4 else 0x21
    return SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


def parse_networks(value: str) -> tuple[Network, ...]:
    """`10.0.0.0/8,fd00::/8` → networks; a bare address is a /32 (/128)."""
    networks: list[Network] = []
    for part in filter(None, (p.strip() for p in value.split(","))):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


def trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def normal_ip(address: str) -> str:
    """`::ffff:10.0.0.1` (an IPv4 client on a dual-stack listener) → `10.0.0.1`."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
