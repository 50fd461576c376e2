"""The audit trail of ssh and shell sessions, end to end: a real sshd, the real processes.

What the control plane promises: a command's event is committed before it runs, a denied
command or one whose event cannot be stored never runs (checked on the target), the exit
status a caller sees is in the trail, and a terminal recording is served only while it
matches the digest in the chain.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest

from devenv.sshd import Sshd
from devenv.stack import GATEHOUSE, REPO
from tests.e2e.conftest import Stack, ssh_policy


@pytest.fixture
def ssh_stack(own_stack: Stack, sshd: Sshd) -> Iterator[Stack]:
    applied = own_stack.apply(ssh_policy(own_stack, sshd))
    assert applied.returncode == 0, applied.stderr
    yield own_stack


def store(stack: Stack) -> sqlite3.Connection:
    return sqlite3.connect(stack.controlplane.data_dir / "gatehouse.db", isolation_level=None)


def session_events(stack: Stack, kind: str) -> list[dict[str, Any]]:
    """The events of the newest session whose command event is of `kind`."""
    events = stack.events()
    session = [e for e in events if e["type"] == kind][-1]["session_id"]
    return [e for e in events if e.get("session_id") == session]


def test_a_command_is_recorded_before_it_runs_and_its_exit_after(
    ssh_stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    result = ssh_stack.cli("exec", "web-1", "--", f"touch {marker}; echo out; echo err >&2; exit 3")
    assert result.returncode == 3
    assert (result.stdout, result.stderr) == ("out\n", "err\n")
    assert marker.exists()
    trail = session_events(ssh_stack, "ssh.exec")
    assert [e["type"] for e in trail] == ["session.start", "ssh.exec", "ssh.result", "session.end"]
    command, outcome = trail[1], trail[2]
    assert command["request"] == {"command": f"touch {marker}; echo out; echo err >&2; exit 3"}
    assert command["decision"] == {"result": "allow"}
    assert command["user"]["sub"] and command["audit_mode"] == "strict"
    assert outcome["ref"] == command["seq"]
    assert outcome["result"]["exit_code"] == 3
    assert outcome["result"]["bytes"] == {"in": 0, "out": 4, "err": 4}
    assert ssh_stack.cli("audit", "verify").returncode == 0


def test_a_denied_command_never_reaches_the_target(ssh_stack: Stack, tmp_path: Path) -> None:
    marker = tmp_path / f"denied-{uuid.uuid4().hex[:8]}"
    for connection in ("web-1", "ops"):
        if connection == "web-1":
            argv = ["--", f"touch {marker} && rm -rf /"]
        else:
            argv = ["--", "sh", "-c", f"touch {marker}; rm -rf /"]
        result = ssh_stack.cli("exec", connection, *argv)
        assert result.returncode == 126, result.stderr
        assert "no-rm-root" in result.stderr
        assert not marker.exists()  # not run at all: the first command of the line neither
    denied = [e for e in ssh_stack.events() if e.get("decision", {}).get("result") == "deny"]
    assert [e["type"] for e in denied] == ["ssh.exec", "shell.command"]
    assert all(e["decision"]["rule"] == "no-rm-root" for e in denied)
    assert not [e for e in ssh_stack.events() if e["type"] in ("ssh.result", "shell.result")]


def test_a_command_whose_event_cannot_be_stored_does_not_run(
    ssh_stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / f"unaudited-{uuid.uuid4().hex[:8]}"
    with store(ssh_stack) as db:
        db.execute(
            "create trigger disk_full before insert on audit_events when new.type = 'ssh.exec' "
            "begin select raise(abort, 'disk full'); end"
        )
    result = ssh_stack.cli("exec", "web-1", "--", f"touch {marker}")
    assert result.returncode == 255
    assert "disk full" in result.stderr and "not run" in result.stderr
    assert not marker.exists()
    with store(ssh_stack) as db:
        db.execute("drop trigger disk_full")
    assert ssh_stack.cli("exec", "web-1", "--", f"touch {marker}").returncode == 0
    assert marker.exists()


def test_a_shell_command_runs_in_the_workdir_with_the_connection_env(ssh_stack: Stack) -> None:
    result = ssh_stack.cli("exec", "ops", "--", "sh", "-c", 'pwd; echo "$GREETING"; exit 4')
    assert result.returncode == 4
    assert result.stdout == f"{ssh_stack.base}\nhello\n"
    trail = session_events(ssh_stack, "shell.command")
    assert trail[1]["request"] == {
        "argv": ["sh", "-c", 'pwd; echo "$GREETING"; exit 4'],
        "workdir": str(ssh_stack.base),
        # run_as: agent is the agent's own account, recorded as the real uid (root here).
        "run_as": {
            "mode": "agent",
            "uid": os.geteuid(),
            "user": pwd.getpwuid(os.geteuid()).pw_name,
        },
    }
    assert trail[2]["type"] == "shell.result" and trail[2]["result"]["exit_code"] == 4


def test_a_changed_host_key_is_refused(own_stack: Stack, sshd: Sshd, tmp_path: Path) -> None:
    wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMj8oVTnJxDu3iOt0bkmQu4vCm1c9VN7i1j5nE0VYcYv"
    assert own_stack.apply(ssh_policy(own_stack, sshd, known_hosts=wrong)).returncode == 0
    marker = tmp_path / "never"
    result = own_stack.cli("exec", "web-1", "--", f"touch {marker}")
    assert result.returncode == 255
    assert "host key" in result.stderr and "known_hosts" in result.stderr
    assert not marker.exists()
    outcome = session_events(own_stack, "ssh.exec")[2]
    assert outcome["result"]["exit_code"] == 255 and "host key" in outcome["result"]["error"]


def test_a_terminal_session_is_recorded_and_a_tampered_recording_is_refused(
    ssh_stack: Stack,
) -> None:
    env = {**os.environ, **ssh_stack.controlplane.cli_env, "TERM": "xterm"}
    child = pexpect.spawn(
        GATEHOUSE[0],
        [*GATEHOUSE[1:], "ssh", "web-1"],
        env=env,
        cwd=str(REPO),
        timeout=30,
        dimensions=(24, 80),
    )
    child.expect(r"[#$] ")
    child.sendline("echo recorded-$((6*7))")
    child.expect("recorded-42")
    child.sendline("exit 5")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 5

    trail = session_events(ssh_stack, "ssh.session")
    kinds = [e["type"] for e in trail]
    assert kinds[:2] == ["session.start", "ssh.session"] and "ssh.result" in kinds
    lines = [e["input"]["line"] for e in trail if e["type"] == "ssh.input"]
    assert "echo recorded-$((6*7))" in lines
    result = next(e for e in trail if e["type"] == "ssh.result")
    assert result["result"]["exit_code"] == 5
    session_id = trail[0]["session_id"]

    cast = ssh_stack.cli("sessions", "replay", session_id, "--output", "-")
    assert cast.returncode == 0, cast.stderr
    header, *events = cast.stdout.splitlines()
    assert json.loads(header)["version"] == 2
    assert "recorded-42" in "".join(json.loads(e)[2] for e in events if json.loads(e)[1] == "o")

    with store(ssh_stack) as db:
        db.execute(
            "update recording_chunks set data = cast(replace(cast(data as text), "
            "'recorded-42', 'recorded-43') as blob) where session_id = ?",
            (session_id,),
        )
    refused = ssh_stack.cli("sessions", "replay", session_id, "--output", "-")
    assert refused.returncode != 0
    assert "does not match" in refused.stderr and refused.stdout == ""
