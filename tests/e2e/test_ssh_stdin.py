"""A program a command reads from stdin is recorded and checked before it runs, end to end:
`echo 'rm -rf DIR' | gatehouse exec ops -- sh` through a real control plane and agent, to a
real sshd and to the agent's own host; the file system says what ran. Also behind wrappers
the gateway has no rule for (`strace -f sh`, `ip netns exec X sh`) and through redirections
(`sh <&0`, `bash <(cat)`), which it holds as unsure."""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devenv.postgres import PostgresServer
from devenv.sshd import Sshd
from devenv.stack import GATEHOUSE, REPO
from tests.conftest import require_tool
from tests.e2e.conftest import Stack, ssh_policy, start_stack


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer, sshd: Sshd
) -> Iterator[Stack]:
    started = start_stack(tmp_path_factory.mktemp("stdin-stack"), pg)
    policy = ssh_policy(started, sshd).replace(
        "deny_commands: ['rm -rf /', 'rm -rf /*']",
        "deny_commands: ['rm -rf /', 'rm -rf /*', 'rm -rf *']",
    )
    applied = started.apply(policy)
    assert applied.returncode == 0, applied.stderr
    yield started
    started.stop()


def pipe(stack: Stack, program: bytes | str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """`printf PROGRAM | gatehouse ARGS`, through a real shell pipe."""
    data = program.encode() if isinstance(program, str) else program
    return subprocess.run(
        [*GATEHOUSE, *args],
        input=data,
        capture_output=True,
        env={**os.environ, **stack.controlplane.cli_env},
        cwd=REPO,
        timeout=60,
        check=False,
    )


def command_event(stack: Stack, marker: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The command event whose stdin holds `marker`, and the rest of its session."""
    events = stack.events()
    [event] = [e for e in events if marker in e.get("request", {}).get("stdin", {}).get("text", "")]
    return event, [e for e in events if e.get("session_id") == event["session_id"]]


@pytest.mark.parametrize(
    ("connection", "argv"),
    [
        ("ops", ["sh"]),
        ("web-1", ["sh"]),
        ("web-1", ["bash"]),
        ("ops", ["env", "LC_ALL=C", "bash", "-s"]),
        ("ops", ["timeout", "30", "sh"]),
        ("web-1", ["nice", "-n", "1", "sh", "/dev/stdin"]),
        ("ops", ["xargs", "rm", "-rf"]),
        # wrappers without a rule of their own, and redirections of stdin
        ("ops", ["strace", "-f", "sh"]),
        ("web-1", ["pkexec", "sh"]),
        ("ops", ["chrt", "1", "sh"]),
        ("web-1", ["ip", "netns", "exec", "stdin-none", "sh"]),
        ("ops", ["newgrp"]),
        ("web-1", ["make", "-f", "-"]),
        ("ops", ["find", ".", "-maxdepth", "0", "-exec", "sh", ";"]),
        ("ops", ["env", "-S", "sh"]),
        ("ops", ["ionice", "-c2", "sh"]),
        ("web-1", ["stdbuf", "-oL", "sh"]),
        ("ops", ["setsid", "sh"]),
        ("web-1", ["script", "-qc", "sh", "/dev/null"]),
        ("ops", ["su", "-c", "sh"]),
        ("ops", ["sh", "-c", "sh <&0"]),
        ("web-1", ["sh <&0"]),
        ("web-1", ["exec 3<&0; sh <&3"]),
        ("ops", ["bash", "-c", "bash <(cat)"]),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v),
)
def test_a_denied_program_on_stdin_never_runs(
    stack: Stack, sshd: Sshd, tmp_path: Path, connection: str, argv: list[str]
) -> None:
    victim = tmp_path / f"dir-{uuid.uuid4().hex[:8]}"
    victim.mkdir()
    (victim / "keep").write_text("data\n")
    program = f"{victim}\n" if argv[0] == "xargs" else f"echo about to\nrm -rf {victim}\n"
    logins = sshd.log().count("Accepted publickey")
    result = pipe(stack, program, "exec", connection, "--", *argv)
    assert result.returncode == 126, result.stderr
    assert sshd.log().count("Accepted publickey") == logins  # the target was never dialled
    assert b"program on stdin" in result.stderr and b"no-rm-root" in result.stderr
    assert result.stdout == b""  # not even the harmless first line ran
    assert (victim / "keep").read_text() == "data\n"
    event, session = command_event(stack, str(victim))
    assert event["decision"]["result"] == "deny" and event["decision"]["rule"] == "no-rm-root"
    assert event["request"]["stdin"]["text"] == program
    assert event["request"]["stdin"]["sha256"] == hashlib.sha256(program.encode()).hexdigest()
    assert not [e for e in session if e["type"].endswith(".result")]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of this test's own, for `ip netns exec`."""
    require_tool("ip")
    name = f"stdin-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


MARK = "echo ran > {marker}\n"


@pytest.mark.parametrize(
    ("connection", "argv", "program", "unsure"),
    [
        ("ops", ["strace", "-f", "-o", "/dev/null", "sh"], MARK, "strace may start sh"),
        ("web-1", ["chrt", "-o", "0", "sh"], MARK, "chrt may start sh"),
        ("ops", ["ip", "netns", "exec", "{namespace}", "sh"], MARK, "ip may start sh"),
        ("ops", ["newgrp"], MARK, "newgrp starts a shell"),
        ("web-1", ["make", "-f", "-"], "all:\n\techo ran > {marker}\n", None),
        # vi without a terminal takes its keystrokes from stdin, `:!` included
        ("web-1", ["vim"], ":!echo ran > {marker}\n:qa!\n", None),
        ("ops", ["vi", "/etc/hostname"], ":!echo ran > {marker}\n:qa!\n", None),
        ("web-1", ["find / -maxdepth 0 -exec sh \\;"], MARK, "find may start sh"),
        ("web-1", ["sh <&0"], MARK, "stdin is redirected: <&0"),
        ("ops", ["sh", "-c", "exec 3<&0; sh <&3"], MARK, "stdin is redirected: <&3"),
        ("web-1", ["bash <(cat)"], MARK, "stdin is redirected: <(cat)"),
    ],
    ids=lambda v: v if isinstance(v, str) else " ".join(v) if isinstance(v, list) else "",
)
def test_a_program_behind_a_wrapper_or_a_redirection_is_recorded_and_runs(
    stack: Stack,
    sshd: Sshd,
    tmp_path: Path,
    namespace: str,
    connection: str,
    argv: list[str],
    program: str,
    unsure: str | None,
) -> None:
    """What the gateway cannot be sure of is held and recorded all the same: the program in
    the trail is the one that ran on the target."""
    if argv[0] == "strace":
        require_tool("strace")
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    text = program.format(marker=marker)
    argv = [word.format(namespace=namespace) for word in argv]
    logins = sshd.log().count("Accepted publickey")
    result = pipe(stack, text, "exec", connection, "--", *argv)
    assert result.returncode == 0, result.stderr
    assert marker.read_text() == "ran\n"  # it ran on the target
    if connection == "web-1":
        assert sshd.log().count("Accepted publickey") == logins + 1
    event, session = command_event(stack, str(marker))
    assert event["decision"] == {"result": "allow"}
    assert event["request"]["stdin"]["text"] == text  # what ran is what was recorded
    reader = event["request"]["stdin"]["readers"][0]
    assert reader.get("unsure", "").startswith(unsure or "")
    assert ("unsure" in reader) == bool(unsure)
    [outcome] = [e for e in session if e["type"].endswith(".result")]
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert outcome["result"]["stdin"] == {"sha256": digest, "bytes": len(text.encode())}
    assert outcome["result"]["exit_code"] == 0


@pytest.mark.parametrize("connection", ["ops", "web-1"])
def test_an_allowed_program_is_in_the_trail_before_it_runs(
    stack: Stack, sshd: Sshd, tmp_path: Path, connection: str
) -> None:
    """The program itself looks the trail up as it runs: its own text is already there."""
    marker = uuid.uuid4().hex
    seen = tmp_path / f"seen-{marker}"
    database = stack.controlplane.data_dir / "gatehouse.db"
    lookup = (
        "import sqlite3, sys; db = sqlite3.connect(sys.argv[1]); "
        "print(db.execute(\"select count(*) from audit_events where body like '%' || ? || '%' "
        "and type in ('ssh.exec', 'shell.command')\", (sys.argv[2],)).fetchone()[0])"
    )
    program = (
        f"python3 -c {shlex.quote(lookup)} {shlex.quote(str(database))} {marker} > {seen}\n"
        "echo ran\n"
    )
    logins = sshd.log().count("Accepted publickey")
    result = pipe(stack, program, "exec", connection, "--", "sh")
    assert (result.returncode, result.stdout) == (0, b"ran\n"), result.stderr
    if connection == "web-1":  # the sshd's own log: one login, for the program that ran
        assert sshd.log().count("Accepted publickey") == logins + 1
    assert seen.read_text() == "1\n"  # committed before a byte of it reached the target
    event, session = command_event(stack, marker)
    assert event["decision"] == {"result": "allow"}
    digest = hashlib.sha256(program.encode()).hexdigest()
    assert event["request"]["stdin"]["sha256"] == digest
    assert event["request"]["stdin"]["bytes"] == len(program.encode())
    [outcome] = [e for e in session if e["type"].endswith(".result")]
    assert outcome["result"]["stdin"] == {"sha256": digest, "bytes": len(program.encode())}
    assert outcome["result"]["exit_code"] == 0


def test_a_python_program_on_stdin_is_recorded(stack: Stack, tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    program = f"print('hello from {marker}'[:10])\n"
    result = pipe(stack, program, "exec", "ops", "--", "python3")
    assert (result.returncode, result.stdout) == (0, b"hello from\n"), result.stderr
    event, _ = command_event(stack, marker)
    assert event["request"]["stdin"]["readers"] == [{"command": ["python3"], "language": "other"}]


def test_a_program_beyond_the_limit_is_refused_and_nothing_runs(
    stack: Stack, tmp_path: Path
) -> None:
    marker = tmp_path / f"big-{uuid.uuid4().hex[:8]}"
    program = f"touch {marker}\n" + "#" * (1024 * 1024 + 1)
    result = pipe(stack, program, "exec", "web-1", "--", "bash")
    assert result.returncode == 126, result.stderr
    assert b"1048576 bytes" in result.stderr and b"gatehouse ssh" in result.stderr
    assert not marker.exists()


def test_data_to_a_non_interpreter_still_streams(stack: Stack) -> None:
    data = os.urandom(2 * 1024 * 1024)  # more than a held program may be
    result = pipe(stack, data, "exec", "web-1", "--", "sha256sum")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


def test_a_program_typed_on_an_open_stdin_runs_at_its_end_and_the_caller_is_told(
    stack: Stack,
) -> None:
    with subprocess.Popen(
        [*GATEHOUSE, "exec", "ops", "--", "sh"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **stack.controlplane.cli_env},
        cwd=REPO,
    ) as process:
        assert process.stdin is not None and process.stderr is not None
        process.stdin.write(b"echo typed\n")
        process.stdin.flush()
        notice = process.stderr.readline()  # while stdin is still open
        assert b"sh reads its program from stdin" in notice and b"Ctrl-D" in notice
        assert process.poll() is None  # nothing ran yet
        process.stdin.close()
        status = process.wait(timeout=30)
        assert process.stdout is not None
        assert (status, process.stdout.read()) == (0, b"typed\n")


@pytest.mark.parametrize("args", [["--", ""], ["-c", ""]], ids=["argv", "text"])
def test_an_empty_command_is_no_shell_reading_stdin(
    stack: Stack, sshd: Sshd, tmp_path: Path, args: list[str]
) -> None:
    """An SSH exec request with no command would be a shell request: the target's login
    shell would read its commands from stdin, in the exec mode, with nothing of them checked
    or recorded. An empty command is refused before the target is dialled."""
    victim = tmp_path / f"dir-{uuid.uuid4().hex[:8]}"
    victim.mkdir()
    (victim / "keep").write_text("data\n")
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    program = f"echo ran > {marker}\nrm -rf {victim}\n"
    logins = sshd.log().count("Accepted publickey")
    result = pipe(stack, program, "exec", "web-1", *args)
    assert not marker.exists()
    assert (victim / "keep").read_text() == "data\n"
    assert result.returncode != 0, result.stderr
    assert sshd.log().count("Accepted publickey") == logins  # the target was never dialled
