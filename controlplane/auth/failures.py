"""Failed authentications, recorded without letting garbage tokens flood the audit trail.

Each refusal used to append its own `auth.fail` event: anyone able to reach the port could
grow the trail (and the writer's queue) without limit. Now, per source address and window:

* the first failure of a source in a window is recorded at once (`count: 1`), so a single
  mistyped token is visible immediately; so is the first of each further distinct reason, up
  to MAX_IMMEDIATE events per source and window (a client misconfigured in two ways shows
  both at once; an attacker varying the reason gets no more than that);
* further ones in that window are counted, and recorded as one `auth.fail` event with their
  `count`, the reasons seen (at most MAX_REASONS, the rest as "other") and how many were
  throttled, when the window ends or the process stops (`flush`): nothing is lost;
* at most `max_sources` sources are tracked at once; beyond that, failures are aggregated under
  the catch-all source `other`, so memory stays bounded whatever the attacker's addresses.

Throttle: a source with `limit` failures in its current window is refused at once (no token
parsing, no database, no key fetch) until the window ends. Like fail2ban, this refuses the
source's valid tokens too: a shared address (NAT) can be locked out for one window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from controlplane.audit.events import Draft, draft, rfc3339, utc_now
from controlplane.audit.writer import AuditWriter

__all__ = ["OTHER", "AuthFailures"]

log = logging.getLogger(__name__)

WINDOW_ENV = "GATEHOUSE_AUTH_FAIL_WINDOW"
LIMIT_ENV = "GATEHOUSE_AUTH_FAIL_LIMIT"
SOURCES_ENV = "GATEHOUSE_AUTH_FAIL_SOURCES"
DEFAULT_WINDOW = 60.0
DEFAULT_LIMIT = 30
DEFAULT_SOURCES = 10_000
MAX_REASONS = 10
MAX_IMMEDIATE = 5
OTHER = "other"  # the catch-all source once max_sources are tracked


@dataclass
class _Window:
    started: float  # monotonic
    started_at: str  # wall clock, for the event
    failures: int = 0
    recorded: int = 0  # failures already in an event
    throttled: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    credentials: dict[str, int] = field(default_factory=dict)


class AuthFailures:
    """Per-source windows of failed authentications; see the module text."""

    def __init__(
        self,
        audit: AuditWriter,
        *,
        window: float | None = None,
        limit: int | None = None,
        max_sources: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._audit = audit
        self.window = DEFAULT_WINDOW if window is None else window
        self.limit = DEFAULT_LIMIT if limit is None else limit
        self.max_sources = DEFAULT_SOURCES if max_sources is None else max_sources
        self._monotonic = monotonic
        self._windows: dict[str, _Window] = {}
        self._task: asyncio.Task[None] | None = None
        self.throttled_total = 0
        self.failures_total = 0

    @property
    def tracked(self) -> int:
        return len(self._windows)

    def throttled(self, source: str) -> str | None:
        """Why `source` is refused without checking its credential, or None."""
        current = self._windows.get(self._key(source))
        if current is None or self._monotonic() - current.started >= self.window:
            return None
        if current.failures < self.limit:
            return None
        return (
            f"too many failed authentications from {source} (at least {self.limit} in "
            f"{self.window:g} s): refused without checking for up to {self.window:g} s"
        )

    async def failed(self, source: str, reason: str, credential: str, throttled: bool) -> None:
        """Count one failure; record it now if it is the first of its window."""
        self.failures_total += 1
        self.throttled_total += throttled
        await self._flush_due()
        key = self._key(source)
        current = self._windows.get(key)
        first = current is None
        if current is None:
            current = _Window(self._monotonic(), rfc3339(utc_now()))
            self._windows[key] = current
        current.failures += 1
        current.throttled += throttled
        known = reason in current.reasons
        if known or len(current.reasons) < MAX_REASONS:
            current.reasons[reason] = current.reasons.get(reason, 0) + 1
        else:
            known = True  # counted under "other", never recorded on its own
            current.reasons[OTHER] = current.reasons.get(OTHER, 0) + 1
        current.credentials[credential] = current.credentials.get(credential, 0) + 1
        if first or (not known and current.recorded < MAX_IMMEDIATE):
            current.recorded += 1
            event = draft(
                "auth.fail", reason=reason, credential=credential, source={"ip": key}, count=1
            )
            await self._audit.submit(event)

    def _key(self, source: str) -> str:
        if source in self._windows or len(self._windows) < self.max_sources:
            return source
        return OTHER

    def _summary(self, key: str, current: _Window) -> Draft:
        unrecorded = current.failures - current.recorded
        top = max(current.reasons.items(), key=lambda item: item[1])[0]
        return draft(
            "auth.fail",
            reason=top,
            credential=max(current.credentials.items(), key=lambda item: item[1])[0],
            source={"ip": key},
            count=unrecorded,
            throttled=current.throttled or None,
            reasons=dict(current.reasons),
            window={"start": current.started_at, "seconds": self.window},
        )

    async def _flush_due(self) -> None:
        now = self._monotonic()
        due = [k for k, w in self._windows.items() if now - w.started >= self.window]
        await self._flush(due)

    async def _flush(self, keys: list[str]) -> None:
        events: list[Any] = []
        for key in keys:
            current = self._windows.pop(key)
            if current.failures > current.recorded:
                events.append(self._summary(key, current))
        for event in events:
            await self._audit.submit(event)

    async def flush(self) -> None:
        """Record every window's unrecorded failures now (the process is stopping)."""
        await self._flush(list(self._windows))

    def start(self) -> None:
        """Flush windows as they end even when no new failure arrives to do it."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="auth-fail-flush")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(self.window / 2, 5.0))
            try:
                await self._flush_due()
            except Exception:  # the writer stopping; stop() flushes what is left
                log.exception("cannot record aggregated auth.fail events")

    async def stop(self) -> None:
        """Stop the timer and record what is left, before the audit writer closes."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()
