"""`make demo`: a control plane, one enrolled agent, a PostgreSQL, an SSH and an HTTP target
(httpbin behind nginx), all throwaway.

Everything lives in ./demo-data (removed and made anew on each start); Ctrl-C stops all of it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import threading

from devenv.httpd import start_http_targets
from devenv.postgres import start_postgres
from devenv.sshd import start_sshd
from devenv.stack import REPO, ControlPlane, StackError, enroll_agent, gatehouse

# Shell commands run as an unprivileged account when the demo can switch to one (as root);
# an ordinary user's demo can only run them as itself, which exposes the agent's secrets.
RUN_AS = "nobody" if os.geteuid() == 0 else "agent"
DEMO_PASSWORD = "demo-only-password"  # a throwaway cluster's role; the agent resolves it from env
DEMO_API_TOKEN = "demo-only-api-token"  # the bearer token the agent adds to every API request

POLICY = """\
connections:
  - name: pg
    type: postgres
    agent: demo-agent
    audit: strict
    target: {{host: 127.0.0.1, port: {port}, database: app, user: app, sslmode: disable}}
    secret: {{password: env:DEMO_PG_PASSWORD}}
  - name: web
    type: ssh
    agent: demo-agent
    target: {{host: 127.0.0.1, port: {ssh_port}, user: {ssh_user}, known_hosts: '{host_key}'}}
    secret: {{private_key: 'file:{ssh_key}'}}
    guardrails: [no-rm-root]
  - name: ops
    type: shell
    agent: demo-agent
    target: {{run_as: {run_as}, workdir: {workdir}, env: {{GREETING: hello}}, timeout: 60}}
    guardrails: [no-rm-root]
  - name: api
    type: http
    agent: demo-agent
    target: {{url: 'http://127.0.0.1:{http_port}'}}
    secret: {{bearer: env:DEMO_API_TOKEN}}
    guardrails: [read-mostly]
guardrails:
  - name: no-rm-root
    deny_commands: ['rm -rf /', 'rm -rf /*']
  - name: read-mostly
    deny_requests: ['DELETE /**', 'POST /admin/**']
"""


def step(text: str) -> None:
    print(f"==> {text}", file=sys.stderr, flush=True)


def main() -> int:
    base = REPO / "demo-data"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    step("starting a throwaway PostgreSQL cluster")
    pg = start_postgres(base / "postgres", roles={"app": DEMO_PASSWORD}, databases={"app": "app"})
    step("starting a throwaway OpenSSH server")
    sshd = start_sshd(base / "sshd")
    step("starting httpbin behind a throwaway nginx")
    http = start_http_targets(base / "http")
    # The CLI's default address, so that only GATEHOUSE_TOKEN needs exporting.
    controlplane = ControlPlane.create(base / "controlplane", grpc_port=8443, http_port=8080)
    agent = None
    try:
        step("starting the control plane (dev mode: SQLite, loopback, admin token)")
        controlplane.start_and_wait()
        step("creating and enrolling agent demo-agent")
        agent = enroll_agent(
            controlplane,
            "demo-agent",
            base / "agent",
            env={"DEMO_PG_PASSWORD": DEMO_PASSWORD, "DEMO_API_TOKEN": DEMO_API_TOKEN},
        )
        policy = base / "gatehouse.yaml"
        policy.write_text(
            POLICY.format(
                port=pg.port,
                ssh_port=sshd.port,
                ssh_user=sshd.user,
                host_key=sshd.host_key_line,
                ssh_key=sshd.client_key,
                workdir="/tmp",  # somewhere the run_as account may enter
                run_as=RUN_AS,
                http_port=http.port,
            )
        )
        step(f"applying {policy.relative_to(REPO)}")
        applied = gatehouse(["admin", "apply", "-f", str(policy)], env=controlplane.cli_env)
        if applied.returncode != 0:
            raise StackError(applied.stderr)
        token_file = controlplane.data_dir / "admin.token"
        print(
            f"""
Gatehouse is running. In another terminal:

  export GATEHOUSE_TOKEN=$(cat {token_file})
  alias gatehouse='{REPO / ".venv/bin/gatehouse"}'

  gatehouse exec pg -c 'select 41+1 as answer'
  gatehouse exec pg -c 'select * from pg_stat_activity limit 3' -o json
  gatehouse exec web -- uname -a
  gatehouse exec web -- 'cd / && rm -rf /'       # refused by guardrail no-rm-root (exit 126)
  gatehouse exec ops -- sh -c 'echo $GREETING from $PWD'
  gatehouse exec api -- GET '/get?q=1' -v         # the agent adds the bearer token
  gatehouse exec api -- DELETE /anything/1         # refused by guardrail read-mostly (403)
  gatehouse connect api --port 8081 &              # then: curl http://127.0.0.1:8081/headers
  gatehouse ssh web                               # a recorded terminal; `exit` to leave
  gatehouse sessions list --type ssh
  gatehouse sessions replay <ID> --speed 2
  gatehouse admin agents list
  gatehouse audit export
  gatehouse audit verify

Logs: {controlplane.log_file}, {agent.log_file}
Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        while not stop.wait(1):
            if not controlplane.running or not agent.running:
                step("a process exited; see the logs above")
                return 1
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        step("stopping")
        if agent is not None:
            agent.stop()
        controlplane.stop()
        http.stop()
        sshd.stop()
        pg.stop()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
