"""`pip install .` (not editable) gives a working `gatehouse`: a wheel and an sdist built from
the checkout, the wheel installed into a fresh virtualenv, and from that virtualenv a control
plane (its Alembic migrations applied from the wheel), an agent, and one command through them.

The fresh virtualenv takes its dependencies from the project's own environment (a `.pth` line
naming its site-packages, whose `.pth` files, the editable install among them, Python does not
run), so the test needs no network; that the wheel's declared dependencies keep the control
plane's out of the base install is read from the wheel's own metadata.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devenv.processes import free_port

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SKIP = (".git", ".venv", "build", "dist", "node_modules", "demo-data", "bench", "tests")
CONTROLPLANE_EXTRA = {
    "sqlmodel",
    "alembic",
    "joserfc",
    "psycopg",
    "pglast",
    "sqlglot",
    "google-re2",
    "aiohttp-asgi",
}


# `gatehouse ARGS` with the control plane's package and its extra unimportable.
AGENT_ONLY = """
import sys
from importlib.abc import MetaPathFinder

BLOCKED = {
    "controlplane", "sqlmodel", "sqlalchemy", "alembic", "pglast", "psycopg", "joserfc",
    "aiohttp_asgi",
}

class Block(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is not installed on an agent host", name=name)
        return None

sys.meta_path.insert(0, Block())
sys.argv[0] = "gatehouse"
from cli.main import run
run()
"""


@dataclass
class Installed:
    venv: Path
    wheel: Path
    sdist: Path

    @property
    def gatehouse(self) -> Path:
        return self.venv / "bin" / "gatehouse"

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.gatehouse), *args],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.venv,  # not the checkout: nothing may come from its folders
            check=False,
        )

    def python(self, code: str) -> str:
        done = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.venv,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    # A copy: setuptools reuses a build/ folder, which could carry files the tree no longer has.
    shutil.copytree(
        ROOT, source, ignore=shutil.ignore_patterns(*SKIP, "__pycache__", "*.egg-info", ".*")
    )
    dist = base / "dist"
    # The sdist first, then the wheel built from the unpacked sdist: the sdist must be complete.
    built = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(source)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("gatehouse-*.whl")
    (sdist,) = dist.glob("gatehouse-*.tar.gz")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    target = Path(
        subprocess.check_output(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_paths()['purelib'])",
            ],
            text=True,
        ).strip()
    )
    (target / "gatehouse-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--quiet",
            str(wheel),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr
    return Installed(venv, wheel, sdist)


def test_the_wheel_carries_the_migrations_and_declares_the_extra(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        (metadata,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        requires = [
            line.removeprefix("Requires-Dist: ")
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist: ")
        ]
    migrations = {n for n in names if n.startswith("gatehouse_migrations/")}
    assert "gatehouse_migrations/env.py" in migrations
    assert "gatehouse_migrations/script.py.mako" in migrations
    revisions = sorted(p.name for p in (ROOT / "alembic" / "versions").glob("*.py"))
    assert sorted(n.rsplit("/", 1)[1] for n in migrations if "/versions/" in n) == revisions
    assert any(n.startswith("trail/") for n in names)
    assert not any(n.startswith(("tests/", "alembic/")) for n in names)

    def name(requirement: str) -> str:
        return re.split(r"[;\[<>=!~ ]", requirement, maxsplit=1)[0]

    base = {name(r) for r in requires if "extra ==" not in r}
    extra = {name(r) for r in requires if 'extra == "controlplane"' in r}
    assert base & CONTROLPLANE_EXTRA == set()
    assert extra == CONTROLPLANE_EXTRA
    with tarfile.open(installed.sdist) as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name}
    assert "alembic/env.py" in members
    assert "pyproject.toml" in members


def test_the_installed_command_runs_from_the_venv(installed: Installed) -> None:
    from gatehouse import __version__

    done = installed.run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"gatehouse {__version__}\n"
    # Every first-party module comes from the fresh venv, none from the checkout.
    where = json.loads(
        installed.python(
            "import json, cli, agent, controlplane, trail, gatehouse\n"
            "from controlplane.store.migrations import migrations_dir\n"
            "print(json.dumps([m.__file__ for m in (cli, agent, controlplane, trail, gatehouse)]"
            " + [str(migrations_dir())]))"
        )
    )
    for path in where:
        assert Path(path).is_relative_to(installed.venv), path


@pytest.fixture
def controlplane(installed: Installed, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    data = tmp_path / "cp"
    grpc_port, http_port = free_port(), free_port()
    log = (tmp_path / "controlplane.log").open("wb")
    proc = subprocess.Popen(
        [
            str(installed.gatehouse),
            "controlplane",
            "serve",
            "--dev",
            "--data-dir",
            str(data),
            "--grpc-listen",
            f"127.0.0.1:{grpc_port}",
            "--http-listen",
            f"127.0.0.1:{http_port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=installed.venv,
    )
    try:
        deadline = time.monotonic() + 30
        while not (data / "admin.token").exists():
            assert proc.poll() is None, (tmp_path / "controlplane.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "controlplane.log").read_text()
            time.sleep(0.1)
        token = (data / "admin.token").read_text().strip()
        yield (
            f"127.0.0.1:{grpc_port}",
            {
                "GATEHOUSE_CONTROLPLANE": f"127.0.0.1:{grpc_port}",
                "GATEHOUSE_TOKEN": token,
            },
        )
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_a_control_plane_and_an_agent_from_the_installed_wheel(
    installed: Installed, controlplane: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = controlplane
    created = installed.run("admin", "agents", "create", "vpc-wheel", env=env)
    assert created.returncode == 0, created.stderr
    agent_log = (tmp_path / "agent.log").open("wb")
    # The agent runs as an agent host would have it: the control plane and its extra cannot
    # be imported (an import of either fails the agent, and so the command below).
    agent = subprocess.Popen(
        [
            str(installed.venv / "bin" / "python"),
            "-c",
            AGENT_ONLY,
            "agent",
            "run",
            "--controlplane",
            address,
            "--token",
            created.stdout.strip(),
            "--name",
            "vpc-wheel",
            "--insecure",
            "--data-dir",
            str(tmp_path / "agent"),
        ],
        stdout=agent_log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=installed.venv,
    )
    try:
        deadline = time.monotonic() + 30
        status = None
        while status != "online":
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            listed = installed.run("admin", "agents", "list", "-o", "json", env=env)
            if listed.returncode == 0:
                status = {a["name"]: a["status"] for a in json.loads(listed.stdout)}.get(
                    "vpc-wheel"
                )
            time.sleep(0.2)
        policy = tmp_path / "policy.yaml"
        policy.write_text(
            "connections:\n"
            "  - name: ops\n"
            "    type: shell\n"
            "    agent: vpc-wheel\n"
            f"    target: {{run_as: agent, workdir: {tmp_path}, timeout: 30}}\n"
        )
        applied = installed.run("admin", "apply", "-f", str(policy), env=env)
        assert applied.returncode == 0, applied.stderr
        ran = installed.run("exec", "ops", "--", "sh", "-c", "echo from-the-wheel > proof", env=env)
        assert ran.returncode == 0, ran.stderr
        assert (tmp_path / "proof").read_text() == "from-the-wheel\n"
        verified = installed.run("audit", "verify", "-o", "json", env=env)
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert json.loads(verified.stdout)["ok"] is True
        # A SIEM host (no control plane, no extra) verifies an export offline, signatures too.
        signed = installed.run("audit", "checkpoint", env=env)
        assert signed.returncode == 0, signed.stderr
        key = tmp_path / "audit.pub"
        key.write_text(installed.run("audit", "public-key", env=env).stdout)
        export = tmp_path / "trail.ndjson"
        export.write_text(installed.run("audit", "export", env=env).stdout)
        offline = subprocess.run(
            [
                str(installed.venv / "bin" / "python"),
                "-c",
                AGENT_ONLY,
                "audit",
                "verify",
                "--file",
                str(export),
                "--key",
                str(key),
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=installed.venv,
            check=False,
        )
        assert offline.returncode == 0, offline.stdout + offline.stderr
        report = json.loads(offline.stdout)
        assert report["ok"] is True
        assert report["checkpoints"] >= 1
        # The same verifier refuses the export once one event in it is altered.
        lines = export.read_text().splitlines()
        lines[1] = lines[1].replace('"seq":2', '"seq":2,"x":1', 1)
        export.write_text("\n".join(lines) + "\n")
        altered = subprocess.run(
            [
                str(installed.venv / "bin" / "python"),
                "-c",
                AGENT_ONLY,
                "audit",
                "verify",
                "--file",
                str(export),
                "--key",
                str(key),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=installed.venv,
            check=False,
        )
        assert altered.returncode == 1, altered.stdout + altered.stderr
        assert "seq 2" in altered.stdout + altered.stderr
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        agent_log.close()
