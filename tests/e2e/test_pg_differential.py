"""The differential fuzzer, bounded: random sessions through the gateway to a real PostgreSQL,
each reconciled with the server's own statement log (tests/e2e/pgfuzz.py says what is drawn).

`GATEHOUSE_PGFUZZ_EXAMPLES` sets the number of cases (default 300, about a minute); the long run
is `python -m bench.pgfuzz --examples 5000` (or `make fuzz`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from devenv.postgres import PostgresServer
from devenv.stack import Connect
from tests.e2e import pgfuzz, pggate
from tests.e2e.conftest import Stack

EXAMPLES = int(os.environ.get("GATEHOUSE_PGFUZZ_EXAMPLES", "300"))


@pytest.fixture(scope="module")
def gateway(
    guarded: Stack, pg: PostgresServer, listener: Connect, open_listener: Connect
) -> Iterator[pgfuzz.Gateway]:
    pgfuzz.prepare(pg)
    events = pggate.http_events(guarded)
    try:
        yield pgfuzz.Gateway(listener.port, open_listener.port, pg, events, pggate.last_seq(events))
    finally:
        pgfuzz.reset(pg)


@pytest.mark.timeout(900)
def test_random_sessions_reconcile_with_the_server_log(gateway: pgfuzz.Gateway) -> None:
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases on every run: `make test` is reproducible; the
        # long run (bench.pgfuzz) draws new ones each time
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=pgfuzz.cases())
    def check(case: pgfuzz.Case) -> None:
        outcome = pgfuzz.run_case(gateway, case)
        assert not outcome.problems, "\n".join(outcome.problems)

    check()
    print(f"\npgfuzz: {gateway.cases} cases, {gateway.statements} statements run by PostgreSQL")
    assert gateway.cases >= EXAMPLES
