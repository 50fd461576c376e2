"""Failed authentications, recorded without letting garbage tokens flood the audit trail.

Each refusal used to append its own `auth.fail` event: anyone able to reach the port could
grow the trail (and the writer's queue) without limit. Now, per source address and window:

* the first failure of a source in a window is recorded at once (`count: 1`), so a single
  mistyped token is visible immediately; so is the first of each further distinct reason, up
  to MAX_IMMEDIATE events per source and window (a client misconfigured in two ways shows
  both at once; an attacker varying the reason gets no more than that);
* further ones in that window are counted, and recorded as one `auth.fail` event with their
  `count`, the reasons seen (at most MAX_REASONS, the rest as "other") and how many were
  throttled, when the window ends or the process stops (`flush`). Nothing is lost: a window is
  let go only once its event is queued, and one whose event the store refused is kept (merged
  with the source's newer window) for the next flush;
* at most `max_sources` sources are tracked at once. Beyond that the table has *overflowed*:
  a failure from an untracked source is recorded in the overflow's own window, which is no
  address: its first failure is an event at once (with its real address and `overflow`), the
  rest one event per window with their count, reasons and the addresses (up to
  MAX_OVERFLOW_LISTED; `unlisted` counts the failures of the others). Memory stays bounded
  whatever the attacker's addresses, and the overflow is visible as such in the trail.

Throttle: a *tracked* source with `limit` failures in its current window is refused at once
(no token parsing, no database, no key fetch) until the window ends. Like fail2ban, this
refuses the source's valid tokens too: a shared address (NAT) can be locked out for one window.
An untracked source is never throttled: a shared budget for every address past the table
would let an attacker with many addresses lock out (and hide the real failures of) everyone
else. Its credential is checked, which costs what any first failure costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from controlplane.audit.errors import AuditUnavailable
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
MAX_OVERFLOW_LISTED = 100  # addresses an overflow event names; the rest are counted
OTHER = "other"  # the reasons past MAX_REASONS


@dataclass
class _Window:
    """One source's failures in one window (or the overflow's, with `listed`/`unlisted`)."""

    started: float  # monotonic
    started_at: str  # wall clock, for the event
    failures: int = 0
    recorded: int = 0  # failures already in an event
    throttled: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    credentials: dict[str, int] = field(default_factory=dict)
    listed: dict[str, int] = field(default_factory=dict)  # overflow: failures per address
    unlisted: int = 0  # overflow: failures of addresses past MAX_OVERFLOW_LISTED

    def count(self, reason: str, credential: str, throttled: bool, source: str | None) -> bool:
        """Add one failure; True when its reason is new to this window (and named)."""
        self.failures += 1
        self.throttled += throttled
        new = reason not in self.reasons and len(self.reasons) < MAX_REASONS
        _add(self.reasons, reason, 1, MAX_REASONS)
        _add(self.credentials, credential, 1, MAX_REASONS)
        if source is not None:
            self.list_source(source, 1)
        return new

    def absorb(self, other: _Window) -> None:
        """Take over `other`'s failures (an event of them could not be recorded)."""
        self.failures += other.failures
        self.recorded += other.recorded
        self.throttled += other.throttled
        self.started_at = min(self.started_at, other.started_at)
        for reason, n in other.reasons.items():
            _add(self.reasons, reason, n, MAX_REASONS)
        for credential, n in other.credentials.items():
            _add(self.credentials, credential, n, MAX_REASONS)
        for source, n in other.listed.items():
            self.list_source(source, n)
        self.unlisted += other.unlisted

    def list_source(self, source: str, n: int) -> None:
        """Overflow: `n` failures of `source`, named while fewer than MAX_OVERFLOW_LISTED are."""
        if source in self.listed or len(self.listed) < MAX_OVERFLOW_LISTED:
            self.listed[source] = self.listed.get(source, 0) + n
        else:
            self.unlisted += n


def _add(counts: dict[str, int], key: str, n: int, most: int) -> None:
    """Count `n` under `key`, or under OTHER once `most` keys are named."""
    if key not in counts and len(counts) >= most:
        key = OTHER
    counts[key] = counts.get(key, 0) + n


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
        self._overflow: _Window | None = None  # failures of sources past max_sources
        self._task: asyncio.Task[None] | None = None
        self.throttled_total = 0
        self.failures_total = 0
        self.overflow_total = 0  # failures of sources the table had no room for

    @property
    def tracked(self) -> int:
        """Sources with a window of their own (the overflow is none)."""
        return len(self._windows)

    def throttled(self, source: str) -> str | None:
        """Why `source` is refused without checking its credential, or None."""
        current = self._windows.get(source)
        if current is None or self._due(current):
            return None
        if current.failures < self.limit:
            return None
        return (
            f"too many failed authentications from {source} (at least {self.limit} in "
            f"{self.window:g} s): refused without checking for up to {self.window:g} s"
        )

    async def failed(self, source: str, reason: str, credential: str, throttled: bool) -> None:
        """Count one failure; record it now if it is the first of its window (or the first of
        a new reason). An audit writer that cannot take the events loses nothing: the counts
        stay in their windows for the next flush."""
        self.failures_total += 1
        self.throttled_total += throttled
        try:
            await self._flush_due()
        except AuditUnavailable as exc:
            log.warning("cannot record aggregated auth.fail events yet: %s", exc)
        current = self._windows.get(source)
        if current is None and len(self._windows) >= self.max_sources:
            await self._overflowed(source, reason, credential, throttled)
            return
        first = current is None
        if current is None:
            current = self._windows[source] = self._new_window()
        new = current.count(reason, credential, throttled, None)
        if first or (new and current.recorded < MAX_IMMEDIATE):
            event = draft(
                "auth.fail", reason=reason, credential=credential, source={"ip": source}, count=1
            )
            await self._record_at_once(event, source, current, reason, credential)

    async def _overflowed(self, source: str, reason: str, credential: str, throttled: bool) -> None:
        """A failure of a source the table has no room for: counted in the overflow's window;
        the overflow's first failure of a window is recorded at once, naming the overflow."""
        self.overflow_total += 1
        first = self._overflow is None
        if self._overflow is None:
            self._overflow = self._new_window()
            log.warning(
                "failed authentications come from more than %d sources: the failures of further "
                "sources are recorded together (first: %s)",
                self.max_sources,
                source,
            )
        overflow = self._overflow
        overflow.count(reason, credential, throttled, source)
        if first:
            event = draft(
                "auth.fail",
                reason=reason,
                credential=credential,
                source={"ip": source},
                count=1,
                overflow={"tracked_sources": self.max_sources},
            )
            await self._record_at_once(event, None, overflow, reason, credential, source)

    async def _record_at_once(
        self,
        event: Draft,
        key: str | None,
        window: _Window,
        reason: str,
        credential: str,
        listed: str | None = None,
    ) -> None:
        """Queue a failure's own event; if it cannot be recorded, its failure goes back to
        being unrecorded, for the window's summary."""
        window.recorded += 1
        one = _Window(window.started, window.started_at)  # the failure this event carries
        one.count(reason, credential, False, listed)
        try:
            future = await self._audit.submit(event)
        except AuditUnavailable as exc:
            log.warning("cannot record an auth.fail event yet: %s", exc)
            self._unrecorded(key, window, one)
            return
        future.add_done_callback(functools.partial(self._refused, key, window, one))

    def _unrecorded(self, key: str | None, counted_in: _Window, one: _Window) -> None:
        """An event of one failure was not recorded: unrecorded again in its window, or
        (the window was flushed meanwhile, counting it as recorded) in the current one."""
        if self._window_of(key) is counted_in:
            counted_in.recorded -= 1
        else:
            self._keep(key, one)

    def _refused(
        self, key: str | None, counted_in: _Window, one: _Window, future: asyncio.Future[int]
    ) -> None:
        if not future.cancelled() and future.exception() is not None:
            self._unrecorded(key, counted_in, one)

    def _new_window(self) -> _Window:
        return _Window(self._monotonic(), rfc3339(utc_now()))

    def _window_of(self, key: str | None) -> _Window | None:
        return self._overflow if key is None else self._windows.get(key)

    def _keep(self, key: str | None, window: _Window) -> None:
        """Put failures whose event was not recorded back, for the next flush: merged with
        the source's current window, or the overflow's when the table is full."""
        current = self._window_of(key)
        if current is not None:
            current.absorb(window)
            return
        if key is not None and len(self._windows) < self.max_sources:
            self._windows[key] = window
            return
        if key is not None:  # no room for its address: it joins the overflow, named
            window.list_source(key, window.failures)
        if self._overflow is None:
            self._overflow = window
        else:
            self._overflow.absorb(window)

    def _due(self, window: _Window) -> bool:
        return self._monotonic() - window.started >= self.window

    def _summary(self, key: str | None, current: _Window) -> Draft:
        unrecorded = current.failures - current.recorded
        top = max(current.reasons.items(), key=lambda item: item[1])[0]
        overflow = None
        if key is None:
            overflow = {
                "tracked_sources": self.max_sources,
                "sources": dict(current.listed),
                "unlisted": current.unlisted,
            }
        return draft(
            "auth.fail",
            reason=top,
            credential=max(current.credentials.items(), key=lambda item: item[1])[0],
            source={"ip": key} if key is not None else None,
            count=unrecorded,
            throttled=current.throttled or None,
            reasons=dict(current.reasons),
            window={"start": current.started_at, "seconds": self.window},
            overflow=overflow,
        )

    async def _flush_due(self) -> None:
        """Flush the windows that ended. Windows are kept in the order they started (a dict
        keeps insertion order), so the scan stops at the first one still running: every
        failure calls this, and a scan of all 10,000 windows cost 1.7 ms a failure. A window
        put back after its event was refused goes last, and waits at most one window more."""
        now = self._monotonic()
        due: list[str | None] = []
        for key, window in self._windows.items():
            if now - window.started < self.window:
                break
            due.append(key)
        if self._overflow is not None and self._due(self._overflow):
            due.append(None)
        await self._flush(due)

    async def _flush(self, keys: list[str | None]) -> None:
        """Queue each window's summary, and only then let the window go: a summary that
        cannot be queued leaves its window (and the later ones) for the next flush."""
        for key in keys:
            current = self._window_of(key)
            if current is None:
                continue
            if current.failures > current.recorded:
                future = await self._audit.submit(self._summary(key, current))
                future.add_done_callback(functools.partial(self._summary_refused, key, current))
            if key is None:
                if self._overflow is current:
                    self._overflow = None
            elif self._windows.get(key) is current:
                del self._windows[key]

    def _summary_refused(
        self, key: str | None, window: _Window, future: asyncio.Future[int]
    ) -> None:
        if future.cancelled() or future.exception() is None:
            return
        log.warning(
            "%d failed authentications from %s could not be recorded (%s); kept for the next flush",
            window.failures - window.recorded,
            key or "the overflow",
            future.exception(),
        )
        self._keep(key, window)

    async def flush(self) -> None:
        """Record every window's unrecorded failures now (the process is stopping)."""
        await self._flush([*self._windows, *([None] if self._overflow is not None else [])])

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
