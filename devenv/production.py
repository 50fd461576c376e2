"""A production-mode control plane (TLS, its own CA, no --dev) and agents that join it with a
pinned join token: for the tests, the network-namespace tests and the benchmarks.

`production_agent` takes any address and join token (and extra flags), so a test whose control
plane runs elsewhere builds its agent the same way.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devenv.processes import tail
from devenv.stack import Agent, ControlPlane, StackError, gatehouse


@dataclass
class ProductionControlPlane(ControlPlane):
    """`controlplane serve` without --dev on loopback: TLS on both listeners, `D/ca.pem`."""

    @classmethod
    def create_production(
        cls,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cert_lifetime: str | None = None,
        extra: Sequence[str] = (),
    ) -> ProductionControlPlane:
        dev = ControlPlane.create(data_dir, env=env)
        args = [a for a in dev.args if a != "--dev"] + list(extra)
        environment = dict(dev.env)
        if cert_lifetime is not None:
            environment["GATEHOUSE_AGENT_CERT_LIFETIME"] = cert_lifetime
        return cls(
            args=args,
            log_file=dev.log_file,
            env=environment,
            data_dir=data_dir,
            grpc_port=dev.grpc_port,
            http_port=dev.http_port,
        )

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def cli_env(self) -> dict[str, str]:
        return {**super().cli_env, "GATEHOUSE_CA_FILE": str(self.ca_file)}

    def health(self) -> dict[str, object] | None:
        if not self.ca_file.exists():
            return None
        context = ssl.create_default_context(cafile=str(self.ca_file))
        url = f"https://127.0.0.1:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                document = json.loads(response.read())
                return document if isinstance(document, dict) else None
        except (OSError, ValueError):
            return None

    def create_agent(self, name: str, *, uses: int = 1, ttl: str = "1h") -> dict[str, object]:
        """`admin agents create` with -o json: the join token, its pin, uses and expiry."""
        created = gatehouse(
            ["admin", "agents", "create", name, "--uses", str(uses), "--ttl", ttl, "-o", "json"],
            env=self.cli_env,
        )
        if created.returncode != 0:
            raise StackError(f"agents create failed: {created.stderr}")
        document = json.loads(created.stdout)
        assert isinstance(document, dict)
        return document

    def agents(self) -> dict[str, dict[str, object]]:
        listed = gatehouse(["admin", "agents", "list", "-o", "json"], env=self.cli_env)
        if listed.returncode != 0:
            raise StackError(f"agents list failed: {listed.stderr}")
        return {a["name"]: a for a in json.loads(listed.stdout)}


def production_agent(
    address: str,
    name: str,
    token: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> Agent:
    """An agent that verifies `address` by its join token's pin (no CA file, no --insecure)."""
    args = [
        "agent",
        "run",
        "--controlplane",
        address,
        "--token",
        token,
        "--name",
        name,
        "--data-dir",
        str(data_dir),
        *extra,
    ]
    log_file = data_dir.parent / f"agent-{name}-{data_dir.name}.log"  # outside: the dir may go
    return Agent(args=args, log_file=log_file, env=dict(env or {}), name=name)


def start_production_agent(
    controlplane: ProductionControlPlane,
    name: str,
    token: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    address: str | None = None,
    timeout: float = 30,
) -> Agent:
    """Start an agent with `token` and wait until the control plane lists it online."""
    agent = production_agent(address or controlplane.address, name, token, data_dir, env=env)
    agent.start()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not agent.running:
                raise StackError(f"agent {name} exited:\n{tail(agent.log_file)}")
            if controlplane.agents().get(name, {}).get("status") == "online":
                return agent
            time.sleep(0.2)
        raise StackError(f"agent {name} did not come online:\n{tail(agent.log_file)}")
    except BaseException:
        agent.stop()
        raise
