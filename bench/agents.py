"""Section `agents`: N simulated agents on one control-plane process, its memory and CPU.

For each N: a fresh control plane (SQLite) whose store already holds N enrolled agents, then
client processes (bench/agentsim.py) open N control streams and keep them alive with the
heartbeats the control plane asks for. Measured from /proc, for the control-plane process
only: RSS and CPU with no agent (the baseline), then idle with N agents for a window that
spans at least one heartbeat interval, then while a policy with one connection per agent is
applied and pushed to all of them. The push counts only when every simulated agent reports
that its new policy names its own connection.

Enrolment: there is no bulk API (an agent is created, then exchanges its one-time join token,
each a strict audit commit and a write), so the agents' rows are inserted straight into the
store before the control plane starts, with the credential hashes the control plane checks;
the simulated agents derive the same credentials from a shared seed.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from bench.agentsim import agent_name, connection_name, credential
from bench.common import Config, Section, Table, Target, fmt, progress, tail
from bench.procfs import MIB, CpuWindow, RssSampler, cpu_seconds, peak_rss_bytes, rss_bytes
from bench.resources import Resources
from bench.stats import rate
from controlplane.auth.tokens import token_hash
from controlplane.store.database import Database, default_url
from controlplane.store.models import AgentInstanceRow, AgentRow
from devenv.stack import REPO, ControlPlane, StackError, gatehouse

AGENTS_PER_PROCESS = 2500
PER_CHANNEL = 100
GIB = 1024 * MIB
HEARTBEAT_INTERVAL = 10.0  # the control plane's default (Settings.heartbeat_interval)
CONNECT_RATE_FLOOR = 40  # agents/s on average: slower, and the connect phase counts as failed


def enroll_directly(data_dir: Path, count: int, seed: str) -> None:
    """Agent rows as `Enroll` leaves them, inserted in one transaction (no API is bulk)."""
    from controlplane.audit.events import utc_now

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    db = Database(default_url(data_dir))
    try:
        db.migrate()
        now = utc_now()
        agents = [
            AgentRow(id=str(uuid.uuid4()), name=agent_name(i), created_at=now, enrolled_at=now)
            for i in range(count)
        ]
        with db.write_session() as session, session.begin():
            session.add_all(agents)
            session.flush()
            session.add_all(
                AgentInstanceRow(
                    id=agent.id,
                    agent_id=agent.id,
                    name=agent.name,
                    credential_hash=token_hash(credential(seed, i)),
                    version="bench",
                    enrolled_at=now,
                )
                for i, agent in enumerate(agents)
            )
    finally:
        db.dispose()


def enroll_with_certificates(data_dir: Path, count: int) -> Path:
    """Agent rows as a production `Enroll` leaves them: a key and a client certificate from the
    control plane's CA (made here first; the control plane loads it), the certificate's
    SHA-256 in the store. Returns the JSON file bench/agentsim.py reads the keys from."""
    from agent import enrollment
    from controlplane.agents.certificates import describe
    from controlplane.audit.events import utc_now
    from controlplane.tls.ca import CertificateAuthority

    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca = CertificateAuthority.load_or_create(data_dir)
    now = utc_now()
    agents: dict[str, dict[str, str]] = {}
    rows = []
    instances = []
    for i in range(count):
        key = enrollment.new_key()
        pem = ca.sign_csr(enrollment.csr_pem(key, agent_name(i)), agent_name(i), timedelta(hours=2))
        issued = describe(pem)
        agents[str(i)] = {"key": enrollment.key_pem(key).decode(), "certificate": pem.decode()}
        agent_id = str(uuid.uuid4())
        rows.append(AgentRow(id=agent_id, name=agent_name(i), created_at=now, enrolled_at=now))
        instances.append(
            AgentInstanceRow(
                id=agent_id,
                agent_id=agent_id,
                name=agent_name(i),
                version="bench",
                enrolled_at=now,
                cert_fingerprint=issued.fingerprint,
                cert_serial=issued.serial,
                cert_not_after=issued.not_after,
            )
        )
    db = Database(default_url(data_dir))
    try:
        db.migrate()
        with db.write_session() as session, session.begin():
            session.add_all(rows)
            session.flush()
            session.add_all(instances)
    finally:
        db.dispose()
    path = data_dir.parent / "agents-mtls.json"
    path.write_text(json.dumps({"ca": ca.cert_pem.decode(), "agents": agents}))
    return path


def compare_connect(base: Path, count: int) -> dict[str, dict[str, Any]]:
    """Connect `count` agents, one connection each, to a --dev control plane (plaintext,
    bearer credentials) and to a production one (TLS, client certificates); the seconds until
    all are connected, and the control plane's CPU meanwhile."""
    from devenv.production import ProductionControlPlane

    results: dict[str, dict[str, Any]] = {}
    for mode in ("plaintext", "mtls"):
        data_dir = base / mode / "controlplane"
        controlplane: ControlPlane
        mtls: Path | None = None
        seed = secrets.token_hex(16)
        if mode == "mtls":
            mtls = enroll_with_certificates(data_dir, count)
            controlplane = ProductionControlPlane.create_production(data_dir)
        else:
            enroll_directly(data_dir, count, seed)
            controlplane = ControlPlane.create(data_dir)
        controlplane.start_and_wait()
        assert controlplane.proc is not None
        found: dict[str, Any] = {"agents": count}
        fleet = None
        try:
            time.sleep(1.0)
            fleet = Fleet(controlplane, count, seed, base / mode, per_channel=1, mtls=mtls)
            connect_all(fleet, controlplane.proc.pid, found)
            found["rss_mib"] = (rss_bytes(controlplane.proc.pid) or 0) / MIB
        finally:
            if fleet is not None:
                fleet.stop()
            controlplane.stop(timeout=60)
        found.pop("connect_timeline", None)
        results[mode] = found
        progress(f"{mode}: {found.get('connected')} agents in {found.get('connect_s', 0):.1f} s")
    return results


def push_policy(count: int, target_port: int = 5432) -> str:
    """One connection per agent: what a fleet of N agents serving a target each looks like."""
    lines = ["connections:"]
    for i in range(count):
        lines += [
            f"  - name: {connection_name(i)}",
            "    type: postgres",
            f"    agent: {agent_name(i)}",
            f"    target: {{host: 127.0.0.1, port: {target_port}, database: app, user: app}}",
            "    secret: {password: env:PG_PASSWORD}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Client:
    """One agentsim process and the last status line it printed."""

    process: subprocess.Popen[str]
    status: dict[str, Any] = field(default_factory=dict)
    output: list[str] = field(default_factory=list)

    def start_reading(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                self.status = json.loads(line)
            except ValueError:
                self.output.append(line)

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Fleet:
    """The client processes together: sums of what their agents report."""

    def __init__(
        self,
        controlplane: ControlPlane,
        count: int,
        seed: str,
        log_dir: Path,
        *,
        per_channel: int = PER_CHANNEL,
        mtls: Path | None = None,
    ) -> None:
        self.count = count
        self.clients: list[Client] = []
        processes = max(1, -(-count // AGENTS_PER_PROCESS))
        share = -(-count // processes)
        for first in range(0, count, share):
            args = [
                sys.executable,
                "-m",
                "bench.agentsim",
                "--address",
                controlplane.address,
                "--seed",
                seed,
                "--first",
                str(first),
                "--count",
                str(min(share, count - first)),
                "--per-channel",
                str(per_channel),
                *(["--mtls", str(mtls)] if mtls is not None else []),
            ]
            with (log_dir / f"agentsim-{first}.log").open("ab") as err:
                process = subprocess.Popen(
                    args,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    cwd=REPO,
                )
            client = Client(process)
            client.start_reading()
            self.clients.append(client)

    def total(self, key: str) -> int:
        return sum(int(c.status.get(key, 0)) for c in self.clients)

    def total_in(self, key: str, version: int) -> int:
        return sum(int(c.status.get(key, {}).get(str(version), 0)) for c in self.clients)

    def last_receipt(self, version: int) -> float | None:
        times = [c.status.get("received_at", {}).get(str(version)) for c in self.clients]
        found = [t for t in times if t is not None]
        return max(found) if found else None

    def first_error(self) -> str:
        return next(
            (c.status["first_error"] for c in self.clients if c.status.get("first_error")), ""
        )

    def pids(self) -> list[int]:
        return [c.process.pid for c in self.clients]

    def wait(self, done: Callable[[], bool], timeout: float, what: str) -> float:
        """Poll until `done()`; returns the seconds it took, raises with the state on timeout."""
        started = time.monotonic()
        while not done():
            if time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"{what} not reached within {timeout:.0f} s: connected "
                    f"{self.total('connected')}/{self.count}, failed {self.total('failed')}, "
                    f"lost {self.total('lost')}; first error: {self.first_error() or 'none'}"
                )
            if any(c.process.poll() is not None for c in self.clients):
                raise RuntimeError(f"an agentsim process exited: {self.first_error()}")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self) -> None:
        for client in self.clients:
            client.stop()


def idle_cpu(pid: int, seconds: float) -> float:
    window = CpuWindow({"controlplane": pid})
    window.start()
    time.sleep(seconds)
    return window.stop()["controlplane"]


def connect_all(fleet: Fleet, pid: int, found: dict[str, Any]) -> None:
    """Wait until every agent is connected, sampling progress every 5 s; on a timeout the
    shortfall is recorded (`connect_error`) and measuring goes on with those connected.

    The timeout allows CONNECT_RATE_FLOOR agents per second on average: a control plane that
    cannot take its fleet back faster than that after a restart does not hold that fleet."""
    timeout = max(120.0, fleet.count / CONNECT_RATE_FLOOR)
    timeline: list[dict[str, float]] = found.setdefault("connect_timeline", [])
    started = time.monotonic()
    cpu_start = last_cpu = cpu_seconds(pid) or 0.0
    last = started
    while fleet.total("connected") < fleet.count:
        now = time.monotonic()
        if now - last >= 5.0:
            cpu = cpu_seconds(pid) or 0.0
            timeline.append(
                {
                    "t": round(now - started, 1),
                    "connected": fleet.total("connected"),
                    "cpu": round((cpu - last_cpu) / (now - last), 3),
                    "rss_mib": round((rss_bytes(pid) or 0) / MIB, 1),
                }
            )
            last, last_cpu = now, cpu
        if now - started > timeout:
            found["connect_error"] = (
                f"only {fleet.total('connected')} of {fleet.count} connected within "
                f"{timeout:.0f} s (failed {fleet.total('failed')}, lost {fleet.total('lost')}; "
                f"first error: {fleet.first_error() or 'none'})"
            )
            break
        if any(c.process.poll() is not None for c in fleet.clients):
            raise RuntimeError(f"an agentsim process exited: {fleet.first_error()}")
        time.sleep(0.2)
    found["connect_s"] = time.monotonic() - started
    found["connected"] = fleet.total("connected")
    found["connect_per_s"] = rate(found["connected"], found["connect_s"])
    found["connect_cpu"] = ((cpu_seconds(pid) or 0.0) - cpu_start) / found["connect_s"]


def measure(cfg: Config, res: Resources, count: int, found: dict[str, Any]) -> None:
    """Fills `found` as it goes, so that a failure still reports what was measured."""
    base = res.scratch(f"agents-{count}")
    seed = secrets.token_hex(16)
    progress(f"agents {count}: enrolling in the store directly")
    enroll_directly(base / "controlplane", count, seed)
    controlplane = ControlPlane.create(base / "controlplane")
    controlplane.start_and_wait()
    assert controlplane.proc is not None
    pid = controlplane.proc.pid
    idle_window = max(cfg.duration, HEARTBEAT_INTERVAL * 1.5)
    found["idle_window_s"] = idle_window
    fleet: Fleet | None = None
    try:
        time.sleep(1.0)  # let start-up work settle before the baseline
        found["baseline_rss_mib"] = (rss_bytes(pid) or 0) / MIB
        found["baseline_idle_cpu"] = idle_cpu(pid, min(idle_window, 5.0))
        progress(f"agents {count}: connecting")
        fleet = Fleet(controlplane, count, seed, base)
        connect_all(fleet, pid, found)
        connected = found["connected"]
        progress(
            f"agents {count}: {connected} connected in {found['connect_s']:.1f} s; "
            f"idle for {idle_window:.0f} s"
        )
        with RssSampler(pid) as sampler:
            sims = {f"sim{i}": p for i, p in enumerate(fleet.pids())}
            window = CpuWindow({"controlplane": pid, **sims})
            heartbeats = fleet.total("heartbeats")
            window.start()
            time.sleep(idle_window)
            cores = window.stop()
            found["idle_cpu"] = cores["controlplane"]
            found["sim_cpu"] = sum(v for k, v in cores.items() if k != "controlplane")
            found["heartbeats_per_s"] = rate(fleet.total("heartbeats") - heartbeats, window.seconds)
            found["idle_rss_mib"] = (rss_bytes(pid) or 0) / MIB
            found["idle_rss_peak_mib"] = sampler.peak / MIB
            found["idle_connected"] = fleet.total("connected")
            found["per_agent_kib"] = (
                (found["idle_rss_mib"] - found["baseline_rss_mib"])
                * 1024
                / max(1, found["idle_connected"])
            )
            progress(f"agents {count}: pushing a policy with {count} connections")
            sampler.reset()
            policy = base / "push.yaml"
            policy.write_text(push_policy(count))
            window = CpuWindow({"controlplane": pid})
            window.start()
            started = time.time()
            applied = gatehouse(
                ["admin", "apply", "-f", str(policy)],
                env=controlplane.cli_env,
                timeout=max(120.0, count / 10),
            )
            found["apply_s"] = time.time() - started
            if applied.returncode != 0:
                raise StackError(f"admin apply failed: {tail(applied.stderr)}")
            version = 1
            # Every agent connected now must have it (one that connects later gets it then).
            fleet.wait(
                lambda: (
                    fleet is not None
                    and fleet.total_in("own", version) >= fleet.total("connected") > 0
                ),
                max(60.0, count / 50),
                "the policy push received by every connected agent",
            )
            found["push_cpu"] = window.stop()["controlplane"]
            found["push_cpu_s"] = found["push_cpu"] * window.seconds
            last = fleet.last_receipt(version)
            found["push_s"] = (last - started) if last is not None else None
            found["push_received"] = fleet.total_in("own", version)
            found["push_rss_peak_mib"] = sampler.peak / MIB
        found["lifetime_peak_rss_mib"] = (peak_rss_bytes(pid) or 0) / MIB
        found["lost"] = fleet.total("lost")
        progress(
            f"agents {count}: idle RSS {found['idle_rss_mib']:.0f} MiB, idle CPU "
            f"{found['idle_cpu']:.2f} cores; push to all in {fmt(found['push_s'], 1)} s"
        )
    finally:
        if fleet is not None:
            fleet.stop()
        controlplane.stop(timeout=60)


def run(cfg: Config, res: Resources, section: Section) -> None:
    fleets: list[dict[str, Any]] = []
    for count in cfg.agents:
        found: dict[str, Any] = {"agents": count}
        fleets.append(found)
        try:
            measure(cfg, res, count, found)
        except Exception as exc:
            found["error"] = f"{type(exc).__name__}: {exc}"
        if "connect_error" in found:
            section.fail(f"{count} agents: {found['connect_error']}")
        if "error" in found:
            section.fail(f"{count} agents: {found['error']}")
    section.results = {"fleets": fleets, "heartbeat_interval_s": HEARTBEAT_INTERVAL}
    table = Table(
        "One control-plane process holding N agents' control streams",
        [
            "agents",
            "RSS MiB (0 agents)",
            "RSS MiB idle",
            "KiB/agent",
            "CPU idle (cores)",
            "connect s",
            "push: apply s",
            "push: all received s",
            "push CPU (cores)",
            "RSS MiB peak in push",
        ],
    )
    for found in fleets:
        connected = found.get("idle_connected", found.get("connected"))
        agents = f"{found['agents']:,}"
        if connected is not None and connected < found["agents"]:
            agents += f" ({connected:,} connected)"
        baseline_cpu = found.get("baseline_idle_cpu")
        idle_cpu = found.get("idle_cpu")
        table.rows.append(
            [
                agents,
                fmt(found.get("baseline_rss_mib"), 0),
                fmt(found.get("idle_rss_mib"), 0),
                fmt(found.get("per_agent_kib"), 1),
                "—" if idle_cpu is None else f"{idle_cpu:.3f} (0 agents: {fmt(baseline_cpu, 3)})",
                fmt(found.get("connect_s"), 1),
                fmt(found.get("apply_s"), 1),
                fmt(found.get("push_s"), 1),
                fmt(found.get("push_cpu"), 2),
                fmt(found.get("push_rss_peak_mib"), 0),
            ]
        )
        if "error" in found:
            table.rows.append([agents, f"failed: {found['error']}"] + [""] * 8)
    table.note = (
        f"Simulated agents send heartbeats every {HEARTBEAT_INTERVAL:.0f} s (the control "
        f"plane's default); {PER_CHANNEL} streams share one HTTP/2 connection. CPU in cores "
        "of the control-plane process only; the idle window spans at least 1.5 heartbeat "
        f"intervals. Connecting counts as failed below {CONNECT_RATE_FLOOR} agents/s on "
        "average; the rest is then measured with the agents that did connect."
    )
    section.tables = [table]
    biggest = next((f for f in fleets if f["agents"] == 10_000), None)
    section.targets = [target_10k(biggest)]


def target_10k(found: dict[str, Any] | None) -> Target:
    """Met only when all 10,000 agents were held, at the higher of the idle and push peaks."""
    name, goal = "10,000 agents on one control-plane process", "≤ 1 GiB RSS"
    if found is None:
        return Target(name, goal, "not run", None)
    peaks = [found.get(k) for k in ("idle_rss_peak_mib", "push_rss_peak_mib")]
    rss = max((p for p in peaks if p is not None), default=None)
    if rss is None:
        return Target(name, goal, f"failed: {found.get('error', 'no measurement')}", None)
    reached = f"{fmt(rss, 0)} MiB peak (idle and push)"
    held = found.get("idle_connected", found.get("connected", 0))
    if held < found["agents"]:
        return Target(name, goal, f"{reached} with only {held:,} agents connected", False)
    return Target(name, goal, reached, rss * MIB <= GIB)


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="connect N agents: plaintext vs mTLS")
    parser.add_argument("--count", type=int, default=1000)
    parsed = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gatehouse-bench-") as scratch:
        print(json.dumps(compare_connect(Path(scratch), parsed.count), indent=2))
