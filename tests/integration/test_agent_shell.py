"""The agent's `shell` engine: commands run on the agent's host, driven as the tunnel drives it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import time
from pathlib import Path

import pytest

from agent.term import shell
from tests.conftest import RUN_AS_ACCOUNT
from tests.integration.term_client import TermClient, run_command
from wire.term import codec

AS_AGENT = {"run_as": "agent"}


def ran(status: int, signal: str | None = None, error: str | None = None) -> codec.Exit:
    """The exit of a command the agent ran as its own user (`run_as: agent`): its real uid."""
    return codec.Exit(status, signal, error, run_as=codec.RunAs("agent", os.geteuid(), USER))


USER = pwd.getpwuid(os.geteuid()).pw_name


ACCOUNT = RUN_AS_ACCOUNT


async def run(
    start: codec.Start, stdin: bytes | None = None, **target: object
) -> tuple[str, TermClient]:
    return await run_command(shell.run, {"run_as": "agent", **target}, {}, start, stdin)


async def test_command_keeps_stdout_and_stderr_apart_and_reports_its_status() -> None:
    _, client = await run(codec.Start(argv=("sh", "-c", "echo out; echo err >&2; exit 3")))
    assert (client.stdout, client.stderr) == (b"out\n", b"err\n")
    assert client.exit == ran(3)


async def test_argv_runs_without_a_shell() -> None:
    _, client = await run(codec.Start(argv=("echo", "$HOME", "a;b")))
    assert client.stdout == b"$HOME a;b\n"
    assert client.exit == ran(0)


async def test_command_text_runs_through_the_connections_shell() -> None:
    _, client = await run(codec.Start(command="echo $((1 + 2))"))
    assert client.stdout == b"3\n"
    _, client = await run(codec.Start(command="print(6 * 7)"), shell=["python3", "-c"])
    assert client.stdout == b"42\n"


async def test_stdin_is_streamed_whole() -> None:
    data = os.urandom(5 * 1024 * 1024)
    _, client = await run(codec.Start(argv=("sha256sum",)), stdin=data)
    assert client.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert client.exit == ran(0)


async def test_workdir_and_environment_are_the_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_PASSWORD", "agent-secret")
    script = 'pwd; echo "$FOO|${PG_PASSWORD-unset}|${LD_PRELOAD-unset}|$TERM|$LANG"'
    start = codec.Start(argv=("sh", "-c", script), env={"TERM": "vt100", "LD_PRELOAD": "/x.so"})
    _, client = await run(start, workdir=str(tmp_path), env={"FOO": "bar", "LANG": "C.UTF-8"})
    assert client.stdout.decode().splitlines() == [str(tmp_path), "bar|unset|unset|vt100|C.UTF-8"]
    assert shell.child_env({})["PATH"] == os.environ.get("PATH", os.defpath)


async def test_timeout_stops_the_command() -> None:
    began = time.monotonic()
    _, client = await run(codec.Start(argv=("sleep", "30")), timeout=1.0)
    assert client.exit == ran(124, error="timed out after 1 s (the connection's timeout)")
    assert time.monotonic() - began < 10


async def test_output_limit_stops_the_command_after_sending_up_to_it() -> None:
    reason, client = await run(codec.Start(argv=("yes",)), max_output=100_000.0)
    assert client.stdout == b"y\n" * 50_000
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 1
    assert exit_.error == (
        "output limit of 100000 bytes reached (the connection's max_output); "
        "the command was stopped"
    )
    assert reason == exit_.error


async def test_output_up_to_the_limit_is_not_cut() -> None:
    _, client = await run(codec.Start(argv=("printf", "%04d", "7")), max_output=4.0)
    assert (client.stdout, client.exit) == (b"0007", ran(0))


async def test_command_not_found_exits_127() -> None:
    _, client = await run(codec.Start(argv=("no-such-command-gatehouse",)))
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 127
    assert (exit_.error or "").startswith(
        "no-such-command-gatehouse: command not found on the agent's host"
    )


async def test_missing_workdir_names_the_policy_setting(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    _, client = await run(codec.Start(argv=("true",)), workdir=str(missing))
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert f"workdir {missing} is unusable" in (exit_.error or "")


@pytest.mark.parametrize(
    "start",
    [
        codec.Start(pty=codec.Pty()),
        codec.Start(argv=("top",), pty=codec.Pty()),
        codec.Start(subsystem="sftp"),
    ],
    ids=["login shell", "terminal", "subsystem"],
)
async def test_terminals_and_subsystems_are_refused(start: codec.Start) -> None:
    _, client = await run(start)
    assert client.exit == codec.Exit(255, error=shell.NO_TERMINAL)


async def test_signal_reaches_the_command() -> None:
    client = await TermClient.open(
        shell.run, AS_AGENT, {}, codec.Start(argv=("sh", "-c", "echo ready; exec sleep 30"))
    )
    await client.wait_for(b"ready")
    await client.signal("TERM")
    await client.ended()
    assert client.exit == ran(143, signal="TERM")


async def test_what_a_command_leaves_running_is_stopped_with_it(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    began = time.monotonic()
    _, client = await run(codec.Start(command=f"(sleep 3; touch {marker}) & echo started"))
    assert client.stdout == b"started\n"
    assert client.exit == ran(0)
    assert time.monotonic() - began < 3
    await asyncio.sleep(3.5)
    assert not marker.exists()


async def test_client_leaving_stops_the_command(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    client = await TermClient.open(
        shell.run, AS_AGENT, {}, codec.Start(command=f"echo ready; sleep 2; touch {marker}")
    )
    await client.wait_for(b"ready")
    await client.leave()
    assert await client.ended() == "the client left"
    await asyncio.sleep(2.5)
    assert not marker.exists()


# ---- whose account runs the command ------------------------------------------------------------


async def test_a_command_runs_as_the_run_as_account(account: pwd.struct_passwd) -> None:
    script = 'id -u; id -g; echo "$HOME|$USER|$LOGNAME|$SHELL"; pwd'
    _, client = await run(codec.Start(argv=("sh", "-c", script)), run_as=ACCOUNT)
    switched = codec.RunAs("account", account.pw_uid, ACCOUNT, account=ACCOUNT)
    assert client.exit == codec.Exit(0, run_as=switched), client.stderr
    assert shell.running_as({"run_as": ACCOUNT}) == switched  # what it said at attach
    assert client.stdout.decode().splitlines() == [
        str(account.pw_uid),
        str(account.pw_gid),
        f"{account.pw_dir}|{ACCOUNT}|{ACCOUNT}|{account.pw_shell}",
        account.pw_dir,  # without a workdir: its home, not the agent's directory
    ]


async def test_the_run_as_account_cannot_read_the_agents_secrets(
    account: pwd.struct_passwd, tmp_path: Path
) -> None:
    data_dir = tmp_path / "agent-data"
    from agent.credentials import StoredCredential, save

    credential = save(data_dir, StoredCredential("cp", "vpc-1", "id-1", "secret-credential"))
    assert (data_dir.stat().st_mode & 0o777, credential.stat().st_mode & 0o777) == (0o700, 0o600)
    script = f"cat /proc/{os.getpid()}/environ; cat {credential}; echo end"
    _, client = await run(codec.Start(argv=("sh", "-c", script)), run_as=ACCOUNT)
    assert client.stdout == b"end\n"
    assert client.stderr.count(b"Permission denied") == 2


def test_the_agent_says_whose_account_runs_commands_before_any_runs() -> None:
    """What the agent tells the control plane when a session attaches."""
    assert shell.running_as(AS_AGENT) == codec.RunAs("agent", os.geteuid(), USER)
    assert shell.own_account() == shell.running_as(AS_AGENT)
    missing = shell.running_as({"run_as": "no-such-account-gatehouse"})
    assert (missing.mode, missing.account, missing.uid, missing.user) == (
        "account",
        "no-such-account-gatehouse",
        None,
        None,
    )
    assert "does not exist" in (missing.error or "")
    assert "names no run_as" in (shell.running_as({}).error or "")


async def test_without_run_as_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _, client = await run_command(shell.run, {}, {}, codec.Start(argv=("touch", str(marker))), None)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert "names no run_as account" in (exit_.error or "")
    assert not marker.exists()


@pytest.mark.parametrize(
    ("run_as", "expected"),
    [
        ("no-such-account-gatehouse", "does not exist on the agent's host"),
        ("root", "uid 0, root"),
    ],
)
async def test_an_account_the_agent_cannot_use_fails_closed(
    tmp_path: Path, run_as: str, expected: str
) -> None:
    marker = tmp_path / "ran"
    _, client = await run(codec.Start(argv=("touch", str(marker))), run_as=run_as)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert expected in (exit_.error or "")
    assert not marker.exists()


async def test_an_agent_that_is_not_root_cannot_switch_and_says_so(
    account: pwd.struct_passwd, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(shell.os, "geteuid", lambda: 4242)
    marker = tmp_path / "ran"
    _, client = await run(codec.Start(argv=("touch", str(marker))), run_as=ACCOUNT)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert "runs as uid 4242, not root" in (exit_.error or "")
    assert not marker.exists()


async def test_without_pidfd_the_exit_is_still_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    def unsupported(pid: int) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(shell.os, "pidfd_open", unsupported)
    _, client = await run(codec.Start(argv=("sh", "-c", "echo fine; exit 7")))
    assert (client.stdout, client.exit) == (b"fine\n", ran(7))
