"""A gateway in front of a throwaway MariaDB for the MySQL end-to-end tests: a control plane,
one agent, the `my*` connections, `gatehouse connect` listeners, and the server's general log
to judge the trail by."""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devenv.mariadb import MariadbServer
from devenv.stack import Agent, Connect, ControlPlane, enroll_agent, gatehouse
from tests.conftest import ED25519_PASSWORD, MYSQL_PASSWORD

AGENT = "vpc-my"
POLICY = """\
connections:
  - name: my
    type: mysql
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, tls: disable}}
    secret: {{password: env:MY_PASSWORD}}
    guardrails: [no-destructive]
  - name: my-ed
    type: mysql
    agent: {agent}
    target: {{host: localhost, port: {port}, database: app, user: edapp, tls: verify-full,
              tls_ca: '{ca}'}}
    secret: {{password: env:ED_PASSWORD}}
  - name: my-masked
    type: mysql
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app}}
    secret: {{password: env:MY_PASSWORD}}
    masking: [people]
  - name: my-files
    type: mysql
    agent: {agent}
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, local_infile: true}}
    secret: {{password: env:MY_PASSWORD}}
guardrails:
  - name: no-destructive
    deny_statements: [DROP, TRUNCATE]
    deny_unbounded: [DELETE, UPDATE]
masking:
  - name: people
    columns: [ssn]
    detectors: [email]
"""


@dataclass
class MysqlStack:
    controlplane: ControlPlane
    agent: Agent
    server: MariadbServer
    base: Path

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return gatehouse(list(args), env=self.controlplane.cli_env, timeout=timeout)

    def events(self, after: int = 0) -> list[dict[str, Any]]:
        result = self.cli("audit", "export", "--after", str(after))
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.split("\n") if line]

    def last_seq(self) -> int:
        found = self.events()
        return found[-1]["seq"] if found else 0

    def queries(self, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.events(after) if e["type"] in ("db.query", "db.cancel")]

    @contextlib.contextmanager
    def listening(self, connection: str = "my") -> Iterator[int]:
        process = Connect.create(self.controlplane, connection, self.base)
        process.start_and_wait()
        try:
            yield process.port
        finally:
            process.stop()

    def stop(self) -> None:
        self.agent.stop()
        self.controlplane.stop()


def start(base: Path, server: MariadbServer, *, tls: bool = False) -> MysqlStack:
    """The control plane listens for native MySQL clients too (`--mysql-listen`)."""
    controlplane = ControlPlane.create(base / "controlplane", tls=tls, mysql_listen=True)
    controlplane.start_and_wait()
    try:
        agent = enroll_agent(
            controlplane,
            AGENT,
            base / "agent",
            env={"MY_PASSWORD": MYSQL_PASSWORD, "ED_PASSWORD": ED25519_PASSWORD},
        )
    except Exception:
        controlplane.stop()
        raise
    stack = MysqlStack(controlplane, agent, server, base)
    path = base / "gatehouse.yaml"
    path.write_text(POLICY.format(agent=AGENT, port=server.port, ca=server.ca_file))
    applied = stack.cli("admin", "apply", "-f", str(path))
    if applied.returncode != 0:
        stack.stop()
        raise AssertionError(applied.stderr)
    return stack
