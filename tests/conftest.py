"""Real servers shared by every test tier, each started once per run and only when asked for."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devenv.sshd import Sshd, start_sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A throwaway OpenSSH server on loopback: log in as `Sshd.user` with `Sshd.client_key`,
    and pin `Sshd.host_key_line` (or `known_hosts_line`)."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sshd_unprivileged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """Like `sshd`, but the login is an ordinary account (made when the tests run as root):
    what OpenSSH does for root and for everyone else differs, e.g. in delivering signals."""
    login = "gatehouse-test" if os.geteuid() == 0 else None
    server = start_sshd(tmp_path_factory.mktemp("sshd-user"), login=login)
    yield server
    server.stop()
