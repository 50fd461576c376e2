"""Every refused token, shown to a real control plane: the RPC says why (without echoing the
token), and the refusal is in the audit trail as an `auth.fail` event (the first of a window
at once, the rest of the window as one event with their count and reasons)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devenv.oidc import AUDIENCE, OidcProvider
from devenv.stack import ControlPlane, gatehouse
from tests.integration.oidc.test_validator import (  # noqa: F401  (fixtures used by name)
    REFUSALS,
    Tokens,
    elsewhere,
    tokens,
)


@pytest.fixture(scope="module")
def controlplane(
    tmp_path_factory: pytest.TempPathFactory, oidc: OidcProvider
) -> Iterator[ControlPlane]:
    plane = ControlPlane.create(
        tmp_path_factory.mktemp("auth-fail"),
        env={
            "GATEHOUSE_OIDC_ISSUER": oidc.issuer,
            "GATEHOUSE_OIDC_AUDIENCE": AUDIENCE,
            # Short windows and no throttle: each case finds its reason in the trail quickly.
            "GATEHOUSE_AUTH_FAIL_WINDOW": "1",
            "GATEHOUSE_AUTH_FAIL_LIMIT": "1000",
        },
    )
    plane.start_and_wait()
    yield plane
    plane.stop()


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refused_token_is_an_rpc_error_and_an_auth_fail_event(
    case: str,
    tokens: Tokens,  # noqa: F811
    controlplane: ControlPlane,
    tmp_path: Path,
) -> None:
    make, reason = REFUSALS[case]
    token = make(tokens)
    env = {**controlplane.cli_env, "GATEHOUSE_TOKEN": token}
    refused = gatehouse(["connections", "list"], env=env)
    assert refused.returncode == 1
    assert reason in refused.stderr
    assert token not in refused.stderr

    deadline = time.monotonic() + 10
    while True:
        export = gatehouse(["audit", "export", "--types", "auth.fail"], env=controlplane.cli_env)
        assert token not in export.stdout
        failures = [json.loads(line) for line in export.stdout.splitlines()]
        mine = [
            f
            for f in failures
            if reason in f["reason"] or any(reason in r for r in f.get("reasons", {}))
        ]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert mine, failures[-3:]
    assert mine[-1]["credential"] == "jwt"
    assert mine[-1]["source"] == {"ip": "127.0.0.1"}
