"""Profiles: which control plane, CA and login a command uses, and how they sit on disk."""

from __future__ import annotations

import os
import socket
import stat
import tomllib
from pathlib import Path

import pytest

from cli import profiles, rpc
from cli.errors import CliError
from cli.tokenstore import TokenStore, default_token_path

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


@pytest.fixture(autouse=True)
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty configuration directory and none of the variables that pick a target."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("GATEHOUSE_CONTROLPLANE", "GATEHOUSE_CA_FILE", "GATEHOUSE_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path / "xdg" / "gatehouse"


def _ca(tmp_path: Path, name: str = "ca.pem") -> str:
    path = tmp_path / name
    path.write_text(CA_PEM)
    return str(path)


def test_without_profiles_the_default_is_loopback_8443_and_tokens_json(config: Path) -> None:
    target = profiles.resolve()
    assert (target.address, target.ca_file, target.profile, target.source) == (
        "127.0.0.1:8443",
        None,
        "default",
        "default",
    )
    assert default_token_path() == config / "tokens.json"
    assert rpc.controlplane_address(None) == "127.0.0.1:8443"


def test_precedence_flag_over_environment_over_profile_over_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles.remember(
        "prod", "gw.example.com:8443", ca_file=_ca(tmp_path), issuer=None, client_id=None
    )
    kept = profiles.resolve()
    assert (kept.address, kept.profile, kept.source) == ("gw.example.com:8443", "prod", "profile")
    assert kept.ca_file is not None and Path(kept.ca_file).read_text() == CA_PEM

    monkeypatch.setenv("GATEHOUSE_CONTROLPLANE", "env.example.com:9443")
    monkeypatch.setenv("GATEHOUSE_CA_FILE", "/env/ca.pem")
    from_env = profiles.resolve()
    assert (from_env.address, from_env.ca_file, from_env.source) == (
        "env.example.com:9443",
        "/env/ca.pem",
        "flag",
    )
    assert rpc.controlplane_address(None) == "env.example.com:9443"

    flagged = profiles.resolve("flag.example.com:1443", "/flag/ca.pem")
    assert (flagged.address, flagged.ca_file) == ("flag.example.com:1443", "/flag/ca.pem")
    assert rpc.controlplane_address("flag.example.com:1443") == "flag.example.com:1443"


def test_a_profiles_ca_is_never_used_for_another_address(tmp_path: Path) -> None:
    profiles.remember(
        "prod", "gw.example.com:8443", ca_file=_ca(tmp_path), issuer=None, client_id=None
    )
    other = profiles.resolve("elsewhere.example.com:8443")
    assert other.ca_file is None  # system trust, not the prod CA
    assert other.profile == "elsewhere.example.com"  # nor the prod login
    assert TokenStore().path == profiles.token_path("elsewhere.example.com")
    same = profiles.resolve("gw.example.com:8443")
    assert same.profile == "prod" and same.ca_file is not None


def test_an_explicit_address_picks_the_profile_that_names_it(tmp_path: Path) -> None:
    profiles.remember("a", "a.example.com:8443", ca_file=None, issuer=None, client_id=None)
    profiles.remember("b", "b.example.com:8443", ca_file=None, issuer=None, client_id=None)
    assert profiles.resolve().profile == "b"  # the last login's
    assert profiles.resolve("a.example.com:8443").profile == "a"
    assert profiles.resolve(profile="a").address == "a.example.com:8443"
    assert TokenStore().path == profiles.token_path("a")  # the login follows the choice


def test_profile_by_environment_and_unknown_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    profiles.remember("a", "a.example.com:8443", ca_file=None, issuer=None, client_id=None)
    profiles.remember("b", "b.example.com:8443", ca_file=None, issuer=None, client_id=None)
    monkeypatch.setenv("GATEHOUSE_PROFILE", "a")
    assert profiles.resolve().address == "a.example.com:8443"
    assert profiles.resolve(profile="b").address == "b.example.com:8443"  # the flag wins
    assert profiles.resolve("a.example.com:8443").profile == "a"  # its own address: fine
    with pytest.raises(CliError, match=r"profile 'a' is for a\.example\.com:8443, not x:1"):
        profiles.resolve("x:1")  # another address: its login is not sent there
    with pytest.raises(CliError, match="no profile 'nope'"):
        profiles.resolve(profile="nope")
    with pytest.raises(CliError, match="not a profile name"):
        profiles.resolve(profile="../../etc")


def test_files_are_private_whatever_the_umask(tmp_path: Path, config: Path) -> None:
    old = os.umask(0)
    try:
        profiles.remember(
            "prod",
            "gw.example.com:8443",
            ca_file=_ca(tmp_path),
            issuer="https://idp",
            client_id="c",
        )
    finally:
        os.umask(old)
    for path in (config / "profiles.toml", config / "ca" / "prod.pem"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(config.stat().st_mode) == 0o700
    assert stat.S_IMODE((config / "ca").stat().st_mode) == 0o700
    document = tomllib.loads((config / "profiles.toml").read_text())
    assert document == {
        "current": "prod",
        "profiles": {
            "prod": {
                "controlplane": "gw.example.com:8443",
                "ca_file": str(config / "ca" / "prod.pem"),
                "issuer": "https://idp",
                "client_id": "c",
            }
        },
    }
    assert sorted(p.name for p in config.iterdir()) == ["ca", "profiles.toml"]  # no temp files


def test_the_ca_is_a_copy_taken_at_login(tmp_path: Path) -> None:
    original = Path(_ca(tmp_path))
    profiles.remember(
        "prod", "gw.example.com:8443", ca_file=str(original), issuer=None, client_id=None
    )
    original.write_text("replaced by someone else")
    kept = profiles.resolve().ca_file
    assert kept is not None and Path(kept).read_text() == CA_PEM


def test_a_ca_file_that_is_no_certificate_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(CliError, match="holds no PEM certificate"):
        profiles.remember("x", "x:1", ca_file=str(bad), issuer=None, client_id=None)
    with pytest.raises(CliError, match="cannot read the CA file"):
        profiles.remember(
            "x", "x:1", ca_file=str(tmp_path / "missing.pem"), issuer=None, client_id=None
        )


def test_forget_removes_the_profile_and_its_ca(tmp_path: Path, config: Path) -> None:
    profiles.remember(
        "prod", "gw.example.com:8443", ca_file=_ca(tmp_path), issuer=None, client_id=None
    )
    assert profiles.forget("prod") is not None
    assert profiles.forget("prod") is None
    assert not (config / "ca" / "prod.pem").exists()
    assert profiles.resolve().address == "127.0.0.1:8443"


def test_a_damaged_profile_file_is_explained(config: Path) -> None:
    config.mkdir(parents=True)
    (config / "profiles.toml").write_text("[profiles.x]\ncontrolplane = 3\n")
    with pytest.raises(CliError, match=r"cannot read the profiles in .*fix or remove it"):
        profiles.resolve()
    (config / "profiles.toml").write_text("not toml [")
    with pytest.raises(CliError, match="cannot read the profiles"):
        profiles.resolve()


@pytest.mark.parametrize(
    ("address", "name"),
    [
        ("gw.example.com:8443", "gw.example.com"),
        ("gw.example.com:9443", "gw.example.com-9443"),
        ("127.0.0.1:18443", "127.0.0.1-18443"),
        ("[::1]:8443", "h--1"),
    ],
)
def test_profile_names_from_addresses(address: str, name: str) -> None:
    assert profiles.name_for(address) == name
    assert profiles.token_path(name).name == f"tokens-{name}.json"


def test_a_profile_file_others_may_write_is_refused(config: Path) -> None:
    profiles.remember("prod", "gw.example.com:8443", ca_file=None, issuer=None, client_id=None)
    (config / "profiles.toml").chmod(0o666)
    with pytest.raises(CliError, match="writable by others: `chmod 600"):
        profiles.resolve()


def test_before_any_profile_the_one_login_serves_every_address(config: Path) -> None:
    """A login made before profiles existed (tokens.json alone) keeps working."""
    target = profiles.resolve("127.0.0.1:18443")
    assert (target.address, target.profile) == ("127.0.0.1:18443", "default")
    assert TokenStore().path == config / "tokens.json"


def test_login_discovery_keeps_the_ca_login_chose(tmp_path: Path) -> None:
    """`login --controlplane A --ca-file F` asks A how to log in through F, not system trust."""
    from cli.login import discover_login

    with socket.socket() as probe:  # nothing listens there
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    profiles.select(profiles.Target(address, "/chosen/ca.pem", "p", "flag"))
    # The channel opened for discovery reads the chosen CA (here: missing, so it says so).
    with pytest.raises(CliError, match=r"the CA file /chosen/ca\.pem"):
        discover_login(address)
    assert profiles.selected().ca_file == "/chosen/ca.pem"


def test_the_token_flag_and_variable_win_over_the_profiles_login(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from cli.tokenstore import TokenSet

    profiles.remember("prod", "gw.example.com:8443", ca_file=None, issuer=None, client_id=None)
    stored = TokenSet(
        access_token="from-profile",
        expires_at=time.time() + 600,
        issuer="https://idp.example",
        client_id="c",
        token_endpoint="https://idp.example/token",
    )
    TokenStore(profiles.token_path("prod")).save(stored)
    monkeypatch.delenv("GATEHOUSE_TOKEN", raising=False)
    assert rpc.controlplane_address(None) == "gw.example.com:8443"
    assert rpc.token() == "from-profile"
    monkeypatch.setenv("GATEHOUSE_TOKEN", "from-env")
    assert rpc.token() == "from-env"
    assert rpc.token("from-flag") == "from-flag"


def test_login_refuses_a_bad_ca_file_before_asking_anything(
    tmp_path: Path, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli.main import main

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    status = main(["login", "--controlplane", "gw.example.com:8443", "--ca-file", str(bad)])
    assert status == 2 and "holds no PEM certificate" in capsys.readouterr().err
    assert not config.exists()  # no profile, no token, no CA copy
