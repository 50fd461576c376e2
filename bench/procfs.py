"""What a process costs, read from /proc: resident memory and CPU time.

Read from the kernel rather than from inside the process, so the measurement adds nothing to
what is measured and works for any child (control plane, agent, PgBouncer, pgbench).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MIB = 1024 * 1024


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/PID/status (VmRSS, VmHWM, ...), in KiB; None once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return parse_status_kib(text, key)


def parse_status_kib(text: str, key: str) -> int | None:
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    return None


def rss_bytes(pid: int) -> int | None:
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes(pid: int) -> int | None:
    kib = status_kib(pid, "VmHWM")
    return None if kib is None else kib * 1024


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process (all its threads) so far; None once the pid is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return parse_stat_cpu_seconds(text)


def parse_stat_cpu_seconds(text: str) -> float:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@dataclass
class CpuWindow:
    """CPU used by some processes between `start()` and `stop()`, in cores (1.0 = one core)."""

    pids: dict[str, int]
    _start: dict[str, float] = field(default_factory=dict)
    _started_at: float = 0.0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def start(self) -> None:
        self._started_at = time.monotonic()
        self._start = {name: cpu_seconds(pid) or 0.0 for name, pid in self.pids.items()}

    def stop(self) -> dict[str, float]:
        """Cores used per process name over the window."""
        self.seconds = time.monotonic() - self._started_at
        for name, pid in self.pids.items():
            used = (cpu_seconds(pid) or 0.0) - self._start.get(name, 0.0)
            self.cpu[name] = used / self.seconds if self.seconds > 0 else 0.0
        return self.cpu


class RssSampler:
    """Samples a process's RSS in a thread, keeping the highest value seen since `reset()`.

    VmHWM is the peak over the whole life of the process; a window's own peak needs sampling.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak = rss_bytes(self.pid) or 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid) or 0)
            self._stop.wait(self.interval)
