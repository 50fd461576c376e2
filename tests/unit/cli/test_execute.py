"""`gatehouse exec`'s arguments: what runs on an ssh or shell connection, and the usage
errors that are caught before anything is sent."""

from __future__ import annotations

import pytest

from cli import main
from cli.errors import USAGE
from cli.term.command import command_start
from wire.term import codec


def test_words_after_dashes_are_an_argv() -> None:
    start = command_start(["tar", "x", "-C", "/tmp/x y"], None)
    assert start == codec.Start(argv=("tar", "x", "-C", "/tmp/x y"))
    assert start.command_line() == "tar x -C /tmp/x y"
    assert start.pty is None


def test_dash_c_text_is_kept_verbatim() -> None:
    start = command_start([], "cd /srv && ls -la | head -3")
    assert start == codec.Start(command="cd /srv && ls -la | head -3")
    assert codec.parse_start(codec.encode_start(start)[5:]) == start


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["exec", "web-1"], "nothing to run"),
        (["exec", "web-1", "-c", "ls", "--", "ls"], "not both"),
    ],
)
def test_usage_errors_need_no_control_plane(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("GATEHOUSE_CONTROLPLANE", "127.0.0.1:1")
    assert main.main(args) == USAGE
    assert message in capsys.readouterr().err
