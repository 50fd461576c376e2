"""A person needs only the control plane's address: it tells the CLI how to log in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.login import discover_login
from devenv.oidc import AUDIENCE, CLIENT_ID, OidcProvider
from devenv.stack import ControlPlane, gatehouse
from tests.integration.oidc.conftest import device_log_in


@pytest.fixture(scope="module")
def with_oidc(
    tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider
) -> Iterator[ControlPlane]:
    plane = ControlPlane.create(
        tmp_path_factory.mktemp("discovery"),
        env={"GATEHOUSE_OIDC_ISSUER": oidc.issuer, "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE},
    )
    plane.start_and_wait()
    yield plane
    plane.stop()


def test_login_settings_come_from_the_control_plane(
    with_oidc: ControlPlane, oidc: OidcProvider
) -> None:
    settings = discover_login(with_oidc.address)
    assert settings is not None
    assert settings.issuer == oidc.issuer
    assert settings.client_id == CLIENT_ID
    # The discovered settings really log in, and the control plane accepts the result.
    tokens = device_log_in(oidc, settings, "alice")
    listed = gatehouse(
        ["connections", "list", "-o", "json"],
        env={**with_oidc.cli_env, "GATEHOUSE_TOKEN": tokens.access_token},
    )
    assert listed.returncode == 0, listed.stderr


def test_login_without_any_provider_says_what_to_set(tmp_path: Path) -> None:
    plane = ControlPlane.create(tmp_path / "plain")
    plane.start_and_wait()
    try:
        assert discover_login(plane.address) is None
        result = gatehouse(
            ["login"], env={"GATEHOUSE_CONTROLPLANE": plane.address, "GATEHOUSE_OIDC_ISSUER": ""}
        )
        assert result.returncode == 2
        assert "GATEHOUSE_OIDC_ISSUER" in result.stderr
    finally:
        plane.stop()


def test_an_admin_group_from_configuration_makes_its_members_admins(
    tmp_path: Path, oidc: OidcProvider
) -> None:
    plane = ControlPlane.create(
        tmp_path / "admins",
        env={
            "GATEHOUSE_OIDC_ISSUER": oidc.issuer,
            "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE,
            "GATEHOUSE_ADMIN_GROUPS": "security",
        },
    )
    plane.start_and_wait()
    try:
        settings = discover_login(plane.address)
        assert settings is not None
        bob = device_log_in(oidc, settings, "bob")  # group security
        alice = device_log_in(oidc, settings, "alice")  # group dba
        as_bob = {**plane.cli_env, "GATEHOUSE_TOKEN": bob.access_token}
        as_alice = {**plane.cli_env, "GATEHOUSE_TOKEN": alice.access_token}
        assert gatehouse(["admin", "agents", "list"], env=as_bob).returncode == 0
        refused = gatehouse(["admin", "agents", "list"], env=as_alice)
        assert refused.returncode == 1
        assert "may not do this" in refused.stderr
    finally:
        plane.stop()
