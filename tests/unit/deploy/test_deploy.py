"""deploy/: the systemd units pass `systemd-analyze verify`, the agent installer writes what
the unit reads, and the Kubernetes manifests carry what the agent needs to run and be probed.
Every GATEHOUSE_* name they set is one the settings objects read (a renamed key fails here)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.settings import AgentSettings
from cli.config import env_name
from controlplane.settings import Settings
from tests.conftest import require_tool

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy"
UNITS = DEPLOY / "systemd"
GATEHOUSE_BIN = Path(sys.executable).parent / "gatehouse"


def env_names(cls: type[Any]) -> set[str]:
    names = {"GATEHOUSE_CONFIG"}
    for field in dataclasses.fields(cls):
        names.add(env_name(field))
        if field.metadata.get("secret"):
            names.add(env_name(field) + "_FILE")
    return names


def unit_lines(path: Path) -> list[str]:
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def copy_units(tmp_path: Path) -> Path:
    """The units with ExecStart pointing at this venv's `gatehouse` (verify wants it there)."""
    target = tmp_path / "units"
    shutil.copytree(UNITS, target)
    for unit in target.glob("*.service"):
        unit.write_text(
            unit.read_text().replace("/opt/gatehouse/bin/gatehouse", str(GATEHOUSE_BIN))
        )
    return target


def verify(*units: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", *map(str, units)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


needs_systemd = pytest.mark.usefixtures("systemd_analyze")


@pytest.fixture
def systemd_analyze() -> None:
    require_tool("systemd-analyze")


@needs_systemd
def test_units_verify_without_a_warning(tmp_path: Path) -> None:
    units = copy_units(tmp_path)
    result = verify(units / "gatehouse-controlplane.service", units / "gatehouse-agent.service")
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


@needs_systemd
def test_the_database_url_drop_in_verifies(tmp_path: Path) -> None:
    units = copy_units(tmp_path)
    result = verify(units / "gatehouse-controlplane.service")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = unit_lines(units / "gatehouse-controlplane.service.d" / "database-url.conf")
    assert "Environment=GATEHOUSE_DATABASE_URL_FILE=%d/database-url" in lines
    assert "GATEHOUSE_DATABASE_URL_FILE" in env_names(Settings)


@needs_systemd
def test_the_run_as_drop_in_verifies_too(tmp_path: Path) -> None:
    units = copy_units(tmp_path)
    drop_in = units / "gatehouse-agent.service.d" / "run-as.conf"
    assert verify(units / "gatehouse-agent.service").stderr == ""
    # The check can fail: a misspelt key in the drop-in is reported.
    drop_in.write_text(drop_in.read_text() + "AmbientCapabilitys=CAP_SETUID\n")
    assert "Unknown key 'AmbientCapabilitys'" in verify(units / "gatehouse-agent.service").stderr


@needs_systemd
@pytest.mark.parametrize(
    ("unit", "drop_in", "threshold"),
    [
        ("gatehouse-controlplane.service", False, 15),  # measured 1.4
        ("gatehouse-agent.service", False, 20),  # measured 1.7
        ("gatehouse-agent.service", True, 25),  # with run-as.conf (uid 0): measured 2.4
    ],
)
def test_exposure_stays_low(tmp_path: Path, unit: str, drop_in: bool, threshold: int) -> None:
    """`systemd-analyze security` scores exposure 0-10 (lower is better); the threshold is
    in tenths. A hardening line dropped from a unit makes this fail."""
    units = copy_units(tmp_path)
    if not drop_in:
        shutil.rmtree(units / f"{unit}.d", ignore_errors=True)
    command = ["systemd-analyze", "security", "--offline=true", f"--threshold={threshold}"]
    result = subprocess.run(
        [*command, str(units / unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


@pytest.mark.parametrize("unit", ["gatehouse-controlplane.service", "gatehouse-agent.service"])
def test_units_hold_the_hardening_the_issue_asks_for(unit: str) -> None:
    lines = unit_lines(UNITS / unit)
    for required in (
        "DynamicUser=yes",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "Restart=on-failure",
        "CapabilityBoundingSet=",
        "UMask=0077",
    ):
        assert required in lines, required
    assert any(line.startswith("StateDirectory=gatehouse") for line in lines)
    assert any(line.startswith("EnvironmentFile=-/etc/gatehouse/") for line in lines)
    # Every variable a unit sets is one the process reads.
    known = env_names(Settings if "controlplane" in unit else AgentSettings)
    for line in lines:
        if line.startswith("Environment="):
            name = line.removeprefix("Environment=").split("=", 1)[0]
            assert name in known, name


def test_run_as_drop_in_grants_setuid_and_setgid_only() -> None:
    lines = unit_lines(UNITS / "gatehouse-agent.service.d" / "run-as.conf")
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in lines
    # No ambient capability: they would survive the switch to a non-root account and reach
    # every command (tests/e2e/test_run_as_capabilities.py shows the commands get none).
    assert "AmbientCapabilities=" in lines


def install_agent(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(DEPLOY / "install-agent.sh"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": os.environ.get("PATH", "/usr/bin:/bin")},
    )


def test_install_agent_writes_settings_token_and_unit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    token = tmp_path / "join.token"
    token.write_text("ghj_secret-join-token\n")
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    result = install_agent(
        tmp_path,
        *("--root", str(root), "--no-venv", "--prefix", "/srv/gh"),
        *("--controlplane", "gw.example.com:8443", "--name", "vpc-1"),
        *("--token-file", str(token), "--ca-file", str(ca), "--run-as"),
        *("--http-listen", "127.0.0.1:9100"),
    )
    assert result.returncode == 0, result.stderr
    etc = root / "etc" / "gatehouse"
    saved = etc / "agent.token"
    assert saved.read_text() == "ghj_secret-join-token"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    env = dict(
        line.split("=", 1) for line in (etc / "agent.env").read_text().splitlines() if "=" in line
    )
    assert env == {
        "GATEHOUSE_CONTROLPLANE": "gw.example.com:8443",
        "GATEHOUSE_AGENT_NAME": "vpc-1",
        "GATEHOUSE_CA_FILE": "/etc/gatehouse/ca.pem",
        "GATEHOUSE_AGENT_HTTP_LISTEN": "127.0.0.1:9100",
    }
    assert set(env) <= env_names(AgentSettings)
    assert "ghj_" not in (etc / "agent.env").read_text()
    unit = root / "etc" / "systemd" / "system" / "gatehouse-agent.service"
    assert "ExecStart=/srv/gh/bin/gatehouse agent run" in unit.read_text()
    assert (unit.parent / "gatehouse-agent.service.d" / "run-as.conf").exists()
    # Again without --run-as: the drop-in goes.
    again = install_agent(
        tmp_path,
        *("--root", str(root), "--no-venv"),
        *("--controlplane", "gw.example.com:8443", "--name", "vpc-1", "--token-file", str(token)),
    )
    assert again.returncode == 0, again.stderr
    assert not (unit.parent / "gatehouse-agent.service.d" / "run-as.conf").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--controlplane HOST:PORT is required"),
        (("--controlplane", "gw:1", "--token-file", "/dev/null"), "--name is required"),
        (("--controlplane", "gw:1", "--name", "a b", "--token-file", "/dev/null"), "--name"),
        (("--controlplane", "gw:1;reboot", "--name", "a", "--token-file", "/dev/null"), "HOST"),
    ],
)
def test_install_agent_refuses_incomplete_or_odd_input(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    result = install_agent(tmp_path, "--root", str(tmp_path / "r"), "--no-venv", *args)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "r" / "etc").exists()


def test_install_agent_is_shellcheck_clean() -> None:
    require_tool("shellcheck")
    result = subprocess.run(
        ["shellcheck", str(DEPLOY / "install-agent.sh")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def manifests() -> dict[str, dict[str, Any]]:
    documents: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                documents[document["kind"]] = document
    return documents


def test_kubernetes_agent_deployment_is_complete() -> None:
    docs = manifests()
    assert {"Namespace", "Secret", "Deployment", "Kustomization"} <= docs.keys()
    deployment = docs["Deployment"]
    assert deployment["apiVersion"] == "apps/v1"
    spec = deployment["spec"]
    assert spec["replicas"] == 1  # one process per agent name
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()

    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= env_names(AgentSettings), set(env) - env_names(AgentSettings)
    assert "GATEHOUSE_AGENT_TOKEN" not in env  # the token comes from the Secret, as a file
    # The liveness probe asks the agent's own listener, on the port the agent listens on.
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    listen_port = int(env["GATEHOUSE_AGENT_HTTP_LISTEN"].rsplit(":", 1)[1])
    assert ports[probe["port"]] == listen_port
    # The token file is the Secret's key, mounted read-only.
    secret = docs["Secret"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    token_volume = next(v for v in volumes.values() if "secret" in v)
    assert token_volume["secret"]["secretName"] == secret["metadata"]["name"]
    mount = mounts[token_volume["name"]]
    assert mount["readOnly"] is True
    (key,) = (secret.get("stringData") or secret["data"]).keys()
    assert env["GATEHOUSE_AGENT_TOKEN_FILE"] == f"{mount['mountPath']}/{key}"
    # The state directory is writable although the root filesystem is not.
    assert any(m["mountPath"] == env["GATEHOUSE_DATA_DIR"] for m in mounts.values())
    listed = set(docs["Kustomization"]["resources"])
    on_disk = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


def test_kubectl_kustomize_builds_the_set() -> None:
    require_tool("kubectl")
    result = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kubernetes")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    kinds = re.findall(r"^kind: (\w+)$", result.stdout, re.MULTILINE)
    assert sorted(kinds) == ["Deployment", "Namespace", "Secret"]
