"""A second control-plane replica on one SQLite file is refused.

Several replicas on one PostgreSQL store (sessions through either replica on either agent
instance, applies and revocations fanning out, kill -9 and rolling restarts under load) are
tested across network namespaces, over TLS and behind HAProxy, in
tests/e2e/test_replicas_network.py; the order ack and reroute in
tests/unit/controlplane/test_replica_orders.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devenv.stack import ControlPlane, gatehouse

pytestmark = pytest.mark.e2e


def test_a_second_replica_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    first = ControlPlane.create(tmp_path / "data")
    first.start_and_wait()
    try:
        second = gatehouse(
            [
                "controlplane",
                "serve",
                "--dev",
                "--data-dir",
                str(tmp_path / "data"),
                "--grpc-listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
            timeout=30,
        )
        assert second.returncode != 0
        assert "SQLite holds one replica" in second.stderr
        assert first.running and first.health() is not None
    finally:
        first.stop()
