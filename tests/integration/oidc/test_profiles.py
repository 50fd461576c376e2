"""Profiles for several control planes: log in to two, then use each by profile or address.

Two real control planes (``controlplane serve --dev`` on two ports) trust the same real
OpenID Provider; each has its own connection, so what ``connections list`` shows says which
control plane answered. The CLI runs as a person would: a fresh configuration directory, no
GATEHOUSE_TOKEN or GATEHOUSE_CONTROLPLANE, only what ``gatehouse login`` remembered.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.oidc import AUDIENCE, OidcProvider
from devenv.processes import free_port, tail
from devenv.stack import GATEHOUSE, REPO, ControlPlane, Process, gatehouse

POLICY = """\
connections:
  - name: {name}
    type: postgres
    agent: vpc-1
    target: {{host: 127.0.0.1, port: 5432, database: app, user: app, sslmode: disable}}
    secret: {{password: env:PG_PASSWORD}}
access:
  - name: dba
    groups: [dba]
    connections: [{name}]
    modes: [exec]
"""


@pytest.fixture(scope="module")
def planes(
    tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider
) -> Iterator[tuple[ControlPlane, ControlPlane]]:
    started: list[ControlPlane] = []
    try:
        for name in ("east", "west"):
            base = tmp_path_factory.mktemp(name)
            plane = ControlPlane.create(
                base / "cp",
                env={"GATEHOUSE_OIDC_ISSUER": oidc.issuer, "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE},
            )
            plane.start_and_wait()
            started.append(plane)
            (base / "policy.yaml").write_text(POLICY.format(name=f"pg-{name}"))
            applied = gatehouse(
                ["admin", "apply", "-f", str(base / "policy.yaml")], env=plane.cli_env
            )
            assert applied.returncode == 0, applied.stderr
        yield started[0], started[1]
    finally:
        for plane in started:
            plane.stop()


def _person(config: Path) -> dict[str, str]:
    """A shell with nothing set but where the CLI keeps its files."""
    return {
        "XDG_CONFIG_HOME": str(config),
        "GATEHOUSE_CONTROLPLANE": "",
        "GATEHOUSE_TOKEN": "",
        "GATEHOUSE_CA_FILE": "",
        "GATEHOUSE_PROFILE": "",
        "GATEHOUSE_OIDC_ISSUER": "",
    }


def _login(oidc: OidcProvider, env: dict[str, str], user: str, *args: str) -> str:
    """`gatehouse login ARGS`, the person confirming the code shown; what it printed."""
    process = subprocess.Popen(
        [*GATEHOUSE, "login", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    shown = []
    for line in process.stderr:
        shown.append(line)
        if "/device?user_code=" in line:
            oidc.approve_device(line.strip(), user)
            break
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, "".join(shown) + err
    return out


def _connections(env: dict[str, str], *args: str) -> list[str]:
    listed = gatehouse(["connections", "list", "-o", "json", *args], env=env)
    assert listed.returncode == 0, listed.stderr
    return [c["name"] for c in json.loads(listed.stdout)]


def _whoami(env: dict[str, str], *args: str) -> dict[str, object]:
    shown = gatehouse(["whoami", "-o", "json", *args], env=env)
    assert shown.returncode == 0, shown.stderr
    who: dict[str, object] = json.loads(shown.stdout)
    return who


def test_two_control_planes_by_profile(
    tmp_path: Path, oidc: OidcProvider, planes: tuple[ControlPlane, ControlPlane]
) -> None:
    east, west = planes
    env = _person(tmp_path / "config")
    config = tmp_path / "config" / "gatehouse"

    # Nothing remembered yet: the default address has no control plane.
    refused = gatehouse(["connections", "list"], env=env)
    assert refused.returncode != 0 and "gatehouse login" in refused.stderr

    out = _login(oidc, env, "alice", "--controlplane", east.address, "--profile", "east")
    assert "Logged in as alice" in out and f"Profile east: control plane {east.address}" in out
    # No --profile: the profile is named after the address.
    out = _login(oidc, env, "alice", "--controlplane", west.address)
    west_profile = f"127.0.0.1-{west.grpc_port}"
    assert f"Profile {west_profile}: control plane {west.address}" in out

    # The last login is the default; a profile is picked by name or by its address.
    assert _connections(env) == ["pg-west"]
    assert _connections({**env, "GATEHOUSE_PROFILE": "east"}) == ["pg-east"]
    assert _connections(env, "--controlplane", east.address) == ["pg-east"]
    assert _connections({**env, "GATEHOUSE_CONTROLPLANE": east.address}) == ["pg-east"]

    who = _whoami(env)
    assert (who["profile"], who["controlplane"], who["subject"]) == (
        west_profile,
        west.address,
        "alice",
    )
    who = _whoami(env, "--profile", "east")
    assert (who["profile"], who["controlplane"]) == ("east", east.address)

    # Each profile keeps its own login, and every file is the person's alone.
    document = tomllib.loads((config / "profiles.toml").read_text())
    assert document["current"] == west_profile
    assert document["profiles"]["east"]["controlplane"] == east.address
    assert document["profiles"][west_profile]["issuer"] == oidc.issuer
    for name in ("profiles.toml", "tokens-east.json", f"tokens-{west_profile}.json"):
        assert stat.S_IMODE((config / name).stat().st_mode) == 0o600, name

    # Logging out of one leaves the other usable.
    logged_out = gatehouse(["logout", "--profile", "east"], env=env)
    assert logged_out.returncode == 0 and "Logged out of profile east" in logged_out.stdout
    assert not (config / "tokens-east.json").exists()
    gone = gatehouse(["connections", "list"], env={**env, "GATEHOUSE_PROFILE": "east"})
    assert gone.returncode == 2 and "no profile 'east'" in gone.stderr
    assert _connections(env) == ["pg-west"]


@pytest.fixture
def tls_plane(tmp_path: Path, oidc: OidcProvider) -> Iterator[tuple[str, Path]]:
    """A control plane without --dev (TLS, its own CA in D/ca.pem); its address and data dir."""
    data, grpc_port = tmp_path / "tls-cp", free_port()
    plane = Process(
        args=[
            "controlplane",
            "serve",
            "--data-dir",
            str(data),
            "--grpc-listen",
            f"127.0.0.1:{grpc_port}",
            "--http-listen",
            f"127.0.0.1:{free_port()}",
        ],
        log_file=tmp_path / "tls-cp.log",
        env={"GATEHOUSE_OIDC_ISSUER": oidc.issuer, "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE},
    )
    plane.start()
    try:
        deadline = time.monotonic() + 30
        while not ((data / "admin.token").exists() and (data / "ca.pem").exists()):
            assert plane.running, tail(plane.log_file)
            assert time.monotonic() < deadline, tail(plane.log_file)
            time.sleep(0.1)
        while True:
            try:
                socket.create_connection(("127.0.0.1", grpc_port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, tail(plane.log_file)
                time.sleep(0.1)
        yield f"127.0.0.1:{grpc_port}", data
    finally:
        plane.stop()


def test_the_profile_carries_the_ca_to_a_tls_control_plane(
    tmp_path: Path, oidc: OidcProvider, tls_plane: tuple[str, Path]
) -> None:
    address, data = tls_plane
    admin = {
        "GATEHOUSE_CONTROLPLANE": address,
        "GATEHOUSE_CA_FILE": str(data / "ca.pem"),
        "GATEHOUSE_TOKEN": (data / "admin.token").read_text().strip(),
    }
    (tmp_path / "policy.yaml").write_text(POLICY.format(name="pg-tls"))
    applied = gatehouse(["admin", "apply", "-f", str(tmp_path / "policy.yaml")], env=admin)
    assert applied.returncode == 0, applied.stderr

    env = _person(tmp_path / "config")
    # Without a CA the CLI speaks plaintext to loopback, which a TLS control plane refuses.
    untrusted = gatehouse(["connections", "list"], env={**env, **admin, "GATEHOUSE_CA_FILE": ""})
    assert untrusted.returncode == 1
    assert "a production control plane serves TLS" in untrusted.stderr
    ca = tmp_path / "downloaded-ca.pem"
    ca.write_bytes((data / "ca.pem").read_bytes())
    out = _login(
        oidc, env, "alice", "--controlplane", address, "--ca-file", str(ca), "--profile", "prod"
    )
    assert "Profile prod" in out
    ca.unlink()  # the profile keeps its own copy

    # No address, no CA, no token in the environment: the profile has all three.
    assert _connections(env) == ["pg-tls"]
    who = _whoami(env)
    assert (who["profile"], who["controlplane"], who["subject"]) == ("prod", address, "alice")
    kept = tmp_path / "config" / "gatehouse" / "ca" / "prod.pem"
    assert kept.read_bytes() == (data / "ca.pem").read_bytes()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
