"""`python -m bench.pgfuzz --examples 5000`: the PostgreSQL differential fuzzer, run long.

The same cases as tests/e2e/test_pg_differential.py (tests/e2e/pgfuzz.py draws them), against a
throwaway PostgreSQL and a control plane with one agent started here. It stops at the first
case whose server log and trail do not reconcile, prints Hypothesis's smallest such case, and
otherwise reports how many cases and statements it ran.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

from hypothesis import HealthCheck, given, seed, settings

from devenv.postgres import start_postgres
from tests.e2e import pgfuzz, pggate
from tests.e2e.conftest import PG_PASSWORD, start_stack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pgfuzz", description=__doc__)
    parser.add_argument("--examples", type=int, default=1000, help="cases to run (1000)")
    parser.add_argument("--seed", type=int, default=None, help="Hypothesis seed (random)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pgfuzz-") as tmp:
        base = Path(tmp)
        pg = start_postgres(base / "pg", roles={"app": PG_PASSWORD}, databases={"app": "app"})
        stack = start_stack(base / "stack", pg)
        try:
            pggate.guard(stack)
            pgfuzz.prepare(pg)
            events = pggate.http_events(stack)
            with (
                pggate.listening(stack) as guarded,
                pggate.listening(stack, pggate.OPEN) as unguarded,
            ):
                gateway = pgfuzz.Gateway(
                    guarded.port, unguarded.port, pg, events, pggate.last_seq(events)
                )
                return _run(gateway, args.examples, args.seed)
        finally:
            stack.stop()
            pg.stop()


def _run(gateway: pgfuzz.Gateway, examples: int, chosen_seed: int | None) -> int:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=pgfuzz.cases())
    def check(case: pgfuzz.Case) -> None:
        outcome = pgfuzz.run_case(gateway, case)
        assert not outcome.problems, "\n".join(outcome.problems)

    if chosen_seed is not None:
        check = seed(chosen_seed)(check)
    started = time.monotonic()
    failed = False
    try:
        check()
    except Exception as exc:  # a mismatch, or a hang (the gateway never answered)
        # Hypothesis attaches the smallest failing case (and a blob to replay it) as notes.
        report = "".join(traceback.format_exception(exc))
        print(f"pgfuzz: FAILED\n{report}", file=sys.stderr)
        failed = True
    elapsed = time.monotonic() - started
    print(
        f"pgfuzz: {gateway.cases} cases, {gateway.statements} statements run by PostgreSQL, "
        f"{elapsed:.0f} s ({gateway.cases / max(elapsed, 1e-9):.1f} cases/s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
