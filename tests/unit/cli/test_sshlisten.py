"""The SSH listener's local leg: which keys may log in, its host key, and what a channel asks."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import asyncssh
import pytest

from cli.errors import USAGE, CliError
from cli.term import listen as sshlisten
from wire.term import codec


def public_key(name: str) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=name)
    return key.export_public_key().decode().strip()


def test_keys_come_from_every_file_given(tmp_path: Path) -> None:
    one, two = tmp_path / "authorized_keys", tmp_path / "id_ed25519.pub"
    one.write_text(f'# mine\n\n{public_key("a")}\nfrom="127.0.0.1" {public_key("b")}\n')
    two.write_text(public_key("c") + "\n")
    _, count = sshlisten.load_authorized_keys([one, two])
    assert count == 3


def test_no_key_at_all_is_refused_with_what_to_do(tmp_path: Path) -> None:
    empty = tmp_path / "authorized_keys"
    empty.write_text("# nothing yet\n")
    with pytest.raises(CliError, match="ssh-keygen -t ed25519") as caught:
        sshlisten.load_authorized_keys([empty])
    assert caught.value.exit_code == USAGE
    with pytest.raises(CliError, match="--authorized-keys"):
        sshlisten.load_authorized_keys([])


def test_a_line_that_is_not_a_key_names_its_file_and_line(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{public_key('a')}\nssh-ed25519 not-base64!\n")
    with pytest.raises(CliError, match=re.escape(f"{keys}:2: not a public key")):
        sshlisten.load_authorized_keys([keys])


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(CliError, match=r"cannot read .*missing"):
        sshlisten.load_authorized_keys([tmp_path / "missing"])


def test_default_files_are_authorized_keys_and_id_pub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    ssh_dir = tmp_path / ".ssh"
    ssh_dir.mkdir()
    assert sshlisten.default_key_files() == []
    for name in ("id_rsa.pub", "id_ed25519.pub", "id_ed25519", "authorized_keys", "config"):
        (ssh_dir / name).write_text("")
    assert [p.name for p in sshlisten.default_key_files()] == [
        "authorized_keys",
        "id_ed25519.pub",
        "id_rsa.pub",
    ]


def test_the_host_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    directory = tmp_path / "config" / "gatehouse"
    first, path = sshlisten.host_key(directory)
    assert path == directory / sshlisten.HOST_KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, _ = sshlisten.host_key(directory)
    assert again.get_fingerprint() == first.get_fingerprint()
    assert [p.name for p in directory.iterdir()] == [sshlisten.HOST_KEY_FILE], "no temp left"
    public = subprocess.run(
        ["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True
    )
    assert public.stdout.split()[1] == first.export_public_key().decode().split()[1]


def test_a_damaged_host_key_says_how_to_recover(tmp_path: Path) -> None:
    (tmp_path / sshlisten.HOST_KEY_FILE).write_text("garbage")
    with pytest.raises(CliError, match="remove it to make a new one"):
        sshlisten.host_key(tmp_path)


@pytest.mark.parametrize(
    ("start", "described"),
    [
        (codec.Start(command="scp -t /tmp"), "exec 'scp -t /tmp'"),
        (codec.Start(command="top", pty=codec.Pty()), "exec 'top' with a terminal"),
        (codec.Start(subsystem="sftp"), "subsystem sftp"),
        (codec.Start(pty=codec.Pty()), "shell with a terminal"),
    ],
)
def test_each_channel_is_described_in_one_line(start: codec.Start, described: str) -> None:
    assert sshlisten._describe(start) == described
