"""Real processes for end-to-end tests: PostgreSQL, a control plane, an agent, the CLI."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devenv import netns
from devenv.postgres import PostgresServer, start_postgres
from devenv.processes import free_port
from devenv.sshd import Sshd
from devenv.stack import Agent, Connect, ControlPlane, enroll_agent, gatehouse
from tests.conftest import require
from tests.e2e import pggate

PG_PASSWORD = "s3cret-pg-password"
AGENT = "vpc-1"

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
"""


@pytest.fixture
def namespaces_available() -> None:
    """For the tests across network namespaces: fail saying why they cannot be made here."""
    why = netns.available()
    require(why is None, f"{why}")


@pytest.fixture(scope="session")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    server = start_postgres(
        tmp_path_factory.mktemp("pg"), roles={"app": PG_PASSWORD}, databases={"app": "app"}
    )
    yield server
    server.stop()


SSH_POLICY = (
    POLICY
    + """\
  - name: web-1
    type: ssh
    agent: {agent}
    target: {{host: 127.0.0.1, port: {ssh_port}, user: {user}, known_hosts: '{known_hosts}'}}
    secret: {{private_key: 'file:{key}'}}
    guardrails: [no-rm-root]
  - name: ops
    type: shell
    agent: {agent}
    target: {{run_as: agent, workdir: {workdir}, env: {{GREETING: hello}}, timeout: 60}}
    guardrails: [no-rm-root]
guardrails:
  - name: no-rm-root
    deny_commands: ['rm -rf /', 'rm -rf /*']
"""
)


@dataclass
class Stack:
    """One control plane with one enrolled agent and the `pg` connection applied."""

    controlplane: ControlPlane
    agent: Agent
    pg: PostgresServer
    base: Path

    def cli(self, *args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
        return gatehouse(list(args), env={**self.controlplane.cli_env, **env}, timeout=timeout)

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        result = self.cli("audit", "export", "--after", str(after))
        assert result.returncode == 0, result.stderr
        # Split on newlines only: U+2028 and friends are valid inside JSON strings.
        return [json.loads(line) for line in result.stdout.split("\n") if line]

    def apply(self, policy: str) -> subprocess.CompletedProcess[str]:
        path = self.base / "gatehouse.yaml"
        path.write_text(policy)
        return self.cli("admin", "apply", "-f", str(path))

    def stop(self) -> None:
        self.agent.stop()
        self.controlplane.stop()


def start_stack(
    base: Path, pg: PostgresServer, *, tls: bool = False, extra: tuple[str, ...] = ()
) -> Stack:
    """The control plane listens for native PostgreSQL clients too (`--pg-listen`)."""
    controlplane = ControlPlane.create(base / "controlplane", tls=tls, pg_listen=True, extra=extra)
    controlplane.start_and_wait()
    try:
        agent = enroll_agent(controlplane, AGENT, base / "agent", env={"PG_PASSWORD": PG_PASSWORD})
    except Exception:
        controlplane.stop()
        raise
    stack = Stack(controlplane, agent, pg, base)
    applied = stack.apply(POLICY.format(agent=AGENT, port=pg.port))
    assert applied.returncode == 0, applied.stderr
    return stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    """Shared by the tests of one module that leave the stack as they found it."""
    started = start_stack(tmp_path_factory.mktemp("stack"), pg)
    yield started
    started.stop()


@pytest.fixture
def own_stack(tmp_path: Path, pg: PostgresServer) -> Iterator[Stack]:
    """A stack of the test's own, for tests that stop, break or tamper with it."""
    started = start_stack(tmp_path, pg)
    yield started
    started.stop()


@dataclass(frozen=True)
class WayIn:
    """How a native PostgreSQL client reaches the gateway: the local port of `gatehouse
    connect` (any password) or the control plane's own `--pg-listen` (a token as password;
    TLS against the control plane's CA when it runs in production mode)."""

    name: str
    port: int
    password: str
    ca_file: Path | None = None

    def params(self, **extra: str) -> dict[str, str]:
        params = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "dbname": "pg",
            "user": "anyone",
            "password": self.password,
        }
        if self.ca_file is not None:
            params.update(sslmode="verify-full", sslrootcert=str(self.ca_file))
        params.update(extra)
        return params

    def dsn(self, **extra: str) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params(**extra).items())

    def url(self) -> str:
        """For SQLAlchemy and asyncpg."""
        query = f"?sslmode=verify-full&sslrootcert={self.ca_file}" if self.ca_file else ""
        return f"postgresql://anyone:{self.password}@127.0.0.1:{self.port}/pg{query}"


WAYS_IN = ("connect", "pg-listen")


def psql(dsn: str, sql: str) -> subprocess.CompletedProcess[str]:
    """`psql DSN -At -c SQL`, as a user runs it."""
    binary = shutil.which("psql")
    assert binary, "psql is installed by deploy/system-deps.sh"
    command = [binary, dsn, "-At", "-c", sql]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def way_in(name: str, stack: Stack) -> Iterator[WayIn]:
    """A running way in of that name (`gatehouse connect` is started and stopped here)."""
    if name == "pg-listen":
        controlplane = stack.controlplane
        ca = controlplane.ca_file if controlplane.tls else None
        yield WayIn(name, controlplane.pg_port, controlplane.token, ca)
        return
    process = Connect.create(stack.controlplane, "pg", stack.base)
    process.start_and_wait()
    try:
        yield WayIn(name, process.port, "anything")
    finally:
        process.stop()


# ---- a guarded gateway, judged by PostgreSQL's own log (tests/e2e/pggate.py) ------------------


@pytest.fixture(scope="module")
def guarded(stack: Stack) -> Stack:
    """The module's stack with `pg` behind guardrail no-destructive and `pg-open` without."""
    return pggate.guard(stack)


@pytest.fixture(scope="module")
def listener(guarded: Stack) -> Iterator[Connect]:
    """`gatehouse connect pg`: the guarded connection, for raw protocol clients."""
    with pggate.listening(guarded) as process:
        yield process


@pytest.fixture(scope="module")
def open_listener(guarded: Stack) -> Iterator[Connect]:
    """`gatehouse connect pg-open`: the same database without guardrails."""
    with pggate.listening(guarded, pggate.OPEN) as process:
        yield process


@pytest.fixture
def window(guarded: Stack, pg: PostgresServer, listener: Connect) -> pggate.Window:
    """The server's log and the trail from the start of the test (see pggate.Window)."""
    return pggate.Window(pggate.http_events(guarded), pg.log_file)


@pytest.fixture
def sentinel(pg: PostgresServer) -> Iterator[str]:
    """A table with three rows an attack would damage (made directly: not logged)."""
    name = f"sentinel_{uuid.uuid4().hex[:10]}"
    pggate.make_table(pg, name)
    yield name
    pggate.drop_table(pg, name)


def ssh_policy(stack: Stack, sshd: Sshd, known_hosts: str | None = None) -> str:
    """The `pg` connection plus `web-1` (ssh to `sshd`) and `ops` (shell in the stack's base
    directory), both guarded by `no-rm-root`."""
    return SSH_POLICY.format(
        agent=AGENT,
        port=stack.pg.port,
        ssh_port=sshd.port,
        user=sshd.user,
        known_hosts=known_hosts or sshd.host_key_line,
        key=sshd.client_key,
        workdir=stack.base,
    )


@contextlib.contextmanager
def hasty_listener(
    controlplane: ControlPlane, connection: str, log_dir: Path, deadline: str = "1"
) -> Iterator[Connect]:
    """`gatehouse connect CONNECTION` whose handshake deadline is `deadline` seconds."""
    port = free_port()
    listener = Connect(
        args=["connect", connection, "--port", str(port)],
        log_file=log_dir / f"connect-{connection}.log",
        env={**controlplane.cli_env, "GATEHOUSE_HANDSHAKE_TIMEOUT": deadline},
        port=port,
    )
    listener.start_and_wait()
    try:
        yield listener
    finally:
        listener.stop()


def read_until_closed(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the peer sends until it closes, and how many seconds that took."""
    started = time.monotonic()
    data = b""
    with contextlib.suppress(OSError):
        while chunk := sock.recv(4096):
            data += chunk
    return data, time.monotonic() - started
