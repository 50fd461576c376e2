"""The agent's `run_as` sandbox (deploy/systemd/gatehouse-agent.service.d/run-as.conf): uid 0
with only CAP_SETUID and CAP_SETGID in its bounding set and no ambient capability. A command
run as another account must start with no capability at all, so it cannot switch back.

(Ambient capabilities on a non-root agent user were the first idea: they survive the switch to
another non-root account and reach the command, which could then become root. Measured with
setpriv, the same tool used here; the drop-in does not use them.)"""

from __future__ import annotations

import pwd
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.postgres import PostgresServer
from devenv.stack import Agent, ControlPlane, gatehouse
from tests.conftest import require_tool
from tests.e2e.conftest import AGENT, POLICY, Stack
from tests.e2e.test_shell_run_as import RUN_AS_POLICY

pytestmark = pytest.mark.e2e

SANDBOX = [
    "setpriv",
    "--bounding-set=-all,+setuid,+setgid",
    "--inh-caps=-all",
    "--no-new-privs",
]
DROP_IN = (
    Path(__file__).resolve().parents[2] / "deploy/systemd/gatehouse-agent.service.d/run-as.conf"
)


@pytest.fixture
def sandboxed(
    tmp_path: Path,
    pg: PostgresServer,
    account: pwd.struct_passwd,
) -> Iterator[Stack]:
    require_tool("setpriv")
    controlplane = ControlPlane.create(tmp_path / "controlplane")
    controlplane.start_and_wait()
    agent: Agent | None = None
    try:
        created = gatehouse(["admin", "agents", "create", AGENT], env=controlplane.cli_env)
        assert created.returncode == 0, created.stderr
        agent = Agent.create(controlplane, AGENT, created.stdout.strip(), tmp_path / "agent")
        agent.wrap = SANDBOX
        agent.start()
        controlplane.wait_agent(AGENT)
        stack = Stack(controlplane, agent, pg, tmp_path)
        policy = RUN_AS_POLICY.format(agent=AGENT, port=pg.port, account=account.pw_name)
        assert POLICY.format(agent=AGENT, port=pg.port) in policy
        applied = stack.apply(policy)
        assert applied.returncode == 0, applied.stderr
        yield stack
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()


def capabilities(status: str) -> dict[str, int]:
    return {
        line.split(":")[0]: int(line.split()[1], 16)
        for line in status.splitlines()
        if line.startswith("Cap")
    }


def test_the_drop_in_is_what_this_test_runs() -> None:
    lines = [line.strip() for line in DROP_IN.read_text().splitlines()]
    assert "CapabilityBoundingSet=CAP_SETUID CAP_SETGID" in lines
    assert "AmbientCapabilities=" in lines  # none: they would reach the commands
    assert "DynamicUser=no" in lines


def test_a_run_as_command_has_no_capability_and_cannot_switch_back(
    sandboxed: Stack,
    account: pwd.struct_passwd,
) -> None:
    agent = sandboxed.agent.proc
    assert agent is not None
    own = capabilities(Path(f"/proc/{agent.pid}/status").read_text())
    assert own["CapBnd"] == (1 << 6) | (1 << 7)  # CAP_SETGID, CAP_SETUID: the sandbox holds

    result = sandboxed.cli(
        "exec", "ops-user", "--", "sh", "-c", "id -u; grep ^Cap /proc/self/status"
    )
    assert result.returncode == 0, result.stderr
    uid, _, status = result.stdout.partition("\n")
    assert int(uid) == account.pw_uid
    [event] = [e for e in sandboxed.events() if e["type"] == "shell.command"][-1:]
    assert event["request"]["run_as"]["uid"] == account.pw_uid  # the trail says the same
    caps = capabilities(status)
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapAmb"] == caps["CapInh"] == 0

    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        return  # the capability sets above already show it
    escape = (
        "import os\n"
        "try:\n    os.setuid(0)\n    print('root')\n"
        "except PermissionError:\n    print('refused')\n"
    )
    result = sandboxed.cli("exec", "ops-user", "--", python, "-c", escape)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "refused\n"
