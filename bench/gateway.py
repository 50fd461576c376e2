"""Gatehouse on the data path, as a user runs it: a control plane, one agent, and one
`gatehouse connect` listener per connection, all real processes (devenv.stack).

Two connections to the same database: `pg` (strict audit, no masking rule) and `pg-masked`
(strict audit, a column rule on `abalance`: pgbench -S selects exactly that column, so every
row it reads is masked at the agent).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Endpoint, tail
from devenv.stack import Agent, Connect, ControlPlane, StackError, gatehouse

AGENT = "bench"
PLAIN = "pg"
MASKED = "pg-masked"

CONNECTION = """\
  - name: {name}
    type: postgres
    agent: {agent}
    audit: strict
    target: {{host: {host}, port: {port}, database: {dbname}, user: {user}, sslmode: disable}}
    secret: {{password: env:BENCH_PG_PASSWORD}}
"""
MASKING = """\
masking:
  - name: every-row
    columns: [abalance]
"""


def policy(target: Endpoint) -> str:
    """`pg` and `pg-masked`: the same target, strict audit; only the second names a rule."""
    fields = {
        "agent": AGENT,
        "host": target.host,
        "port": target.port,
        "dbname": target.dbname,
        "user": target.user,
    }
    return (
        "connections:\n"
        + CONNECTION.format(name=PLAIN, **fields)
        + CONNECTION.format(name=MASKED, **fields)
        + "    masking: [every-row]\n"
        + MASKING
    )


@dataclass
class Gateway:
    controlplane: ControlPlane
    agent: Agent
    target: Endpoint
    listeners: dict[str, Connect] = field(default_factory=dict)

    def endpoint(self, connection: str) -> Endpoint:
        """The local listener: pgbench logs in as anyone; the agent logs in to the target."""
        listener = self.listeners[connection]
        return Endpoint("127.0.0.1", listener.port, self.target.user, self.target.dbname)

    def pg_listen(self, connection: str) -> Endpoint:
        """The control plane's own --pg-listen: the connection as database, a token as
        password (plaintext on loopback: the bench control plane runs with --dev)."""
        cp = self.controlplane
        return Endpoint("127.0.0.1", cp.pg_port, self.target.user, connection, cp.token)

    def pids(self, connection: str) -> dict[str, int]:
        """The processes on the data path, for CPU accounting."""
        found = {}
        for name, process in (
            ("controlplane", self.controlplane),
            ("agent", self.agent),
            ("connect", self.listeners.get(connection)),
        ):
            if process is not None and process.proc is not None:
                found[name] = process.proc.pid
        return found

    def metrics(self) -> dict[str, float]:
        """The control plane's audit counters (Prometheus text, parsed for our few names)."""
        url = f"http://127.0.0.1:{self.controlplane.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return parse_metrics(text)

    def exec_sql(self, connection: str, sql: str) -> list[list[object]]:
        """`gatehouse exec CONNECTION -c SQL -o json`: the rows of the last result."""
        result = gatehouse(
            ["exec", connection, "-c", sql, "-o", "json"], env=self.controlplane.cli_env
        )
        if result.returncode != 0:
            raise StackError(f"gatehouse exec {connection} failed: {result.stderr.strip()}")
        try:
            document = json.loads(result.stdout)
        except ValueError:
            raise StackError(
                f"gatehouse exec {connection} printed no JSON: {result.stdout[:300]!r} "
                f"{result.stderr[:300]!r}"
            ) from None
        last = document[-1] if isinstance(document, list) else document
        rows: list[list[object]] = last.get("rows", [])
        return rows

    def stop(self) -> None:
        for listener in self.listeners.values():
            listener.stop()
        self.agent.stop()
        self.controlplane.stop()

    def logs(self) -> str:
        parts = [self.controlplane.log(), self.agent.log()]
        parts += [listener.log() for listener in self.listeners.values()]
        return tail("\n".join(parts), 30)


def parse_metrics(text: str) -> dict[str, float]:
    """`name value` lines of the Prometheus exposition (no labels are used here)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            continue
    return values


def start_gateway(base_dir: Path, target: Endpoint) -> Gateway:
    """Control plane, enrolled agent, applied policy, and a listener per connection; returns
    once a statement went through each connection (so the agent has the policy)."""
    if target.password is None:
        raise StackError("the agent needs the target's password")
    controlplane = ControlPlane.create(base_dir / "controlplane", pg_listen=True)
    controlplane.start_and_wait()
    try:
        agent = _enroll(controlplane, base_dir / "agent", target.password)
    except BaseException:
        controlplane.stop()
        raise
    gateway = Gateway(controlplane, agent, target)
    try:
        path = base_dir / "gatehouse.yaml"
        path.write_text(policy(target))
        applied = gatehouse(["admin", "apply", "-f", str(path)], env=controlplane.cli_env)
        if applied.returncode != 0:
            raise StackError(f"admin apply failed: {applied.stderr.strip()}")
        for connection in (PLAIN, MASKED):
            _wait_until_served(gateway, connection)
            listener = Connect.create(controlplane, connection, base_dir / "connect")
            gateway.listeners[connection] = listener
            listener.start_and_wait()
    except Exception:
        gateway.stop()
        raise
    return gateway


def _enroll(controlplane: ControlPlane, data_dir: Path, password: str) -> Agent:
    """devenv.stack.enroll_agent, but the agent is stopped whatever stops the wait (there, only
    a StackError does: a JSON error while listing agents would leave it running)."""
    created = gatehouse(["admin", "agents", "create", AGENT], env=controlplane.cli_env)
    if created.returncode != 0:
        raise StackError(f"agents create failed: {created.stderr.strip()}")
    agent = Agent.create(
        controlplane,
        AGENT,
        created.stdout.strip(),
        data_dir,
        env={"BENCH_PG_PASSWORD": password},
    )
    agent.start()
    try:
        controlplane.wait_agent(AGENT)
    except BaseException:
        agent.stop()
        raise
    return agent


def _wait_until_served(gateway: Gateway, connection: str, timeout: float = 30) -> None:
    """The policy push to the agent is asynchronous: retry one statement until it works."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            gateway.exec_sql(connection, "select 1")
            return
        except StackError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.3)


def check_masking(gateway: Gateway) -> bool:
    """Whether `abalance` really comes back masked (NULL for an int4) through `pg-masked`,
    and unmasked through `pg`: otherwise the masked run would measure nothing."""
    sql = "select abalance from pgbench_accounts limit 3"
    masked = gateway.exec_sql(MASKED, sql)
    plain = gateway.exec_sql(PLAIN, sql)
    return bool(masked) and all(row[0] is None for row in masked) and plain[0][0] is not None
