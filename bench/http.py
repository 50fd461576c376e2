"""`python -m bench.http [--duration S] [--connections N]`: requests/s through the gateway.

wrk (Debian's) loads the same small static file of nginx (devenv/httpd.py) twice, for the
same duration and number of keep-alive connections: straight to nginx, then through
`gatehouse connect` (each connection one audited session, each request an `http.request`
committed before it is forwarded and an `http.response`), in strict and in async audit mode.
It prints requests/s, latency percentiles and each ratio to direct, and checks that the trail
holds an `http.request` for every request nginx logged. Everything runs on this machine: wrk,
nginx, the CLI's listener, the control plane and the agent share its cores, so the ratio is
the number to compare between machines. Not part of `make bench` nor of the tests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.procfs import cpu_seconds
from devenv.httpd import HttpTargets, start_http_targets
from devenv.stack import Agent, Connect, ControlPlane, enroll_agent, gatehouse

AGENT = "bench-http"
POLICY = """\
connections:
  - name: web-strict
    type: http
    agent: {agent}
    target: {{url: 'http://127.0.0.1:{port}'}}
  - name: web-async
    type: http
    agent: {agent}
    audit: async
    target: {{url: 'http://127.0.0.1:{port}'}}
"""
FILE = "/static/bench.json"


@dataclass(frozen=True)
class Run:
    name: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: str = ""  # cores each process of the path used during the run


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        return float("nan")
    value = float(match.group(1))
    return (
        value / 1000 if match.group(2) == "us" else value * 1000 if match.group(2) == "s" else value
    )


def parse_wrk(name: str, output: str) -> Run:
    """wrk's --latency report: requests, requests/s, the 50th and 99th percentiles, errors."""
    requests = re.search(r"(\d+) requests in", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p50 = re.search(r"^\s+50%\s+(\S+)", output, re.MULTILINE)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if requests is None or rps is None or p50 is None or p99 is None:
        raise RuntimeError(f"cannot read wrk's output:\n{output}")
    return Run(
        name,
        int(requests.group(1)),
        float(rps.group(1)),
        _ms(p50.group(1)),
        _ms(p99.group(1)),
        errors + (int(non2xx.group(1)) if non2xx else 0),
    )


def wrk(name: str, url: str, duration: float, connections: int, threads: int) -> Run:
    binary = shutil.which("wrk")
    if binary is None:
        raise SystemExit("wrk is not installed: apt-get install wrk (deploy/system-deps.sh)")
    args = [binary, f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency", url]
    done = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True)
    return parse_wrk(name, done.stdout)


def measure(base: Path, duration: float, connections: int, threads: int) -> list[Run]:
    runs: list[Run] = []
    with start_http_targets(base / "httpd") as targets:
        _write_file(targets)
        controlplane = ControlPlane.create(base / "controlplane")
        controlplane.start_and_wait()
        try:
            agent = enroll_agent(controlplane, AGENT, base / "agent")
            try:
                policy = base / "gatehouse.yaml"
                policy.write_text(POLICY.format(agent=AGENT, port=targets.port))
                applied = gatehouse(["admin", "apply", "-f", str(policy)], env=controlplane.cli_env)
                assert applied.returncode == 0, applied.stderr
                direct = f"http://127.0.0.1:{targets.port}{FILE}"
                runs.append(wrk("direct to nginx", direct, duration, connections, threads))
                for mode in ("strict", "async"):
                    logged = len(targets.log_lines())
                    gateway = (controlplane, agent)
                    runs.append(_through(gateway, mode, base, duration, connections, threads))
                    _reconcile(controlplane, targets, logged)
            finally:
                agent.stop()
        finally:
            controlplane.stop()
    return runs


def _through(
    gateway: tuple[ControlPlane, Agent],
    mode: str,
    base: Path,
    duration: float,
    connections: int,
    threads: int,
) -> Run:
    controlplane, agent = gateway
    connect = Connect.create(controlplane, f"web-{mode}", base)
    connect.start_and_wait()
    processes = {"controlplane": controlplane.proc, "agent": agent.proc, "connect": connect.proc}
    pids = {name: proc.pid for name, proc in processes.items() if proc is not None}
    try:
        url = f"http://127.0.0.1:{connect.port}{FILE}"
        before = {name: cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
        started = time.monotonic()
        run = wrk(f"through the gateway ({mode})", url, duration, connections, threads)
        elapsed = time.monotonic() - started
        used = {
            name: ((cpu_seconds(pid) or 0.0) - before[name]) / elapsed for name, pid in pids.items()
        }
        return dataclasses.replace(run, cpu=", ".join(f"{n} {c:.2f}" for n, c in used.items()))
    finally:
        connect.stop()


def _reconcile(controlplane: ControlPlane, targets: HttpTargets, logged_before: int) -> None:
    """Every request nginx logged in this run has its http.request in the trail."""
    reached = [line for line in targets.log_lines()[logged_before:] if line.uri == FILE]
    export = gatehouse(["audit", "export", "--types", "http.request"], env=controlplane.cli_env)
    recorded = [json.loads(line) for line in export.stdout.splitlines() if line]
    paths = sum(1 for e in recorded if e["request"]["path"] == FILE)
    if paths < len(reached):
        raise SystemExit(f"{len(reached)} requests reached nginx but {paths} were recorded")


def _write_file(targets: HttpTargets) -> None:
    document = {"items": [{"id": i, "name": f"item {i}"} for i in range(20)]}
    (targets.www / "static" / "bench.json").write_text(json.dumps(document))


def report(runs: list[Run]) -> str:
    direct = runs[0].rps
    lines = [
        "| run | requests | requests/s | ratio to direct | p50 ms | p99 ms | errors "
        "| CPU (cores) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        ratio = run.rps / direct if direct else float("nan")
        lines.append(
            f"| {run.name} | {run.requests:,} | {run.rps:,.0f} | {ratio:.3f} | "
            f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.errors} | {run.cpu} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__)
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=20, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as scratch:
        runs = measure(Path(scratch), args.duration, args.connections, args.threads)
    print(report(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
