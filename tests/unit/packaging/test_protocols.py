"""Every connection type the control plane relays has its engine on the agent and its `exec`
in the CLI, and every module the CLI's tables name exists: a protocol added on one side only
would fail at a user's first session instead of here (docs/decisions/0028)."""

from __future__ import annotations

import pytest

from agent.engines import Engine
from agent.protocols import ENGINES
from cli import protocols as cli_protocols
from cli.errors import CliError
from controlplane.relay.protocols import INSPECTORS, SUPPORTED_TYPES


def test_each_relayed_type_has_an_engine_and_an_exec() -> None:
    assert set(ENGINES) == SUPPORTED_TYPES == set(INSPECTORS)
    assert set(cli_protocols.EXEC) == SUPPORTED_TYPES
    assert set(cli_protocols.CONNECT) <= SUPPORTED_TYPES
    assert cli_protocols.DEFAULT in SUPPORTED_TYPES
    assert all(isinstance(engine, Engine) for engine in ENGINES.values())


def test_the_cli_tables_name_functions_that_exist() -> None:
    for kind in cli_protocols.EXEC:
        assert callable(cli_protocols.execute_for(kind)), kind
    for kind in cli_protocols.CONNECT:
        assert callable(cli_protocols.listen_for(kind)), kind
    assert cli_protocols.listen_for("shell") is None


def test_a_type_this_cli_does_not_know_is_a_clear_error() -> None:
    with pytest.raises(CliError, match="cannot run requests on ldap connections"):
        cli_protocols.execute_for("ldap")
