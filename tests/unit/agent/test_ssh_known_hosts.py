"""Which host keys a connection's known_hosts pins for its target (bare and full lines)."""

from __future__ import annotations

import asyncssh
import pytest

from agent.term.ssh import SshTarget, known_hosts_for

KEY = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
OTHER = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def trusted(
    known_hosts: asyncssh.SSHKnownHosts, host: str, port: int, addr: str = "192.0.2.1"
) -> set[bytes]:
    keys = asyncssh.match_known_hosts(known_hosts, host, addr, port)[0]
    return {key.public_data for key in keys}


def public_data(line: str) -> bytes:
    return asyncssh.import_public_key(line).public_data


@pytest.mark.parametrize("port", [22, 2222])
def test_bare_key_line_applies_to_the_target_only(port: int) -> None:
    pinned = known_hosts_for(f"{KEY} deploy@web-1\n", "10.0.3.7", port)
    assert trusted(pinned, "10.0.3.7", port) == {public_data(KEY)}
    assert trusted(pinned, "10.0.3.8", port) == set()


def test_full_lines_keep_their_hosts() -> None:
    text = f"# web-1 and web-2\n\n10.0.3.7 {KEY}\n[10.0.3.8]:2222 {OTHER}\n"
    pinned = known_hosts_for(text, "10.0.3.7", 22)
    assert trusted(pinned, "10.0.3.7", 22) == {public_data(KEY)}
    assert trusted(pinned, "10.0.3.8", 2222) == {public_data(OTHER)}


def test_host_named_like_nothing_special_is_not_taken_for_a_key_type() -> None:
    pinned = known_hosts_for(f"ssh-gateway {KEY}", "10.0.3.7", 22)
    assert trusted(pinned, "10.0.3.7", 22) == set()
    assert trusted(pinned, "ssh-gateway", 22) == {public_data(KEY)}


def test_markers_stay_as_written() -> None:
    pinned = known_hosts_for(f"{KEY}\n@revoked * {KEY}\n", "10.0.3.7", 22)
    revoked = asyncssh.match_known_hosts(pinned, "10.0.3.7", "10.0.3.7", 22)[2]
    assert {key.public_data for key in revoked} == {public_data(KEY)}


@pytest.mark.parametrize("text", ["", "\n  \n", "# nothing pinned yet\n"])
def test_nothing_pinned_is_an_error_not_trust(text: str) -> None:
    with pytest.raises(ValueError, match="no host key"):
        known_hosts_for(text, "10.0.3.7", 22)


def test_target_from_a_pushed_struct() -> None:
    spec = {"host": "::1", "port": 2222.0, "user": "deploy", "known_hosts": KEY}
    target = SshTarget.from_spec(spec)
    assert (target.port, target.address) == (2222, "[::1]:2222")
