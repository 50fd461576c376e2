"""Start real Gatehouse processes (control plane, agents) for the demo, tests and benchmarks.

Everything runs as child processes of the real `gatehouse` command, exactly as a user would
start them; nothing is imported in-process, so a test sees what a user sees.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devenv.processes import free_port, tail

GATEHOUSE = [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parents[1]


class StackError(Exception):
    """A process did not start; the message carries the tail of its log."""


def gatehouse(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
    input: str | None = None,
    wrap: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run one `gatehouse` command to completion and capture what it printed; `wrap` runs it
    under another command (e.g. `ip netns exec NS`)."""
    return subprocess.run(
        [*wrap, *GATEHOUSE, *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
        cwd=REPO,
        check=False,
    )


@contextlib.contextmanager
def gatehouse_running(
    args: Sequence[str], *, env: Mapping[str, str], wrap: Sequence[str] = ()
) -> Iterator[subprocess.Popen[str]]:
    """A `gatehouse` command left running (output captured); killed if it still runs after."""
    command = subprocess.Popen(
        [*wrap, *GATEHOUSE, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        yield command
    finally:
        if command.poll() is None:
            command.kill()
            command.communicate()


def spawn(args: Sequence[str], *, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    """Start one `gatehouse` command and return at once, its output piped: for a test that acts
    while it runs (revokes its token, kills its agent) and then reads how it ended."""
    return subprocess.Popen(
        [*GATEHOUSE, *args],
        env={**os.environ, **(env or {})},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@dataclass
class Process:
    """A long-running child with its output in a log file."""

    args: list[str]
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    wrap: list[str] = field(default_factory=list)  # e.g. ["ip", "netns", "exec", "cp"]

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.wrap, *GATEHOUSE, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                cwd=REPO,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL if it does not go; idempotent."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@dataclass
class ControlPlane(Process):
    data_dir: Path = Path()
    grpc_port: int = 0
    http_port: int = 0
    tls: bool = False  # production mode: TLS on both listeners, clients trust DATA_DIR/ca.pem
    host: str = "127.0.0.1"
    pg_port: int = 0  # --pg-listen's port; 0: not listening for PostgreSQL clients
    mysql_port: int = 0  # --mysql-listen's port; 0: not listening for MySQL clients

    @classmethod
    def create(
        cls,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        grpc_port: int | None = None,
        http_port: int | None = None,
        tls: bool = False,
        host: str = "127.0.0.1",
        extra: Sequence[str] = (),
        pg_listen: bool = False,
        mysql_listen: bool = False,
    ) -> ControlPlane:
        grpc_port, http_port = grpc_port or free_port(), http_port or free_port()
        pg_port = free_port() if pg_listen else 0
        mysql_port = free_port() if mysql_listen else 0
        args = [
            "controlplane",
            "serve",
            *([] if tls else ["--dev"]),
            "--data-dir",
            str(data_dir),
            "--grpc-listen",
            f"{host}:{grpc_port}",
            "--http-listen",
            f"{host}:{http_port}",
            *(["--pg-listen", f"{host}:{pg_port}"] if pg_port else []),
            *(["--mysql-listen", f"{host}:{mysql_port}"] if mysql_port else []),
            *extra,
        ]
        return cls(
            args=args,
            log_file=data_dir / "controlplane.log",
            env=dict(env or {}),
            data_dir=data_dir,
            grpc_port=grpc_port,
            http_port=http_port,
            tls=tls,
            host=host,
            pg_port=pg_port,
            mysql_port=mysql_port,
        )

    @property
    def address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def ca_file(self) -> Path:
        return self.data_dir / "ca.pem"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def cli_env(self) -> dict[str, str]:
        """What a CLI user exports to talk to this control plane as its admin."""
        env = {"GATEHOUSE_CONTROLPLANE": self.address, "GATEHOUSE_TOKEN": self.token}
        if self.tls:
            env["GATEHOUSE_CA_FILE"] = str(self.ca_file)
        return env

    def health(self) -> dict[str, object] | None:
        import json
        import ssl

        scheme, context = "http", None
        if self.tls:
            if not self.ca_file.exists():
                return None
            scheme, context = "https", ssl.create_default_context(cafile=self.ca_file)
        url = f"{scheme}://{self.host}:{self.http_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as response:
                document = json.loads(response.read())
                return document if isinstance(document, dict) else None
        except OSError:
            return None

    def start_and_wait(self, timeout: float = 30) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise StackError(f"the control plane exited:\n{tail(self.log_file)}")
            if self.health() is not None and (self.data_dir / "admin.token").exists():
                return
            time.sleep(0.1)
        self.stop()
        raise StackError(f"the control plane did not become ready:\n{tail(self.log_file)}")

    def wait_agent(
        self, name: str, status: str = "online", timeout: float = 30, *, instances: int = 1
    ) -> list[dict[str, object]]:
        """Wait until `admin agents list` shows `instances` instances of the agent with that
        status (for `online`, at least that many); returns the agent's lines."""
        import json

        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            result = gatehouse(["admin", "agents", "list", "-o", "json"], env=self.cli_env)
            if result.returncode == 0:
                lines = [a for a in json.loads(result.stdout) if a["name"] == name]
                last = str([(a["instance"], a["status"]) for a in lines])
                matching = [a for a in lines if a["status"] == status]
                if len(matching) >= instances and (
                    status == "online" or len(matching) == len(lines)
                ):
                    return lines
            time.sleep(0.2)
        raise StackError(f"agent {name} is not {status} (instances: {last})")


@dataclass
class Agent(Process):
    name: str = ""

    @classmethod
    def create(
        cls,
        controlplane: ControlPlane,
        name: str,
        token: str,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        wrap: Sequence[str] = (),
    ) -> Agent:
        trust = ["--ca-file", str(controlplane.ca_file)] if controlplane.tls else ["--insecure"]
        args = [
            "agent",
            "run",
            "--controlplane",
            controlplane.address,
            "--token",
            token,
            "--name",
            name,
            *trust,
            "--data-dir",
            str(data_dir),
        ]
        return cls(
            args=args,
            log_file=data_dir / f"agent-{name}.log",
            env=dict(env or {}),
            name=name,
            wrap=list(wrap),
        )


def enroll_agent(
    controlplane: ControlPlane,
    name: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
) -> Agent:
    """Create the agent on the control plane, start it with its join token, wait until online."""
    created = gatehouse(["admin", "agents", "create", name], env=controlplane.cli_env)
    if created.returncode != 0:
        raise StackError(f"agents create failed: {created.stderr}")
    agent = Agent.create(controlplane, name, created.stdout.strip(), data_dir, env=env)
    agent.start()
    try:
        controlplane.wait_agent(name)
    except StackError:
        agent.stop()
        raise StackError(f"agent {name} did not come online:\n{tail(agent.log_file)}") from None
    except BaseException:
        agent.stop()  # whatever went wrong, never leave an agent running behind the caller
        raise
    return agent


@dataclass
class Connect(Process):
    """`gatehouse connect NAME --port P`: the local listener native clients talk to."""

    port: int = 0

    @classmethod
    def create(cls, controlplane: ControlPlane, connection: str, log_dir: Path) -> Connect:
        port = free_port()
        return cls(
            args=["connect", connection, "--port", str(port)],
            log_file=log_dir / f"connect-{connection}-{port}.log",
            env=controlplane.cli_env,
            port=port,
        )

    def start_and_wait(self, timeout: float = 20) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise StackError(f"gatehouse connect exited:\n{tail(self.log_file)}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise StackError(f"gatehouse connect did not listen:\n{tail(self.log_file)}")
