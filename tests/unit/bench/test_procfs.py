"""Reading RSS and CPU time from /proc text: what the agent-scale numbers are made of."""

from __future__ import annotations

import os

import pytest

from bench.procfs import (
    CLOCK_TICKS,
    cpu_seconds,
    parse_stat_cpu_seconds,
    parse_status_kib,
    rss_bytes,
)

STATUS = "Name:\tpython\nVmPeak:\t  900000 kB\nVmHWM:\t  123456 kB\nVmRSS:\t  100000 kB\n"


def test_status_lines() -> None:
    assert parse_status_kib(STATUS, "VmRSS") == 100000
    assert parse_status_kib(STATUS, "VmHWM") == 123456
    assert parse_status_kib(STATUS, "VmSwap") is None


def test_stat_with_a_command_name_holding_spaces_and_parentheses() -> None:
    # Fields 14 and 15 (utime, stime) are 250 and 50 ticks.
    text = "4242 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 3 0 100 0 0\n"
    assert parse_stat_cpu_seconds(text) == pytest.approx(300 / CLOCK_TICKS)


def test_this_process() -> None:
    assert (rss_bytes(os.getpid()) or 0) > 0
    assert (cpu_seconds(os.getpid()) or 0) > 0


def test_a_pid_that_is_gone() -> None:
    assert rss_bytes(2**22 + 1) is None
    assert cpu_seconds(2**22 + 1) is None
