"""Real servers shared by every test tier, each started once per run and only when asked for."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from devenv.httpd import HttpTargets, start_http_targets
from devenv.mariadb import MariadbServer, start_mariadb
from devenv.sshd import Sshd, start_sshd

MYSQL_PASSWORD = "s3cret-my-password"
ED25519_PASSWORD = "s3cret-ed-password"


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A throwaway OpenSSH server on loopback: log in as `Sshd.user` with `Sshd.client_key`,
    and pin `Sshd.host_key_line` (or `known_hosts_line`)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http_targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpTargets]:
    """httpbin behind nginx (and a TLS nginx, a WebSocket echo), one per test module: a
    module's assertions on nginx's access log see only its own requests."""
    with start_http_targets(tmp_path_factory.mktemp("httpd")) as started:
        yield started


@pytest.fixture(scope="session")
def sshd_unprivileged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """Like `sshd`, but the login is an ordinary account (made when the tests run as root):
    what OpenSSH does for root and for everyone else differs, e.g. in delivering signals."""
    login = "gatehouse-test" if os.geteuid() == 0 else None
    server = start_sshd(tmp_path_factory.mktemp("sshd-user"), login=login)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MariadbServer]:
    """A throwaway MariaDB on loopback with its general query log on: `app` logs in with
    mysql_native_password, `edapp` with client_ed25519; database `app`."""
    server = start_mariadb(
        tmp_path_factory.mktemp("mariadb"),
        users={"app": (MYSQL_PASSWORD, "native"), "edapp": (ED25519_PASSWORD, "ed25519")},
        databases=("app",),
    )
    yield server
    server.stop()


RUN_AS_ACCOUNT = "gatehouse-test"


def require(condition: bool, what: str) -> None:
    """A test that needs root or a tool fails saying so: a skipped test proves nothing in CI,
    and `make test` (as root, with deploy/system-deps.sh) provides everything named here."""
    if not condition:
        pytest.fail(f"{what}; run `make test` as root, which installs it (deploy/system-deps.sh)")


@pytest.fixture(scope="session")
def account() -> pwd.struct_passwd:
    """An ordinary account that `run_as` commands switch to (made when missing)."""
    require(os.geteuid() == 0, "switching accounts needs an agent running as root")
    try:
        return pwd.getpwnam(RUN_AS_ACCOUNT)
    except KeyError:
        command = ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*"]
        subprocess.run([*command, RUN_AS_ACCOUNT], check=True, capture_output=True)
        return pwd.getpwnam(RUN_AS_ACCOUNT)


def require_tool(name: str) -> None:
    require(shutil.which(name) is not None, f"`{name}` is not installed")
