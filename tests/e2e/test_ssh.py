"""The CLI's side of ssh and shell connections, end to end: `gatehouse exec -- CMD`,
`gatehouse ssh`, native ssh/scp/sftp through `gatehouse connect`, and replay, against a real
sshd through a real control plane and agent."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from devenv.postgres import PostgresServer
from devenv.processes import free_port
from devenv.sshd import Sshd
from devenv.stack import GATEHOUSE, REPO, Connect
from tests.conftest import require_tool
from tests.e2e.conftest import Stack, ssh_policy, start_stack


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer, sshd: Sshd
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("ssh-stack")
    started = start_stack(base, pg)
    applied = started.apply(ssh_policy(started, sshd))
    assert applied.returncode == 0, applied.stderr
    yield started
    started.stop()


def env(stack: Stack, **extra: str) -> dict[str, str]:
    return {**os.environ, **stack.controlplane.cli_env, **extra}


def run(
    stack: Stack, args: list[str], stdin: bytes = b"", timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*GATEHOUSE, *args],
        input=stdin,
        capture_output=True,
        env=env(stack),
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- gatehouse exec NAME -- CMD ---------------------------------------------------------------


def test_exec_keeps_stdout_and_stderr_apart_and_returns_the_exit_status(stack: Stack) -> None:
    result = run(stack, ["exec", "web-1", "--", "echo out; echo err >&2; exit 3"])
    assert result.returncode == 3, result.stderr
    assert (result.stdout, result.stderr) == (b"out\n", b"err\n")


def test_exec_words_are_joined_as_ssh_joins_them(stack: Stack) -> None:
    result = run(stack, ["exec", "web-1", "--", "echo", "a", "b"])
    assert (result.returncode, result.stdout) == (0, b"a b\n")


def test_exec_dash_c_is_a_command_line_on_ssh(stack: Stack) -> None:
    result = run(stack, ["exec", "web-1", "-c", "printf '%s-' x y"])
    assert (result.returncode, result.stdout) == (0, b"x-y-")


def test_exec_streams_stdin_through_binary_safe(stack: Stack) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    result = run(stack, ["exec", "web-1", "--", "sha256sum"], stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    echoed = run(stack, ["exec", "web-1", "--", "cat"], stdin=data)
    assert echoed.stdout == data


def test_tar_through_a_pipe(stack: Stack, tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "dest"
    (source / "sub").mkdir(parents=True)
    target.mkdir()
    (source / "a.txt").write_text("alpha\n")
    (source / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    command = (
        f"tar c -C {shlex.quote(str(source))} . | "
        f"{shlex.join(GATEHOUSE)} exec web-1 -- tar x -C {shlex.quote(str(target))}"
    )
    done = subprocess.run(
        command, shell=True, capture_output=True, env=env(stack), cwd=REPO, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert (target / "a.txt").read_text() == "alpha\n"
    assert sha256(target / "sub" / "b.bin") == sha256(source / "sub" / "b.bin")


def run_with_open_stdin(stack: Stack, args: list[str]) -> tuple[int, bytes, bytes]:
    """Run the CLI with a stdin that never ends, as a terminal nobody types into."""
    with subprocess.Popen(
        [*GATEHOUSE, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(stack),
        cwd=REPO,
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        status = process.wait(timeout=30)
        return status, process.stdout.read(), process.stderr.read()


def test_exec_does_not_wait_for_stdin_the_command_never_reads(stack: Stack) -> None:
    status, out, err = run_with_open_stdin(stack, ["exec", "web-1", "--", "echo", "done"])
    assert (status, out) == (0, b"done\n"), err


def test_no_stdin_sends_end_of_file_at_once(stack: Stack) -> None:
    status, out, err = run_with_open_stdin(
        stack, ["exec", "web-1", "-n", "--", "cat; echo eof-seen"]
    )
    assert (status, out) == (0, b"eof-seen\n"), err


def test_shell_connection_runs_argv_with_its_environment(stack: Stack) -> None:
    result = run(stack, ["exec", "ops", "--", "sh", "-c", 'echo "$GREETING"; exit 4'])
    assert result.returncode == 4, result.stderr
    assert result.stdout == b"hello\n"


def test_a_secret_on_an_ssh_command_line_runs_and_stays_out_of_the_trail(stack: Stack) -> None:
    """An AI agent's shell expands `$TOKEN` before gatehouse sees it: the command runs with the
    secret, and the trail says what ran with the secret masked, and that it was."""
    after = stack.events()[-1]["seq"]
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    command = (
        f"env MYSQL_PWD={secret} sh -c 'echo \"$MYSQL_PWD\"' && "
        f"printf '%s\\n' --password={secret} https://deploy:{secret}@example.com/x"
    )
    result = run(stack, ["exec", "web-1", "--", command])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == (
        f"{secret}\n--password={secret}\nhttps://deploy:{secret}@example.com/x\n"
    )
    trail = stack.events(after)
    assert secret not in json.dumps(trail)
    [event] = [e for e in trail if e["type"] == "ssh.exec"]
    assert event["request"]["command"] == command.replace(secret, "****")
    assert event["request"]["masked"] is True
    [outcome] = [e for e in trail if e["type"] == "ssh.result"]
    assert outcome["ref"] == event["seq"] and outcome["result"]["exit_code"] == 0


def test_a_command_in_place_of_a_secret_is_recorded_as_it_ran(stack: Stack, tmp_path: Path) -> None:
    """Where a password would stand, `"$(…)"` runs a command: masking it as the password would
    leave what ran out of the trail. It is kept; a plain secret beside it is still masked."""
    mark = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    after = stack.events()[-1]["seq"]
    command = (
        f'printf "%s\\n" "--password=$(touch {mark}; echo x)" '
        f'"Authorization: Bearer `echo y`" --token={secret}'
    )
    result = run(stack, ["exec", "web-1", "--", command])
    assert result.returncode == 0, result.stderr
    assert mark.exists()  # the substitution ran on the target
    assert result.stdout.decode() == f"--password=x\nAuthorization: Bearer y\n--token={secret}\n"
    trail = stack.events(after)
    assert secret not in json.dumps(trail)
    [event] = [e for e in trail if e["type"] == "ssh.exec"]
    assert event["request"]["command"] == command.replace(secret, "****")


def test_a_secret_in_a_shell_argv_runs_and_stays_out_of_the_trail(stack: Stack) -> None:
    """`mysql -pX` on a shell connection: a stand-in `mysql` in the workdir prints the words it
    got, which include the password; the event's argv has `-p****`."""
    mysql = stack.base / "mysql"
    mysql.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" "$PGPASSWORD"\n')
    mysql.chmod(0o755)
    after = stack.events()[-1]["seq"]
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    argv = ["env", f"PGPASSWORD={secret}", "./mysql", "-uroot", f"-p{secret}", "-e", "select 1"]
    result = run(stack, ["exec", "ops", "--", *argv])
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode() == f"-uroot\n-p{secret}\n-e\nselect 1\n{secret}\n"
    trail = stack.events(after)
    assert secret not in json.dumps(trail)
    [event] = [e for e in trail if e["type"] == "shell.command"]
    assert event["request"]["argv"] == [
        "env", "PGPASSWORD=****", "./mysql", "-uroot", "-p****", "-e", "select 1"
    ]  # fmt: skip
    assert event["request"]["masked"] is True


RAW_ENV = """
import json, sys
from cli import rpc
from cli.session import open_session
from cli.term import stream as term
from wire.term.codec import Start

async def work(channel):
    opened = await open_session(channel, rpc.metadata(), sys.argv[1], "exec", "raw")
    async with term.TermSession(opened) as session:
        start = Start(argv=tuple(sys.argv[2].split()), env=json.loads(sys.argv[3]))
        exit_ = await term.relay(session, start, None, term.StdStreams())
    print(f"status {exit_.status}", file=sys.stderr)

rpc.call(rpc.controlplane_address(None), work)
"""


def test_a_refused_environment_leaves_no_value_in_the_trail(stack: Stack) -> None:
    """A client may send `env` with its start (the gatehouse CLI does not); only the locale
    passes. A refused `PGPASSWORD` is recorded by name, not by value."""
    after = stack.events()[-1]["seq"]
    secret = f"S3cret-{uuid.uuid4().hex[:12]}"
    result = subprocess.run(
        [sys.executable, "-c", RAW_ENV, "ops", "psql -h db", json.dumps({"PGPASSWORD": secret})],
        capture_output=True,
        env=env(stack),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert b"status 126" in result.stderr and b"PGPASSWORD" in result.stderr, result.stderr
    trail = stack.events(after)
    assert secret not in json.dumps(trail)
    [event] = [e for e in trail if e["type"] == "shell.command"]
    assert event["decision"]["rule"] == "(env)"
    assert event["request"]["env"] == {"PGPASSWORD": "****"}
    assert event["request"]["masked"] is True


def test_a_denied_command_exits_126_saying_why_once(stack: Stack) -> None:
    result = run(stack, ["exec", "web-1", "--", "rm", "-rf", "/nothing-here"])
    assert result.returncode == 126
    assert result.stderr.count(b"no-rm-root") == 1, result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize(
    "runner",
    [
        ["env", "-S", "rm -rf {dir}"],
        ["env", "-iS", "rm -rf", "{dir}"],
        ["parallel", "rm -rf", ":::", "{dir}"],
        ["tcsh", "-c", "rm -rf {dir}"],
    ],
)
@pytest.mark.parametrize("connection", ["web-1", "ops"])
def test_a_denied_command_behind_a_program_runner_does_not_run(
    stack: Stack, tmp_path: Path, runner: list[str], connection: str
) -> None:
    """env -S splits a text into a command, parallel joins its words into one and tcsh -c runs
    one: the guard reads what they run, so `rm -rf /*` is denied and the directory stays."""
    target = Path("/tmp") / f"gatehouse-runner-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    (target / "kept").write_text("still here")
    try:
        argv = [word.replace("{dir}", str(target)) for word in runner]
        words = argv if connection == "ops" else [shlex.join(argv)]
        result = run(stack, ["exec", connection, "--", *words])
        assert result.returncode == 126, result.stderr
        assert b"no-rm-root" in result.stderr
        assert (target / "kept").read_text() == "still here"
    finally:
        subprocess.run(["rm", "-rf", str(target)], check=False)


@pytest.mark.parametrize(
    ("connection", "text"),
    [
        ("web-1", ">/dev/null rm -rf {dir}"),
        ("web-1", "2>&1 rm -rf {dir}"),
        ("ops", "2>/dev/null rm -rf {dir}"),
        ("web-1", "coproc rm -rf {dir}; wait"),
    ],
)
def test_a_denied_command_behind_a_leading_redirection_or_coproc_does_not_run(
    stack: Stack, connection: str, text: str
) -> None:
    """A redirection may stand before the command name, and bash's `coproc` runs the command
    after it: the guard reads the command either way."""
    target = Path("/tmp") / f"gatehouse-redirected-{uuid.uuid4().hex[:8]}"
    target.mkdir()
    (target / "kept").write_text("still here")
    try:
        result = run(stack, ["exec", connection, "-c", text.format(dir=target)])
        assert (target / "kept").read_text() == "still here"
        assert result.returncode == 126, result.stderr
        assert b"no-rm-root" in result.stderr
    finally:
        subprocess.run(["rm", "-rf", str(target)], check=False)


def test_argv_on_a_database_connection_says_to_use_dash_c(stack: Stack) -> None:
    result = run(stack, ["exec", "pg", "--", "ls"])
    assert result.returncode == 2
    assert b"-c" in result.stderr and b"pg is a postgres connection" in result.stderr


def test_exec_needs_something_to_run(stack: Stack) -> None:
    result = run(stack, ["exec", "web-1"])
    assert result.returncode == 2
    assert b"nothing to run" in result.stderr


def test_unknown_connection_is_refused_with_its_reason(stack: Stack) -> None:
    result = run(stack, ["exec", "nope", "--", "true"])
    assert result.returncode == 1
    assert b"nope" in result.stderr


# ---- gatehouse ssh NAME --------------------------------------------------------------------------


def spawn_ssh(stack: Stack, *args: str) -> pexpect.spawn:
    return pexpect.spawn(
        GATEHOUSE[0],
        [*GATEHOUSE[1:], "ssh", "web-1", *args],
        env=env(stack, TERM="xterm"),
        cwd=str(REPO),
        dimensions=(24, 80),
        timeout=20,
    )


def test_interactive_session_resize_ctrl_c_exit_status_and_replay(
    stack: Stack, tmp_path: Path
) -> None:
    child = spawn_ssh(stack)
    try:
        child.sendline("echo hi-$((40+2))")
        child.expect("hi-42")
        child.setwinsize(33, 101)
        child.sendline("stty size")
        child.expect("33 101")
        child.sendline("sleep 30")
        time.sleep(1)
        child.sendcontrol("c")
        started = time.monotonic()
        child.sendline("echo after-$((2+2))")
        child.expect("after-4", timeout=10)
        assert time.monotonic() - started < 10, "Ctrl-C interrupted the sleep"
        child.sendline("exit 3")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 3

    listed = run(stack, ["sessions", "list", "--connection", "web-1", "-o", "json"])
    recorded = [s for s in json.loads(listed.stdout) if s["recorded"] and s["mode"] == "connect"]
    session_id = recorded[0]["id"]
    played = run(stack, ["sessions", "replay", session_id, "--instant"])
    assert played.returncode == 0, played.stderr
    assert b"hi-42" in played.stdout and b"after-4" in played.stdout

    cast = tmp_path / "session.cast"
    written = run(stack, ["sessions", "replay", session_id, "--output", str(cast)])
    assert written.returncode == 0, written.stderr
    lines = cast.read_bytes().splitlines()
    assert json.loads(lines[0])["version"] == 2
    assert any(json.loads(line)[1] == "o" and "hi-42" in json.loads(line)[2] for line in lines[1:])
    to_stdout = run(stack, ["sessions", "replay", session_id, "--output", "-"])
    assert to_stdout.stdout == cast.read_bytes()


def test_ssh_runs_a_command_with_a_terminal(stack: Stack) -> None:
    child = spawn_ssh(stack, "--", "tty; exit 7")
    try:
        child.expect("/dev/pts/")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 7


def test_ssh_without_a_terminal_says_so(stack: Stack) -> None:
    result = run(stack, ["ssh", "web-1"])
    assert result.returncode == 2
    assert b"stdin is not a terminal" in result.stderr


def test_replay_of_a_database_session_prints_its_statements(stack: Stack) -> None:
    tag = f"m{uuid.uuid4().hex[:8]}"
    result = run(stack, ["exec", "pg", "-c", f"select '{tag}' as tag", "-o", "json"])
    assert result.returncode == 0, result.stderr
    session_id = json.loads(result.stdout)["session_id"]
    played = run(stack, ["sessions", "replay", session_id])
    assert played.returncode == 0, played.stderr
    assert f"select '{tag}' as tag".encode() in played.stdout
    assert "→ SELECT, 1 rows".encode() in played.stdout


# ---- native ssh, scp and sftp through gatehouse connect ------------------------------------------


class Native:
    """`gatehouse connect web-1` and the options a native client needs to pin and log in."""

    def __init__(self, stack: Stack, base: Path) -> None:
        self.base = base
        self.config = base / "config"
        self.key = base / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)], check=True
        )
        self.listener = Connect(
            args=[
                "connect",
                "web-1",
                "--port",
                str(port := free_port()),
                "--authorized-keys",
                f"{self.key}.pub",
            ],
            log_file=base / "connect-web-1.log",
            env={**stack.controlplane.cli_env, "XDG_CONFIG_HOME": str(self.config)},
            port=port,
        )
        self.listener.start_and_wait()
        host_key = self.config / "gatehouse" / "ssh_host_ed25519_key"
        public = subprocess.run(
            ["ssh-keygen", "-y", "-f", str(host_key)], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.known_hosts = base / "known_hosts"
        self.known_hosts.write_text(f"gatehouse-web-1 {public}\n")

    def options(self, key: Path | None = None) -> list[str]:
        return [
            "-i",
            str(key or self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "HostKeyAlias=gatehouse-web-1",
            "-F",
            "/dev/null",
        ]

    def ssh(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        command = ["ssh", "-p", str(self.listener.port), *self.options(), "localhost", *args]
        return subprocess.run(command, input=stdin, capture_output=True, timeout=60, check=False)

    def scp(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        command = ["scp", "-P", str(self.listener.port), *self.options(), *args]
        return subprocess.run(command, capture_output=True, timeout=120, check=False)

    def sftp(self, batch: str) -> subprocess.CompletedProcess[bytes]:
        script = self.base / "batch"
        script.write_text(batch)
        command = ["sftp", "-P", str(self.listener.port), *self.options(), "-b", str(script)]
        return subprocess.run(
            [*command, "localhost"], capture_output=True, timeout=120, check=False
        )


@pytest.fixture(scope="module")
def native(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Native]:
    client = Native(stack, tmp_path_factory.mktemp("native"))
    yield client
    client.listener.stop()


def test_native_ssh_runs_a_command_and_returns_its_status(native: Native) -> None:
    result = native.ssh("echo $((6*7)); echo oops >&2; exit 5")
    assert result.returncode == 5, result.stderr
    assert result.stdout == b"42\n"
    assert b"oops\n" in result.stderr
    log = native.listener.log()
    assert "exec 'echo $((6*7)); echo oops >&2; exit 5' → session" in log


def test_native_ssh_terminal_session(native: Native) -> None:
    command = ["-p", str(native.listener.port), *native.options(), "-tt", "localhost"]
    child = pexpect.spawn("ssh", command, dimensions=(30, 90), timeout=20)
    try:
        child.sendline("stty size; echo hi-$((1+1))")
        child.expect("30 90")
        child.expect("hi-2")
        child.sendline("exit 4")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 4
    assert "shell with a terminal → session" in native.listener.log()


def test_native_ssh_streams_stdin(native: Native) -> None:
    data = os.urandom(1024 * 1024)
    result = native.ssh("sha256sum", stdin=data)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("protocol", [[], ["-O"]], ids=["sftp-based", "legacy-scp"])
def test_scp_copies_both_ways_intact(native: Native, tmp_path: Path, protocol: list[str]) -> None:
    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(5 * 1024 * 1024 + 123))
    remote = tmp_path / "on-target.bin"
    sent = native.scp(*protocol, str(source), f"localhost:{remote}")
    assert sent.returncode == 0, sent.stderr
    on_target = native.ssh(f"sha256sum {shlex.quote(str(remote))}")
    assert on_target.stdout.split()[0].decode() == sha256(source)
    back = tmp_path / "back.bin"
    fetched = native.scp(*protocol, f"localhost:{remote}", str(back))
    assert fetched.returncode == 0, fetched.stderr
    assert sha256(back) == sha256(source)


def test_sftp_put_and_get(native: Native, tmp_path: Path) -> None:
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    remote, back = tmp_path / "remote.bin", tmp_path / "down.bin"
    result = native.sftp(f"put {source} {remote}\nget {remote} {back}\n")
    assert result.returncode == 0, result.stderr
    assert sha256(back) == sha256(source) == sha256(remote)
    assert "subsystem sftp → session" in native.listener.log()


def test_port_forwarding_is_refused(native: Native) -> None:
    result = native.ssh("-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", "true")
    assert result.returncode == 255
    assert b"forwarding failed" in result.stderr


def test_a_key_not_listed_cannot_log_in(native: Native, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    command = ["ssh", "-p", str(native.listener.port), *native.options(other), "localhost", "true"]
    result = subprocess.run(command, capture_output=True, timeout=30, check=False)
    assert result.returncode == 255
    assert b"Permission denied" in result.stderr


def test_connect_refuses_to_start_without_keys(stack: Stack, tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.write_text("# nobody\n")
    result = run(stack, ["connect", "web-1", "--port", "0", "--authorized-keys", str(empty)])
    assert result.returncode == 2
    assert b"no public key" in result.stderr


def test_native_ssh_program_on_stdin_is_checked_and_recorded(
    native: Native, stack: Stack, tmp_path: Path
) -> None:
    victim = tmp_path / f"victim-{uuid.uuid4().hex[:8]}"
    victim.mkdir()
    denied = native.ssh("bash", stdin=f"echo first\nrm -rf {victim}\n".encode())
    assert denied.returncode == 126, denied.stderr
    assert b"program on stdin" in denied.stderr and denied.stdout == b""
    assert victim.is_dir()  # `rm -rf /*` matched the program: nothing of it ran
    marker = uuid.uuid4().hex
    allowed = native.ssh("sh", stdin=f"echo {marker}\n".encode())
    assert (allowed.returncode, allowed.stdout) == (0, f"{marker}\n".encode()), allowed.stderr
    [event] = [
        e
        for e in stack.events()
        if e["type"] == "ssh.exec" and marker in e["request"].get("stdin", {}).get("text", "")
    ]
    assert event["request"]["command"] == "sh"
    assert (
        event["request"]["stdin"]["sha256"]
        == hashlib.sha256(f"echo {marker}\n".encode()).hexdigest()
    )


def big5_locale() -> str:
    """A Big5 locale on this machine (whose double-byte characters may end in `\\`): `make
    install` makes one (deploy/system-deps.sh)."""
    listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False)
    for name in listed.stdout.split():
        if name.lower().endswith((".big5", ".big5hkscs", ".gbk", ".sjis")):
            return name
    raise AssertionError(
        "no Big5/GBK/SJIS locale here: run `make install`, or "
        "`localedef -i zh_TW -f BIG5 zh_TW.BIG5` as root"
    )


def test_a_client_locale_cannot_change_how_the_target_reads_a_command(
    native: Native, stack: Stack, tmp_path: Path
) -> None:
    """`echo "中\\" ; rm -rf DIR ; # "` is one echo in UTF-8, which the guardrail reads; in
    Big5, `中`'s last byte and the backslash are one character, the quote closes, and bash runs
    `rm -rf DIR`. A locale from the client that is not UTF-8 never reaches the target (the
    listener leaves it out; the control plane refuses a start that carries one)."""
    locale = big5_locale()
    victim = tmp_path / f"victim-{uuid.uuid4().hex[:8]}"
    victim.mkdir()
    (victim / "keep").write_text("data\n")
    command = f'echo "中\\" ; rm -rf {victim} ; # "'
    result = native.ssh("-o", f"SetEnv=LC_ALL={locale} LANG=C.UTF-8", command)
    assert (victim / "keep").read_text() == "data\n"  # nothing but an echo ran
    assert result.returncode == 0, result.stderr
    [event] = [e for e in stack.events() if e.get("request", {}).get("command") == command]
    assert event["decision"] == {"result": "allow"}
    assert event["request"]["env"] == {"LANG": "C.UTF-8"}  # what reached the target
    assert f"LC_ALL={locale} is not a UTF-8 locale" in native.listener.log()


RAW_TERMINAL = """
import asyncio, sys
from cli import rpc
from cli.session import open_session
from cli.term import stream as term
from wire.term.codec import Pty, Start

async def keys():
    for keys in sys.argv[3:]:
        await asyncio.sleep(1.5)
        yield keys.encode()
    await asyncio.sleep(1.5)

async def work(channel):
    opened = await open_session(channel, rpc.metadata(), sys.argv[1], "exec", "raw")
    async with term.TermSession(opened) as session:
        start = Start(argv=tuple(sys.argv[2].split()), pty=Pty())
        exit_ = await term.relay(session, start, keys(), term.StdStreams())
    print(f"\\nstatus {exit_.status}", file=sys.stderr)

rpc.call(rpc.controlplane_address(None), work)
"""


@pytest.mark.parametrize(
    ("connection", "program", "keys"),
    [
        ("web-1", "less /etc/hostname", ["!touch {marker}\n", "\nq"]),
        ("web-1", "more /etc/passwd", ["!touch {marker}\n", "\nq"]),
        ("web-1", "tmux", ["touch {marker}\r", "exit\r"]),
    ],
    ids=["less", "more", "tmux"],
)
def test_exec_mode_gives_no_terminal(
    stack: Stack, tmp_path: Path, connection: str, program: str, keys: list[str]
) -> None:
    """A terminal is the connect mode's: in exec mode a command with a pty is refused, or
    `less`'s `!`, `more`'s `!` or `tmux` would be an interactive shell there."""
    require_tool(program.split(maxsplit=1)[0])
    marker = tmp_path / f"ran-{uuid.uuid4().hex[:8]}"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RAW_TERMINAL,
            connection,
            program,
            *(k.format(marker=marker) for k in keys),
        ],
        capture_output=True,
        env=env(stack),
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert not marker.exists(), result.stderr
    assert b"status 126" in result.stderr, result.stderr
    assert b"connect mode" in result.stderr
