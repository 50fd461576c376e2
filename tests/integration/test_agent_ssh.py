"""The agent's `ssh` engine against a real OpenSSH server, driven as the tunnel drives it."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import struct
import subprocess
from pathlib import Path

import asyncssh
import pytest

from agent.term import ssh
from devenv.sshd import Sshd
from tests.integration.term_client import TermClient, run_command
from wire.term import codec

PTY = codec.Pty("xterm", 80, 24)


def target(sshd: Sshd, known_hosts: str | None = None) -> dict[str, object]:
    """As the control plane pushes it: a Struct turned dict, so the port is a float."""
    return {
        "host": sshd.host,
        "port": float(sshd.port),
        "user": sshd.user,
        "known_hosts": sshd.host_key_line if known_hosts is None else known_hosts,
    }


def key_secret(sshd: Sshd) -> dict[str, str]:
    return {"private_key": f"file:{sshd.client_key}"}


async def run(
    sshd: Sshd,
    start: codec.Start,
    stdin: bytes | None = None,
    *,
    known_hosts: str | None = None,
    secrets: dict[str, str] | None = None,
) -> tuple[str, TermClient]:
    secrets = key_secret(sshd) if secrets is None else secrets
    return await run_command(ssh.run, target(sshd, known_hosts), secrets, start, stdin)


async def open_session(sshd: Sshd, start: codec.Start) -> TermClient:
    return await TermClient.open(ssh.run, target(sshd), key_secret(sshd), start)


async def test_command_keeps_stdout_and_stderr_apart_and_reports_its_status(sshd: Sshd) -> None:
    _, client = await run(sshd, codec.Start(command="echo out; echo err >&2; exit 3"))
    assert (client.stdout, client.stderr) == (b"out\n", b"err\n")
    assert client.exit == codec.Exit(3)


async def test_argv_runs_as_its_command_line(sshd: Sshd) -> None:
    reason, client = await run(sshd, codec.Start(argv=("echo", "hello", "world")))
    assert client.stdout == b"hello world\n"
    assert client.exit == codec.Exit(0)
    assert "status 0" in reason


async def test_stdin_is_streamed_whole(sshd: Sshd) -> None:
    data = os.urandom(5 * 1024 * 1024)
    _, client = await run(sshd, codec.Start(argv=("sha256sum",)), stdin=data)
    assert client.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    assert client.exit == codec.Exit(0)


async def test_login_shell_gets_a_terminal_that_follows_the_window(sshd: Sshd) -> None:
    client = await open_session(sshd, codec.Start(pty=PTY))
    await client.write(b"tty\n")
    await client.wait_for(b"/dev/pts/")
    await client.window(100, 40)
    await client.write(b"stty size\n")
    await client.wait_for(b"40 100")
    await client.write(b"exit 7\n")
    await client.ended()
    assert client.exit == codec.Exit(7)
    assert client.stderr == b"", "with a terminal everything arrives on stdout"


async def test_signal_ends_a_command(sshd_unprivileged: Sshd) -> None:
    # An ordinary account: sshd runs a root login without privilege separation and then
    # ignores signal requests ("session signalling requires privilege separation").
    client = await open_session(sshd_unprivileged, codec.Start(command="echo ready; exec sleep 30"))
    await client.wait_for(b"ready")
    await client.signal("INT")
    await client.ended()
    assert client.exit == codec.Exit(130, signal="INT")


async def test_ctrl_c_on_the_terminal_ends_a_command(sshd: Sshd) -> None:
    client = await open_session(sshd, codec.Start(command="echo ready; exec sleep 30", pty=PTY))
    await client.wait_for(b"ready")
    await client.write(b"\x03")
    await client.ended()
    assert client.exit == codec.Exit(130, signal="INT")


async def test_client_leaving_ends_the_session(sshd: Sshd) -> None:
    client = await open_session(sshd, codec.Start(command="echo ready; exec sleep 30", pty=PTY))
    await client.wait_for(b"ready")
    await client.leave()
    assert await client.ended() == "the client left"
    assert client.exit is None


async def test_sftp_subsystem_answers_its_version(sshd: Sshd) -> None:
    client = await open_session(sshd, codec.Start(subsystem="sftp"))
    await client.write(struct.pack("!IBI", 5, 1, 3))  # SSH_FXP_INIT, version 3
    await client.wait_until(lambda: len(client.stdout) >= 9)
    length, kind, version = struct.unpack_from("!IBI", client.stdout)
    assert (kind, version) == (2, 3)  # SSH_FXP_VERSION
    await client.eof()
    await client.ended()
    assert len(client.stdout) == 4 + length
    assert client.exit == codec.Exit(0)


@pytest.mark.parametrize("form", ["bare", "full"])
async def test_pinned_host_key_is_accepted_in_either_form(sshd: Sshd, form: str) -> None:
    line = sshd.host_key_line if form == "bare" else sshd.known_hosts_line
    known_hosts = f"# pinned by the policy\n\n{line}\n"
    _, client = await run(sshd, codec.Start(argv=("true",)), known_hosts=known_hosts)
    assert client.exit == codec.Exit(0)


async def test_host_key_mismatch_is_refused_before_anything_runs(
    sshd: Sshd, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    reason, client = await run(sshd, codec.Start(command=f"touch {marker}"), known_hosts=other)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255 and exit_.error is not None
    fingerprint = asyncssh.import_public_key(sshd.host_key_line).get_fingerprint()
    assert exit_.error.startswith(f"host key of {sshd.host}:{sshd.port} ({fingerprint})")
    assert "does not match the connection's known_hosts" in exit_.error
    assert "update known_hosts in the policy" in exit_.error
    assert client.stdout == client.stderr == b""
    assert not marker.exists()
    assert reason.startswith("refused")


async def test_known_hosts_line_of_another_host_does_not_vouch(sshd: Sshd, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    other_host = f"[other.example]:{sshd.port} {sshd.host_key_line}"
    _, client = await run(sshd, codec.Start(command=f"touch {marker}"), known_hosts=other_host)
    assert client.exit is not None and "does not match" in (client.exit.error or "")
    assert not marker.exists()


async def test_wrong_key_is_refused_clearly(sshd: Sshd, tmp_path: Path) -> None:
    marker, key_file = tmp_path / "ran", tmp_path / "stranger"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(key_file)
    secrets = {"private_key": f"file:{key_file}"}
    _, client = await run(sshd, codec.Start(command=f"touch {marker}"), secrets=secrets)
    assert client.exit == codec.Exit(
        255,
        error=f"{sshd.user}@{sshd.host}:{sshd.port} refused the agent's private key; check "
        f"that the connection's credentials are authorized for {sshd.user} there",
    )
    assert not marker.exists()


def _lock(key: Path, locked: Path, form: str, passphrase: str) -> None:
    if form == "openssh":  # what `ssh-keygen -N` writes (bcrypt KDF)
        locked.write_bytes(key.read_bytes())
        locked.chmod(0o600)
        command = ["ssh-keygen", "-q", "-p", "-P", "", "-N", passphrase, "-f", str(locked)]
        subprocess.run(command, check=True, capture_output=True)
    else:
        asyncssh.read_private_key(key).write_private_key(
            locked, format_name="pkcs8-pem", passphrase=passphrase
        )


@pytest.mark.parametrize("form", ["pkcs8", "openssh"])
async def test_encrypted_key_opens_with_its_passphrase(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str
) -> None:
    key_file = tmp_path / "locked"
    _lock(sshd.client_key, key_file, form, "open up")
    secrets = {"private_key": f"file:{key_file}", "passphrase": "env:GATEHOUSE_TEST_PASSPHRASE"}
    monkeypatch.setenv("GATEHOUSE_TEST_PASSPHRASE", "open up")
    _, client = await run(sshd, codec.Start(argv=("true",)), secrets=secrets)
    if form == "openssh" and importlib.util.find_spec("bcrypt") is None:
        assert client.exit is not None and "needs the bcrypt package" in (client.exit.error or "")
        return
    assert client.exit == codec.Exit(0)
    monkeypatch.setenv("GATEHOUSE_TEST_PASSPHRASE", "wrong")
    _, client = await run(sshd, codec.Start(argv=("true",)), secrets=secrets)
    assert client.exit == codec.Exit(
        255,
        error=f"the private key (file:{key_file}) does not open with the connection's "
        "passphrase; fix the passphrase secret",
    )


async def test_encrypted_key_without_passphrase_says_so(sshd: Sshd, tmp_path: Path) -> None:
    key_file = tmp_path / "locked"
    _lock(sshd.client_key, key_file, "pkcs8", "open up")
    _, client = await run(
        sshd, codec.Start(argv=("true",)), secrets={"private_key": f"file:{key_file}"}
    )
    assert client.exit is not None and client.exit.status == 255
    assert (client.exit.error or "").endswith("add a passphrase secret")


async def test_wrong_password_is_refused_without_showing_it(
    sshd: Sshd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEHOUSE_TEST_SSH_PASSWORD", "hunter2-not-it")
    secrets = {"password": "env:GATEHOUSE_TEST_SSH_PASSWORD"}
    _, client = await run(sshd, codec.Start(argv=("true",)), secrets=secrets)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert "refused the agent's password" in (exit_.error or "")
    assert "hunter2" not in (exit_.error or "")


async def test_unresolvable_secret_names_the_reference(sshd: Sshd) -> None:
    secrets = {"private_key": "env:GATEHOUSE_TEST_NO_SUCH_KEY"}
    _, client = await run(sshd, codec.Start(argv=("true",)), secrets=secrets)
    assert client.exit == codec.Exit(
        255,
        error="gatehouse agent: environment variable GATEHOUSE_TEST_NO_SUCH_KEY is not set "
        "on the agent",
    )


async def test_unreachable_target_is_refused_clearly(sshd: Sshd) -> None:
    closed = {**target(sshd), "port": 1.0}
    _, client = await run_command(ssh.run, closed, key_secret(sshd), codec.Start(argv=("true",)))
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert (exit_.error or "").startswith(f"cannot reach {sshd.host}:1: ")


async def test_missing_known_hosts_is_refused_not_trusted(sshd: Sshd) -> None:
    _, client = await run(sshd, codec.Start(argv=("true",)), known_hosts="")
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert "known_hosts is unusable" in (exit_.error or "")


async def test_pinned_key_of_a_type_the_host_lacks_is_refused_clearly(sshd: Sshd) -> None:
    rsa = asyncssh.generate_private_key("ssh-rsa").export_public_key().decode()
    _, client = await run(sshd, codec.Start(argv=("true",)), known_hosts=rsa)
    exit_ = client.exit
    assert exit_ is not None and exit_.status == 255
    assert "pins a key of a type the host has" in (exit_.error or "")


@pytest.mark.parametrize(
    "env", [{"LC_ALL": "zh_TW.BIG5"}, {"LANG": "ja_JP.SJIS"}, {"GATEHOUSE_X": "accepted there"}]
)
async def test_an_environment_the_gateway_did_not_decide_on_is_refused(
    sshd: Sshd, tmp_path: Path, env: dict[str, str]
) -> None:
    """A locale whose double-byte characters end in a backslash would make the target's shell
    read another command than the gateway did; nothing but a UTF-8 or C locale goes there."""
    logins = sshd.log().count("Accepted publickey")
    marker = tmp_path / "ran"
    _, client = await run(sshd, codec.Start(command=f"touch {marker}", env=env))
    assert client.exit is not None and client.exit.status == 255
    assert client.exit.error is not None and "not run" in client.exit.error
    assert not marker.exists()
    assert sshd.log().count("Accepted publickey") == logins


async def test_a_utf8_locale_reaches_the_target(sshd: Sshd) -> None:
    _, client = await run(sshd, codec.Start(command="echo $LC_ALL", env={"LC_ALL": "C.UTF-8"}))
    assert (client.stdout, client.exit) == (b"C.UTF-8\n", codec.Exit(0))
