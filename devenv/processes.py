"""Stopping a child process politely, then firmly: shared by every throwaway service."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)


def stop_process(
    process: subprocess.Popen[bytes],
    name: str,
    steps: Sequence[tuple[signal.Signals, float]],
) -> None:
    """Send each signal in turn until the process has exited, waiting that long after each."""
    for sig, timeout in steps:
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s pid %d ignored %s; escalating", name, process.pid, sig.name)
        else:
            return
