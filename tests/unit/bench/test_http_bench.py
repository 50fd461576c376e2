"""bench.http reads wrk's report: requests, rate, percentiles (not a Stdev column's), errors."""

from __future__ import annotations

from bench.http import Run, parse_wrk, report

WRK = """\
Running 2s test @ http://127.0.0.1:39083/static/x.json
  2 threads and 20 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   496.08us    1.02ms  12.43ms   92.34%
    Req/Sec    41.75k    12.16k   70.54k    67.50%
  Latency Distribution
     50%  221.00us
     75%  254.00us
     90%    0.99ms
     99%    5.40ms
  166184 requests in 2.00s, 37.56MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 3
Requests/sec:  83020.69
Transfer/sec:     18.76MB
"""


def test_wrk_report_is_read() -> None:
    run = parse_wrk("direct", WRK)
    assert run == Run("direct", 166184, 83020.69, 0.221, 5.4, 6)


def test_the_table_gives_ratios_to_the_first_run() -> None:
    table = report([Run("direct", 10, 100.0, 1, 2, 0), Run("gateway", 5, 25.0, 3, 4, 0, "cp 0.5")])
    assert "| gateway | 5 | 25 | 0.250 | 3.00 | 4.00 | 0 | cp 0.5 |" in table
