"""Idle handshakes on every listener, against the real processes: a TCP connection that never
says anything is closed at the deadline by the control plane's gRPC and HTTP listeners and by
`gatehouse connect` (PostgreSQL and ssh), while sessions that did start are unaffected and
reach their targets."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest

from devenv.postgres import PostgresServer
from devenv.processes import free_port
from devenv.sshd import Sshd
from devenv.stack import Connect
from tests.e2e.conftest import Stack, ssh_policy, start_stack

DEADLINE = 1.0


@pytest.fixture
def limited(
    tmp_path: Path, pg: PostgresServer, sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Stack, Connect, Connect, Path]]:
    monkeypatch.setenv("GATEHOUSE_HANDSHAKE_TIMEOUT", str(DEADLINE))
    stack = start_stack(tmp_path, pg)
    applied = stack.apply(ssh_policy(stack, sshd))
    assert applied.returncode == 0, applied.stderr
    listener = Connect.create(stack.controlplane, "pg", tmp_path)
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    ssh_listener = Connect(
        args=["connect", "web-1", "--port", str(port), "--authorized-keys", f"{key}.pub"],
        log_file=tmp_path / "connect-web-1.log",
        env={**stack.controlplane.cli_env, "XDG_CONFIG_HOME": str(tmp_path / "config")},
        port=port,
    )
    try:
        listener.start_and_wait()
        ssh_listener.start_and_wait()
        yield stack, listener, ssh_listener, key
    finally:
        ssh_listener.stop()
        listener.stop()
        stack.stop()


def ssh(listener: Connect, key: Path, command: str) -> subprocess.CompletedProcess[bytes]:
    options = ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes"]
    options += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    return subprocess.run(
        ["ssh", "-p", str(listener.port), *options, "-F", "/dev/null", "localhost", command],
        capture_output=True,
        timeout=60,
        check=False,
    )


def closed_after(port: int, payload: bytes = b"") -> tuple[float, bytes]:
    """Open a connection, send `payload` (maybe nothing), and wait until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(payload)
        started, said = time.monotonic(), b""
        try:
            while chunk := sock.recv(4096):
                said += chunk
        except ConnectionResetError:
            pass
        return time.monotonic() - started, said


def test_idle_handshakes_are_closed_and_sessions_are_unaffected(
    limited: tuple[Stack, Connect, Connect, Path],
) -> None:
    stack, listener, ssh_listener, key = limited
    plane = stack.controlplane
    dsn = f"host=127.0.0.1 port={listener.port} dbname=pg user=anyone sslmode=disable"
    marker = uuid.uuid4().hex[:8]
    with psycopg.connect(dsn, autocommit=True) as started:  # a session that did start
        probes = {
            "grpc": (plane.grpc_port, b""),
            "grpc preface only": (plane.grpc_port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            "http": (plane.http_port, b""),
            "http half a request": (plane.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"),
            "connect": (listener.port, b""),
            "connect (ssh)": (ssh_listener.port, b""),
        }
        with ThreadPoolExecutor(len(probes)) as pool:
            waits = {name: pool.submit(closed_after, *probe) for name, probe in probes.items()}
            # While they hang, everything else works.
            ran = stack.cli("exec", "pg", "-c", f"select 'exec {marker}'")
            assert ran.returncode == 0, ran.stderr
            assert plane.health() is not None
            over_ssh = ssh(ssh_listener, key, f"echo ssh {marker}")
            assert over_ssh.returncode == 0, over_ssh.stderr
            assert over_ssh.stdout == f"ssh {marker}\n".encode()
            results = {name: wait.result(timeout=20) for name, wait in waits.items()}
        for name, (waited, _) in results.items():
            assert DEADLINE * 0.8 < waited < DEADLINE + 3, (name, waited)
        assert b"no startup message within 1 s" in results["connect"][1]
        assert results["connect (ssh)"][1].startswith(b"SSH-2.0-")  # its banner, then nothing
        # Held open well past the deadline, the started session still works.
        sql = f"select 'held {marker}'"
        assert started.execute(sql).fetchone() == (f"held {marker}",)
    assert stack.pg.wait_for_statement(sql) == 1
    assert stack.pg.wait_for_statement(f"select 'exec {marker}'") == 1
