"""Separate networks on one machine, for tests that must cross a real network boundary.

`network()` makes Linux network namespaces joined by veth pairs (addresses in 10.231.X.0/24,
which exist only inside the namespaces it made) and always removes them, with any process left
inside, when the block ends, also on failure. A process runs in one either under
`ip netns exec` (`Namespace.wrap`) or, for servers a helper starts in-process (PostgreSQL,
sshd), from a thread that entered it (`Namespace.entered`): children inherit the namespace.
Needs root (CAP_SYS_ADMIN); `available()` says why not.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class NetnsError(Exception):
    pass


def available() -> str | None:
    """None when namespaces can be made here; else why not (the tests fail saying so)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class Namespace:
    name: str
    addresses: list[str] = field(default_factory=list)  # this namespace's end of each link
    extra: list[str] = field(default_factory=list)  # added with add_address

    @property
    def wrap(self) -> list[str]:
        """Prefix a command with this to run it inside the namespace."""
        return ["ip", "netns", "exec", self.name]

    def run(
        self, args: Sequence[str], *, timeout: float = 30, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.wrap, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, **(env or {})},
        )

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """The calling thread is in this namespace inside the block (and what it starts)."""
        with (
            open("/proc/thread-self/ns/net", "rb") as home,
            open(f"/run/netns/{self.name}", "rb") as target,
        ):
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())

    def add_address(self, beside: str, address: str) -> None:
        """A second address on the link that carries `beside` (one of `addresses`): a process
        here can then use another source address on that link (a load balancer's own)."""
        shown = subprocess.run(
            ["ip", "-n", self.name, "-o", "-4", "addr", "show"],
            capture_output=True,
            text=True,
            check=False,
        )
        for line in shown.stdout.splitlines():
            fields = line.split()  # "N: DEV inet A.B.C.D/24 ..."
            if len(fields) > 3 and fields[3].split("/")[0] == beside:
                prefix = fields[3].split("/")[1]
                _ip("-n", self.name, "addr", "add", f"{address}/{prefix}", "dev", fields[1])
                self.extra.append(address)
                return
        raise NetnsError(f"{self.name} has no address {beside}")

    def pids(self) -> list[int]:
        result = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(p) for p in result.stdout.split() if p.isdigit()]


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise NetnsError(f"setns: {os.strerror(errno)}")


@dataclass
class Network:
    namespaces: dict[str, Namespace]

    def __getitem__(self, role: str) -> Namespace:
        return self.namespaces[role]


@contextlib.contextmanager
def network(prefix: str, links: Sequence[tuple[str, str]]) -> Iterator[Network]:
    """Namespaces `{prefix}{pid}-{role}` for every role named in `links` (the pid keeps two
    test runs on one machine apart); link number i joins its two roles over 10.231.(i+1).0/24
    (the first role .1, the second .2)."""
    if len(links) > 250:
        raise ValueError("at most 250 links")
    tag = f"{prefix}{os.getpid()}"
    roles = list(dict.fromkeys(role for link in links for role in link))
    made: list[Namespace] = []
    try:
        for role in roles:
            namespace = Namespace(f"{tag}-{role}")
            _ip("netns", "add", namespace.name)
            made.append(namespace)
            _ip("-n", namespace.name, "link", "set", "lo", "up")
        by_role = {role: made[i] for i, role in enumerate(roles)}
        for index, (left, right) in enumerate(links):
            subnet = f"10.231.{index + 1}"
            a, b = f"v{os.getpid()}{index}a"[-15:], f"v{os.getpid()}{index}b"[-15:]
            _ip("link", "add", a, "type", "veth", "peer", "name", b)
            for end, role, host in ((a, left, 1), (b, right, 2)):
                namespace = by_role[role]
                _ip("link", "set", end, "netns", namespace.name)
                _ip("-n", namespace.name, "addr", "add", f"{subnet}.{host}/24", "dev", end)
                _ip("-n", namespace.name, "link", "set", end, "up")
                namespace.addresses.append(f"{subnet}.{host}")
        yield Network(by_role)
    finally:
        for namespace in made:
            _remove(namespace)


def _remove(namespace: Namespace) -> None:
    """Stop what still runs inside (only our own processes can be there), then delete it;
    its veth ends go with it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = namespace.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and namespace.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not namespace.pids():
            break
    subprocess.run(["ip", "netns", "del", namespace.name], capture_output=True, check=False)


__all__ = ["Namespace", "NetnsError", "Network", "available", "network"]
