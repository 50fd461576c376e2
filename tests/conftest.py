"""Real servers shared by every test tier, each started once per run and only when asked for."""

from __future__ import annotations

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
