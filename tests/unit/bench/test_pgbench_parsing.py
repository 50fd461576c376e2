"""pgbench's summary and latency log, as PostgreSQL 15 writes them: the numbers every data-path
ratio stands on."""

from __future__ import annotations

import pytest

from bench.pgbench import PgbenchError, latency_percentiles, parse_latency_log, parse_summary

SUMMARY = """\
pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: extended
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 70412
number of failed transactions: 3 (0.004%)
latency average = 0.568 ms
initial connection time = 12.345 ms
tps = 14082.471935 (without initial connection time)
"""


def test_summary() -> None:
    summary = parse_summary(SUMMARY)
    assert summary.tps == pytest.approx(14082.471935)
    assert summary.transactions == 70412
    assert summary.failed == 3
    assert summary.latency_avg_ms == pytest.approx(0.568)


def test_summary_of_an_older_pgbench_without_failures_or_latency() -> None:
    text = (
        "number of transactions actually processed: 10\n"
        "tps = 5.5 (without initial connection time)\n"
    )
    summary = parse_summary(text)
    assert (summary.tps, summary.transactions, summary.failed) == (5.5, 10, 0)
    assert summary.latency_avg_ms is None


def test_no_summary_is_an_error_that_shows_the_output() -> None:
    with pytest.raises(PgbenchError, match=r"connection to server .* failed"):
        parse_summary('pgbench: error: connection to server at "127.0.0.1" failed\n')


def test_latency_log_keeps_committed_transactions_and_counts_the_rest() -> None:
    lines = [
        "0 0 158 0 1700000000 123456",
        "0 1 201 0 1700000000 123700",
        "1 0 failed 0 1700000000 124000",
        "1 1 skipped 0 1700000000 124100",
        "3 7 99 0 1700000000 124200 12",  # with schedule lag
        "",
        "garbage",
    ]
    latencies, other = parse_latency_log(lines)
    assert latencies == [158, 201, 99]
    assert other == 2


def test_percentiles_are_in_milliseconds() -> None:
    p50, p99 = latency_percentiles(list(range(1, 101)))  # 1..100 µs
    assert p50 == pytest.approx(0.0505)
    assert p99 == pytest.approx(0.09901)


def test_no_latencies_no_percentiles() -> None:
    assert latency_percentiles([]) == (None, None)
