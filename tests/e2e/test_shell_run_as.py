"""Shell connections run commands as their `run_as` account, end to end: a real agent
process holding a credential file and a secret in its environment, a command through the
control plane; what the command can read is what the account can."""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator

import pytest

from devenv.postgres import PostgresServer
from tests.conftest import RUN_AS_ACCOUNT
from tests.e2e.conftest import AGENT, PG_PASSWORD, POLICY, Stack, start_stack

ACCOUNT = RUN_AS_ACCOUNT
RUN_AS_POLICY = (
    POLICY
    + """\
  - name: ops-user
    type: shell
    agent: {agent}
    target: {{run_as: {account}, workdir: /tmp, timeout: 60}}
  - name: ops-missing
    type: shell
    agent: {agent}
    target: {{run_as: no-such-account-gatehouse, workdir: /tmp}}
  - name: ops-agent
    type: shell
    agent: {agent}
    target: {{run_as: agent, workdir: /tmp}}
"""
)


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer, account: pwd.struct_passwd
) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("run-as-stack"), pg)
    policy = RUN_AS_POLICY.format(agent=AGENT, port=pg.port, account=account.pw_name)
    applied = started.apply(policy)
    assert applied.returncode == 0, applied.stderr
    yield started
    started.stop()


def test_commands_run_as_the_account(stack: Stack, account: pwd.struct_passwd) -> None:
    result = stack.cli("exec", "ops-user", "--", "sh", "-c", 'id -u; echo "$HOME $USER"')
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{account.pw_uid}\n{account.pw_dir} {ACCOUNT}\n"
    events = stack.events()
    [event] = [e for e in events if e["type"] == "shell.command"][-1:]
    switched = {"mode": "account", "account": ACCOUNT, "uid": account.pw_uid, "user": ACCOUNT}
    assert event["request"]["run_as"] == switched  # what the agent said before it ran
    [outcome] = [e for e in events if e["type"] == "shell.result" and e["ref"] == event["seq"]]
    assert outcome["result"]["run_as"] == switched  # what the agent says it switched to


def test_run_as_agent_on_a_root_agent_is_recorded_as_root(stack: Stack) -> None:
    """The agent runs as root here, as the tests do: `run_as: agent` commands are root, and
    the trail says so rather than "agent"."""
    agent = stack.agent.proc
    assert agent is not None and os.stat(f"/proc/{agent.pid}").st_uid == 0
    result = stack.cli("exec", "ops-agent", "--", "id", "-u")
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
    events = stack.events()
    [event] = [e for e in events if e["type"] == "shell.command"][-1:]
    root = {"mode": "agent", "uid": 0, "user": "root"}
    assert event["request"]["argv"] == ["id", "-u"]
    assert event["request"]["run_as"] == root
    [outcome] = [e for e in events if e["type"] == "shell.result" and e["ref"] == event["seq"]]
    assert outcome["result"]["run_as"] == root


def test_admin_apply_warns_of_a_shell_connection_that_runs_as_root(stack: Stack) -> None:
    policy = RUN_AS_POLICY.format(agent=AGENT, port=stack.pg.port, account=ACCOUNT)
    applied = stack.apply(policy)
    assert applied.returncode == 0, applied.stderr
    [warning] = [line for line in applied.stderr.splitlines() if line.startswith("warning:")]
    assert "'ops-agent' runs commands as root" in warning and "uid 0" in warning
    assert "run_as: NAME" in warning  # what to do about it
    unprivileged = policy.replace("run_as: agent, ", f"run_as: {ACCOUNT}, ")
    applied = stack.apply(unprivileged)
    assert applied.returncode == 0, applied.stderr
    assert "warning:" not in applied.stderr
    assert stack.apply(policy).returncode == 0  # as the module's other tests expect it


def test_the_account_cannot_read_the_agents_secrets(stack: Stack) -> None:
    agent = stack.agent.proc
    assert agent is not None
    assert PG_PASSWORD.encode() in open(f"/proc/{agent.pid}/environ", "rb").read()  # noqa: SIM115
    data_dir = stack.base / "agent"
    credential = data_dir / f"agent-{AGENT}.json"
    assert credential.exists()
    assert (data_dir.stat().st_mode & 0o777, credential.stat().st_mode & 0o777) == (0o700, 0o600)
    script = f"cat /proc/{agent.pid}/environ; cat {credential}; echo end"
    result = stack.cli("exec", "ops-user", "--", "sh", "-c", script)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "end\n"
    assert PG_PASSWORD not in result.stdout + result.stderr
    assert result.stderr.count("Permission denied") == 2


def test_an_account_the_agent_cannot_use_fails_closed(stack: Stack) -> None:
    marker = "/tmp/gatehouse-run-as-never"
    result = stack.cli("exec", "ops-missing", "--", "touch", marker)
    assert result.returncode == 255
    assert "no-such-account-gatehouse" in result.stderr and "does not exist" in result.stderr
    assert not os.path.exists(marker)


def test_admin_apply_refuses_a_shell_connection_without_run_as(stack: Stack) -> None:
    policy = RUN_AS_POLICY.format(agent=AGENT, port=stack.pg.port, account=ACCOUNT).replace(
        "run_as: no-such-account-gatehouse, ", ""
    )
    refused = stack.apply(policy)
    assert refused.returncode != 0
    assert "needs run_as" in refused.stderr and "run_as: agent" in refused.stderr
