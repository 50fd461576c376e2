"""`python -m bench.mysql`: read-only MySQL throughput through the gateway against direct.

A throwaway MariaDB (devenv/mariadb.py) with a 1,000-row table, a `--dev` control plane, one
agent and `gatehouse connect` on a loopback port; then `mysqlslap` runs the same point
`SELECT` with 1, 8 and 32 clients straight to the server and through the listener (strict
audit: every statement is a committed `db.query` and a `db.result`). Prints queries per second
for each and the ratio; nothing is written. A benchmark, not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from devenv.mariadb import MariadbServer, start_mariadb
from devenv.stack import Connect, ControlPlane, enroll_agent, gatehouse

PASSWORD = "bench-password"
QUERY = "SELECT v FROM kv WHERE id = 500"
POLICY = """\
connections:
  - name: bench
    type: mysql
    agent: bench-agent
    target: {{host: 127.0.0.1, port: {port}, database: app, user: bench, tls: disable}}
    secret: {{password: env:BENCH_MYSQL_PASSWORD}}
"""
_SECONDS = re.compile(r"Average number of seconds to run all queries: ([0-9.]+)")


def slap(port: int, clients: int, queries: int) -> float:
    """Queries per second of mysqlslap's point SELECT against 127.0.0.1:`port`."""
    done = subprocess.run(
        [
            "mysqlslap",
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            str(port),
            "-ubench",
            f"-p{PASSWORD}",
            "--create-schema=app",
            "--no-drop",
            f"--query={QUERY}",
            f"--concurrency={clients}",
            f"--number-of-queries={queries}",
            "--iterations=1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    found = _SECONDS.search(done.stdout)
    if found is None:
        raise RuntimeError(f"mysqlslap printed no time: {done.stdout}{done.stderr}")
    return queries / max(float(found[1]), 1e-6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=4000, help="queries per run")
    args = parser.parse_args()
    if shutil.which("mysqlslap") is None:
        raise SystemExit("mysqlslap is missing: apt-get install mariadb-client")
    base = Path(tempfile.mkdtemp(prefix="gatehouse-bench-mysql-"))
    server: MariadbServer = start_mariadb(
        base / "mariadb", users={"bench": (PASSWORD, "native")}, databases=("app",)
    )
    controlplane = ControlPlane.create(base / "controlplane")
    agent = None
    try:
        server.admin(
            "SET GLOBAL general_log = 0; CREATE TABLE app.kv (id INT PRIMARY KEY, v VARCHAR(40));"
            " INSERT INTO app.kv SELECT seq, CONCAT('v', seq) FROM app.seq_1_to_1000"
        )
        controlplane.start_and_wait()
        agent = enroll_agent(
            controlplane, "bench-agent", base / "agent", env={"BENCH_MYSQL_PASSWORD": PASSWORD}
        )
        policy = base / "policy.yaml"
        policy.write_text(POLICY.format(port=server.port))
        applied = gatehouse(["admin", "apply", "-f", str(policy)], env=controlplane.cli_env)
        if applied.returncode != 0:
            raise SystemExit(applied.stderr)
        listener = Connect.create(controlplane, "bench", base)
        listener.start_and_wait()
        try:
            print(f"{'clients':>7} {'direct q/s':>11} {'gateway q/s':>12} {'ratio':>6}")
            for clients in (1, 8, 32):
                direct = slap(server.port, clients, args.queries)
                started = time.monotonic()
                through = slap(listener.port, clients, args.queries)
                wall = time.monotonic() - started
                print(
                    f"{clients:>7} {direct:>11.0f} {through:>12.0f} {through / direct:>6.2f}"
                    f"   ({wall:.1f} s through the gateway)"
                )
        finally:
            listener.stop()
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
