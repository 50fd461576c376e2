"""Settings a client makes in its StartupMessage (`options=-c role=…`, `role=…`) run on the
server before any statement: they are decided and recorded as the SETs they amount to, before
the startup reaches the target, through both ways in."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import psycopg
import pytest

from devenv.postgres import PostgresServer
from tests.e2e import pggate
from tests.e2e.conftest import WAYS_IN, Stack, WayIn, start_stack, way_in


@pytest.fixture(scope="module")
def boss(pg: PostgresServer) -> Iterator[str]:
    """A role the connection's user `app` may become (SET ROLE), as a real target has them."""
    name = f"boss_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute(f"create role {name}")
        conn.execute(f"grant {name} to app")
    yield name
    with psycopg.connect(pg.admin_dsn("app"), autocommit=True) as conn:
        conn.execute(f"drop role {name}")


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    """`pg` behind a guardrail that denies SET; `pg-open` without guardrails."""
    started = start_stack(tmp_path_factory.mktemp("startup"), pg)
    pggate.guard(started, deny_statements=["SET"], deny_unbounded=[])
    yield started
    started.stop()


@pytest.fixture(scope="module", params=WAYS_IN)
def way(request: pytest.FixtureRequest, guarded: Stack) -> Iterator[WayIn]:
    with way_in(request.param, guarded) as found:
        yield found


@pytest.fixture(scope="module", params=WAYS_IN)
def open_way(request: pytest.FixtureRequest, guarded: Stack) -> Iterator[WayIn]:
    """The way in to `pg-open` (no guardrails): its dbname on `--pg-listen`, its own
    `gatehouse connect` listener."""
    if request.param == "pg-listen":
        cp = guarded.controlplane
        yield WayIn(request.param, cp.pg_port, cp.token, cp.ca_file if cp.tls else None)
        return
    with pggate.listening(guarded, pggate.OPEN) as process:
        yield WayIn(request.param, process.port, "anything")


def startup_events(stack: Stack, after: int) -> list[dict[str, Any]]:
    return [
        e
        for e in stack.events(after)
        if e["type"] == "db.query" and e["request"]["protocol"] == "startup"
    ]


def results_of(stack: Stack, seq: int) -> list[dict[str, Any]]:
    return [e for e in stack.events(seq) if e["type"] == "db.result" and e["ref"] == seq]


def test_a_role_set_at_startup_is_refused_by_a_rule_that_denies_set(
    guarded: Stack, way: WayIn, boss: str
) -> None:
    after = guarded.events()[-1]["seq"]
    with pytest.raises(psycopg.OperationalError) as caught:
        psycopg.connect(**way.params(options=f"-c role={boss}"))
    assert "SET is denied by guardrail" in str(caught.value)
    assert "connect without them" in str(caught.value)
    events = startup_events(guarded, after)  # libpq tries again without TLS after a FATAL
    assert events and len(events) <= 2
    for event in events:
        assert event["request"]["statement"] == f"SET \"role\" TO '{boss}'"
        assert event["decision"]["result"] == "deny"
        assert not results_of(guarded, event["seq"])
    # A driver's own settings (application_name, DateStyle…) are not what the rule is about.
    with psycopg.connect(**way.params(application_name="startup test")) as conn:
        assert conn.execute("select current_user").fetchone() == ("app",)


async def test_a_parameter_that_sets_the_role_is_refused_too(
    guarded: Stack, way: WayIn, boss: str
) -> None:
    """asyncpg sends `server_settings` as StartupMessage parameters of their own."""
    after = guarded.events()[-1]["seq"]
    with pytest.raises(asyncpg.PostgresError, match="SET is denied"):
        await asyncpg.connect(
            way.url(), server_settings={"role": boss, "application_name": "startup test"}
        )
    events = startup_events(guarded, after)  # asyncpg tries again without TLS after a FATAL
    assert events and len(events) <= 2
    assert {e["request"]["statement"] for e in events} == {f"SET \"role\" TO '{boss}'"}


def test_allowed_startup_settings_are_recorded_with_their_result(
    guarded: Stack, open_way: WayIn, boss: str
) -> None:
    after = guarded.events()[-1]["seq"]
    options = f"-c role={boss} -c statement_timeout=4321"
    params = open_way.params(dbname=pggate.OPEN, options=options)
    with psycopg.connect(**params) as conn:
        row = conn.execute("select current_user, current_setting('statement_timeout')").fetchone()
    assert row == (boss, "4321ms")
    (event,) = startup_events(guarded, after)
    assert event["request"]["statement"] == (
        f"SET \"role\" TO '{boss}'; SET \"statement_timeout\" TO '4321'"
    )
    assert event["decision"]["result"] == "allow"
    (result,) = results_of(guarded, event["seq"])
    assert result["result"]["error"] is None


def test_a_switch_the_gateway_cannot_read_is_refused_before_the_target(
    guarded: Stack, open_way: WayIn
) -> None:
    after = guarded.events()[-1]["seq"]
    with pytest.raises(psycopg.OperationalError, match="switch '-P' is not accepted"):
        psycopg.connect(**open_way.params(dbname=pggate.OPEN, options="-P"))
    assert not startup_events(guarded, after)
