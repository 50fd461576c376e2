"""The one audit writer: group commit of a bounded queue, seq and hash assigned in the commit.

Strict mode calls `commit()` and waits for *its* event's transaction before forwarding the
request; everything queued meanwhile rides in the same transaction (natural batching, no
timers), so one fsync serves many sessions. When the store fails, every waiting caller gets
`AuditUnavailable` and refuses its request: nothing unaudited goes through.

One thread, `audit-writer`, does the appending (ADR 0032): the events of one event-loop turn
reach it as one list, it commits whatever is queued on the driver connection it holds while
busy (append.py), and it hands each batch's outcome back to the loop in one call.

Only `commit()` waits for the disk (ADR 0026). An event that is `submit()`-ed (a result, an
async-mode request, an auth failure: nobody waits for it) is committed as soon as the writer
takes it, but a batch of only such events commits *relaxed*, without the fsync: it survives a
crash of this process at once, and a power loss once the next durable commit (whose sync
covers everything before it) or `sync_interval` later the writer's own sync has run. So a
statement costs one fsync, not two, and chain order and seq are exactly as before.

One event never fails its neighbours: each is encoded on its own before it joins the group, and
one that has no canonical form fails only its own future with `InvalidEvent` (drafts are checked
when they are made, so this is the second line). A *result* event (`*.result`: what ran and how
it ended) that cannot be committed is counted and reported to the session's failure callback
(`watch`), which ends that session: a result never vanishes silently.

Checkpoints ride in the same transactions: when a batch takes seq past a multiple of
`checkpoint_every`, a signed `audit.checkpoint` event is appended after it, in the same commit
(no extra fsync, no event delayed); and every `checkpoint_interval` seconds one is appended if
events came since the last one, so that the newest events are never unsigned for long. Signing
is part of the commit, so a key that cannot sign fails the batch closed like a store error.
Each checkpoint is then handed to the witnesses (witness.py), outside the store. Followers
(`StreamEvents`) are woken after each commit instead of polling the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from sqlmodel import Session

from controlplane.audit.append import Outcome, append_events, append_on, appended_in, stored_hash
from controlplane.audit.checkpoints import SigningKey
from controlplane.audit.errors import AuditUnavailable, InvalidEvent
from controlplane.audit.events import Draft, draft
from controlplane.auth.identity import Identity
from controlplane.store.database import Database
from controlplane.store.models import ChainHeadRow, EventRow
from trail.signatures import CHECKPOINT_TYPE

log = logging.getLogger(__name__)

_Item = tuple[Draft, "asyncio.Future[int]", bool]  # the event, its seq, durable
T = TypeVar("T")
__all__ = [
    "AuditUnavailable",
    "AuditWriter",
    "InvalidEvent",
    "ResultLoss",
    "append_events",
    "is_result",
]

#: Events of relaxed commits kept in memory until a durable commit covers them, at most: the
#: next commit is durable once this many are kept (a sync that keeps failing cannot grow it).
MAX_UNSURE = 65536
#: Seconds after a relaxed commit within which the writer syncs it, when no durable commit did
#: meanwhile: the most a power loss can take from the trail (a process crash takes nothing).
SYNC_INTERVAL = 1.0

# Told why a session's result event could not be recorded; it must end that session.
FailureCallback = Callable[[str], None]
# Told each signed checkpoint after its commit (the witnesses); must not block.
CheckpointSink = Callable[[dict[str, Any]], None]


def is_result(event_type: str) -> bool:
    """A result event says what ran and how it ended (db.result, ssh.result, shell.result…)."""
    return event_type.endswith(".result")


class ResultLoss:
    """Set when one of a session's result events could not be recorded (`AuditWriter.watching`):
    the relay waits on `lost` beside its pumps and ends the session with `reason` (the first
    loss); `count` says how many were lost, so that the session's end can say so too."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()
        self.reason = ""
        self.count = 0

    def __call__(self, reason: str) -> None:
        self.count += 1
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()


class AuditWriter:
    def __init__(
        self,
        db: Database,
        *,
        max_batch: int = 1024,
        queue_size: int = 8192,
        checkpoint_every: int = 0,
        checkpoint_interval: float = 0.0,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        self._db = db
        self._signer: SigningKey | None = None
        self._checkpoint_every = checkpoint_every  # 0: only checkpoints that are asked for
        # A head this process committed: the store's head must never be behind it.
        self._floor: tuple[int, str] | None = None
        self._checkpoint_interval = checkpoint_interval  # 0: no timed checkpoints
        # A relaxed commit is made durable at the latest this long after it (a power loss
        # before that, with no durable commit meanwhile, can lose it; a process crash cannot).
        self._sync_interval = sync_interval
        self._unsigned = False  # events follow the last checkpoint (read from the store first)
        self._ticker: asyncio.Task[None] | None = None
        self._watchers: dict[str, FailureCallback] = {}
        self._sinks: list[CheckpointSink] = []
        self.result_failures = 0  # result events that could not be committed, for metrics
        self.invalid_events = 0  # events refused for having no canonical form
        self._commit_signal = asyncio.Event()
        self.followers_stopped = False
        self._max_batch = max_batch
        # Events and jobs for the writer thread, in the order they were queued: the events
        # of one loop turn go as one list (`_outbox`, handed over at the end of the turn), so
        # what was queued together commits together and the thread is woken once per turn.
        # Bounded by `_pending` (queued or being committed, counted on the loop): `submit`
        # waits for room once `queue_size` are.
        self._queue: queue.SimpleQueue[list[_Item] | _Job] = queue.SimpleQueue()
        self._outbox: list[_Item] = []
        self._queue_size = queue_size
        self._pending = 0
        self._room = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Future[None] | None = None
        self._connection = db.writer_connection()  # only the writer thread uses it
        self._sync_at: float | None = None  # when relaxed commits are due a sync (thread)
        # Relaxed commits no durable commit or sync has covered yet, oldest first: their
        # events and the last one's (seq, hash). Kept (by the thread) until one covers them,
        # which first checks they are still stored (`_missing`).
        self._unsure: list[tuple[list[Draft], tuple[int, str]]] = []
        self._unsure_events = 0  # the events in `_unsure`
        self.recovered = 0  # events of relaxed commits the store lost, appended again
        self.committed = 0  # events, for metrics
        self.commits = 0  # transactions
        self.durable_commits = 0  # transactions that waited for the disk (fsync)
        self.syncs = 0  # timed syncs of relaxed commits that no durable commit covered
        self.commit_seconds = 0.0
        #: Called with each transaction's seconds (the metrics' latency histogram).
        self.on_commit: Callable[[float], None] | None = None

    @property
    def queue_depth(self) -> int:
        """Events queued or being committed."""
        return self._pending

    @property
    def running(self) -> bool:
        """Started and not closed yet (its thread may have failed: `close` still applies)."""
        return self._stopped is not None

    @property
    def alive(self) -> bool:
        """Started and still committing: its thread has not ended (readiness)."""
        return self._stopped is not None and not self._stopped.done()

    @property
    def signer(self) -> SigningKey | None:
        return self._signer

    def start(self, signer: SigningKey | None = None) -> None:
        """Start committing; with a `signer`, checkpoints are appended and can be asked for."""
        self._signer = signer
        self.followers_stopped = False
        self._loop = asyncio.get_running_loop()
        self._stopped = self._loop.create_future()
        # A daemon: a process that never closes its writer still exits (nothing it committed
        # is lost; what it had not committed was never acknowledged).
        self._thread = threading.Thread(target=self._work, name="audit-writer", daemon=True)
        self._thread.start()
        if signer is not None and self._checkpoint_interval > 0:
            self._ticker = asyncio.create_task(self._tick(), name="audit-checkpoint-timer")

    def resume_above(self, floor: tuple[int, str]) -> None:
        """Before `start`: take `floor` (seq, hash), a head committed before this process
        (a witnessed checkpoint's, audit/resume.py), as if this writer had committed it."""
        self._floor = floor

    def add_checkpoint_sink(self, sink: CheckpointSink) -> None:
        """Call `sink` with each checkpoint this writer commits (`seq`, `hash`, `key_id`,
        `signature`, `event_seq`, `time`): how witnesses outside the store hear of them."""
        self._sinks.append(sink)

    def watch(self, session_id: str, on_failure: FailureCallback) -> Callable[[], None]:
        """Until the returned function is called, a result event of `session_id` that cannot be
        committed calls `on_failure(reason)`, which must end the session (the contract of every
        relay that `submit`s results without awaiting them)."""
        self._watchers[session_id] = on_failure

        def unwatch() -> None:
            if self._watchers.get(session_id) is on_failure:
                del self._watchers[session_id]

        return unwatch

    @contextlib.contextmanager
    def watching(self, session_id: str) -> Iterator[ResultLoss]:
        """`watch` as a block: `with audit.watching(sid) as loss:` … end the session once
        `loss.lost` is set (e.g. `asyncio.wait({relaying, lost_task}, FIRST_COMPLETED)`)."""
        loss = ResultLoss()
        unwatch = self.watch(session_id, loss)
        try:
            yield loss
        finally:
            unwatch()

    async def close(self) -> None:
        """Commit what is queued, make it durable, then stop."""
        self.stop_followers()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        thread, stopped = self._thread, self._stopped
        self._thread = None  # refuses new events; the ones queued before are committed
        if stopped is None:
            return
        if thread is not None:
            self._hand_over()
            self._queue.put(_STOP)
            await asyncio.shield(stopped)
            self._room.set()  # a caller still waiting for room finds the writer closed
            await asyncio.to_thread(thread.join)
        self._stopped = None

    async def submit(self, event: Draft, *, durable: bool = False) -> asyncio.Future[int]:
        """Queue an event; the future resolves to its seq once committed.

        Awaiting this call itself only waits for room in the queue (back-pressure). The future
        fails with `InvalidEvent` for an event that has no canonical form (its neighbours are
        committed), or `AuditUnavailable` when the store failed. A result event's failure is
        also counted and reported to the session's `watch` callback: nobody need await it.
        Without `durable`, the commit that resolves the future may be a relaxed one (see the
        module's docstring): in the store and surviving this process, not yet a power loss.
        """
        while self._pending >= self._queue_size and self._thread is not None:
            self._room.clear()
            await self._room.wait()
        if self._thread is None or self._loop is None:
            raise AuditUnavailable("the audit writer is not running")
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending += 1
        if not self._outbox:
            self._loop.call_soon(self._hand_over)
        self._outbox.append((event, future, durable))
        return future

    async def commit(self, event: Draft) -> int:
        """Queue an event and wait until it is durably committed; returns its seq."""
        return await (await self.submit(event, durable=True))

    async def commit_all(self, events: Sequence[Draft]) -> list[int]:
        """`commit` of several events, queued together (one group commit when the writer is
        idle); returns their seqs in order."""
        futures = [await self.submit(e, durable=True) for e in events]
        seqs = []
        for index, future in enumerate(futures):  # no gather: they resolve in one batch
            try:
                seqs.append(await future)
            except BaseException:
                for rest in futures[index + 1 :]:  # failed too, or will: never "not retrieved"
                    rest.add_done_callback(_retrieve)
                raise
        return seqs

    async def checkpoint(self, identity: Identity | None = None) -> int:
        """Append a signed checkpoint of the chain as it is now; returns the event's seq."""
        if self._signer is None:
            raise AuditUnavailable("the control plane has no audit signing key")
        return await self.commit(draft(CHECKPOINT_TYPE, identity=identity, reason="requested"))

    async def transact(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in one write transaction on the writer's own thread (a prune, or a
        credential stored with its event by `append_events`: it must not interleave with
        appends), then wake followers as after any commit. The transaction is a durable one,
        counted in the writer's metrics like its group commits."""

        def run() -> tuple[T, int, float]:
            started = time.perf_counter()
            with self._db.write_session() as session, session.begin():
                result = fn(session)
            self._covered()  # a durable commit syncs the WAL up to itself
            return result, appended_in(session), time.perf_counter() - started

        result, appended, elapsed = await self._job(run)
        self._counted(elapsed, appended, durable=True)
        self._unsigned = True  # a prune appends its record
        self._notify()
        return result

    # -- followers --

    def commit_signal(self) -> asyncio.Event:
        """An event set at the next commit. Take it *before* reading the store, then wait."""
        return self._commit_signal

    def wake_followers(self) -> None:
        """Another replica committed: followers read the store now, not at their next poll."""
        self._notify()

    def stop_followers(self) -> None:
        """The process is stopping: wake every follower so that it ends its stream now."""
        self.followers_stopped = True
        self._notify()

    def _notify(self) -> None:
        signal, self._commit_signal = self._commit_signal, asyncio.Event()
        signal.set()

    # -- the writer thread --

    async def _job(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the writer thread, between two group commits."""
        if self._thread is None:
            raise AuditUnavailable("the audit writer is not running")
        job = _Job(fn)
        self._hand_over()  # after the events queued before it
        self._queue.put(job)
        return await asyncio.wrap_future(job.future)

    def _hand_over(self) -> None:
        """End of a loop turn: the events queued in it go to the thread as one list."""
        if self._outbox:
            events, self._outbox = self._outbox, []
            self._queue.put(events)

    def _work(self) -> None:
        """The writer thread: take whatever is queued as one batch (up to `max_batch`, up to
        the next job), append and commit it, and hand the outcome to the loop in one call."""
        take = self._queue.get
        take_now = self._queue.get_nowait
        try:
            while True:
                try:
                    item = take(timeout=self._idle_timeout())
                except queue.Empty:
                    try:
                        self._idle()
                    except Exception:  # the connection is dropped; the next batch takes one
                        log.exception("the audit writer's idle work failed")
                    continue
                batch: list[_Item] = []
                while type(item) is list:
                    batch += item
                    if len(batch) >= self._max_batch:
                        break
                    try:
                        item = take_now()
                    except queue.Empty:
                        break
                for first in range(0, len(batch), self._max_batch):
                    chunk = batch[first : first + self._max_batch]
                    try:
                        self._commit_batch(chunk)
                    except BaseException:  # the thread ends: its batch must not hang
                        self._deliver(functools.partial(self._refuse, chunk, _stopped()))
                        raise
                if type(item) is _Job:
                    if item is _STOP:
                        break
                    item.run()
        except BaseException:  # a bug, or the interpreter going down: say so, fail closed
            log.critical("the audit writer thread stopped; events are refused", exc_info=True)
        finally:
            self._finish()

    def _idle_timeout(self) -> float | None:
        """How long the thread may wait for work: until relaxed commits are due their sync,
        or until the held connection goes back to the pool; None when neither."""
        if self._sync_at is not None:
            return max(0.0, self._sync_at - time.monotonic())
        return _IDLE_RELEASE if self._connection.held else None

    def _idle(self) -> None:
        """Nothing came: sync relaxed commits that are due, or give the connection back (on
        PostgreSQL, the next checkout pings it, so a restarted server costs no batch)."""
        if self._sync_at is not None:
            if time.monotonic() >= self._sync_at:
                self._timed_sync()
            return
        self._connection.release()

    def _timed_sync(self) -> None:
        """Make the relaxed commits durable: a durable transaction that appends again what the
        store lost of them (`_missing`) and otherwise writes nothing but its own commit."""
        try:
            outcome = self._append([], True, sync=True)
        except Exception as exc:  # the events are committed; a later durable commit may cover them
            log.error("cannot sync the audit store's relaxed commits: %s", exc)
            self._sync_at = time.monotonic() + self._sync_interval
        else:
            self._sync_at = None
            self.syncs += 1  # written by this thread only
            if outcome.appended:
                self._deliver(functools.partial(self._appended_again, outcome))

    def _appended_again(self, outcome: Outcome) -> None:
        """On the loop: a sync appended lost events again; readers and witnesses hear of it."""
        self._unsigned = not outcome.ends_signed
        self._notify()
        self._publish(outcome.checkpoints)

    def _covered(self) -> None:
        """A durable commit synced everything before it: no sync is due."""
        self._sync_at = None

    def _finish(self) -> None:
        """Closing (or the thread failing): sync what is left, give the connection back, and
        tell the loop, after the outcomes of every batch before."""
        try:
            if self._sync_at is not None:
                self._timed_sync()
            self._connection.release()
        except Exception:
            log.exception("cannot sync the audit store's last relaxed commits")
        finally:
            self._refuse_queued()
            self._deliver(self._stopped_now)

    def _refuse_queued(self) -> None:
        """Fail closed whatever is still queued when the thread ends (only if it failed: after
        `close`, nothing is queued behind the stop)."""
        error = _stopped()
        refused: list[_Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if type(item) is list:
                refused += item
            elif type(item) is _Job and not item.future.done():
                item.future.set_exception(error)
        if refused:
            self._deliver(functools.partial(self._refuse, refused, error))

    def _stopped_now(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)
        self._thread = None

    def _commit_batch(self, batch: list[_Item]) -> None:
        drafts = [draft for draft, _, _ in batch]
        durable = False
        for _, _, wanted in batch:
            if wanted:
                durable = True
                break
        started = time.perf_counter()
        outcome: Outcome | Exception
        try:
            outcome = self._append(drafts, durable)
        except Exception as exc:
            log.exception("audit commit failed for %d events", len(batch))
            outcome = exc
        else:
            if outcome.durable:
                self._covered()
            elif outcome.appended and self._sync_at is None:
                self._sync_at = time.monotonic() + self._sync_interval
        if self._sync_at is not None and time.monotonic() >= self._sync_at:
            self._timed_sync()  # a stream of relaxed batches never leaves the thread idle
        self._deliver(
            functools.partial(self._resolve, batch, outcome, time.perf_counter() - started)
        )

    def _deliver(self, callback: Callable[[], None]) -> None:
        """One hop to the loop per batch."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            log.warning("the audit writer's event loop closed before a commit was reported")

    def _resolve(self, batch: list[_Item], outcome: Outcome | Exception, elapsed: float) -> None:
        """On the loop: resolve the batch's futures, count it, wake followers and witnesses."""
        if isinstance(outcome, Exception):
            error = f"the audit store could not commit the event: {outcome}"
            self._refuse(batch, AuditUnavailable(error))
            self._counted(elapsed, 0, durable=False)
            return
        self._taken(batch)
        committed = 0
        for (item, future, _), seq in zip(batch, outcome.results, strict=True):
            if type(seq) is int:
                committed += 1
                if not future.done():
                    future.set_result(seq)
            else:
                assert isinstance(seq, InvalidEvent)
                self.invalid_events += 1
                self._failed(item, future, seq)
        self._counted(elapsed, committed, durable=outcome.durable)
        if outcome.appended:
            self._unsigned = not outcome.ends_signed
        self._notify()
        self._publish(outcome.checkpoints)

    def _taken(self, batch: list[_Item]) -> None:
        """The batch no longer counts against `queue_size`."""
        self._pending -= len(batch)
        if self._pending < self._queue_size:
            self._room.set()

    def _refuse(self, batch: list[_Item], error: AuditUnavailable) -> None:
        """On the loop: fail every event of a batch the store did not take."""
        self._taken(batch)
        for item, future, _ in batch:
            self._failed(item, future, error)

    def _counted(self, elapsed: float, events: int, *, durable: bool) -> None:
        self.committed += events
        self.commits += 1
        self.durable_commits += durable
        self.commit_seconds += elapsed
        if self.on_commit is not None:
            self.on_commit(elapsed)

    def _failed(self, item: Draft, future: asyncio.Future[int], error: Exception) -> None:
        """Fail one event's future; a result event is also counted and ends its session."""
        if not future.done():
            future.set_exception(error)
            if is_result(item.type):
                future.exception()  # reported below: never "exception was never retrieved"
        if is_result(item.type):
            self.result_lost(item.session_id, item.type, error)

    def result_lost(self, session_id: str | None, event_type: str, error: object) -> None:
        """A result event of `session_id` cannot be recorded: count it, log it and tell the
        session's `watch` callback, which ends the session.

        The writer calls it for a result whose commit failed; an inspector calls it for one it
        could not even queue (in async mode, when the request it answers was never committed,
        there is no seq to refer to). Either way a lost result is never silent.
        """
        self.result_failures += 1
        session = session_id or "-"
        log.error("session %s: its %s could not be recorded: %s", session, event_type, error)
        callback = self._watchers.get(session)
        if callback is not None:
            try:
                callback(f"its {event_type} could not be recorded: {error}")
            except Exception:  # a callback must not stop the writer
                log.exception("session %s: the failure callback failed", session)

    def _publish(self, checkpoints: list[dict[str, Any]]) -> None:
        for checkpoint in checkpoints:
            for sink in self._sinks:
                try:
                    sink(checkpoint)
                except Exception:  # a witness must never block or break the trail
                    log.exception("a checkpoint witness failed")

    async def _tick(self) -> None:
        """Every `checkpoint_interval` seconds, sign the chain if events came since the last
        checkpoint: dropping the newest events and rewinding the head is then caught within
        one interval by a signature kept outside the store."""
        try:  # what an earlier process left unsigned
            unsigned = await self._job(self._head_unsigned)
        except Exception as exc:
            log.warning("cannot read the audit chain head: %s", exc)
            unsigned = True
        self._unsigned = self._unsigned or unsigned
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            if not self._unsigned:
                continue
            try:
                await self.commit(draft(CHECKPOINT_TYPE, reason="interval"))
            except AuditUnavailable as exc:
                log.warning("the timed audit checkpoint failed: %s", exc)

    def _head_unsigned(self) -> bool:
        """True when the newest stored event is not a checkpoint (runs in the writer thread)."""
        with self._db.write_session() as session:
            head = session.get(ChainHeadRow, 1)
            if head is None or not head.seq:
                return False
            row = session.get(EventRow, head.seq)
            return row is None or row.type != CHECKPOINT_TYPE

    def _append(self, drafts: list[Draft], durable: bool, *, sync: bool = False) -> Outcome:
        """Append in one transaction under the chain-head lock (runs in the writer thread).

        On the writer's own driver connection: SQLAlchemy's session, Core statements and even
        `exec_driver_sql` cost more per group commit than the statements and the COMMIT.
        A relaxed batch that appends a checkpoint commits durably all the same: witnesses
        hear of a checkpoint only once the chain it signs is on disk.

        While relaxed commits are not known durable, each transaction first appends again,
        ahead of `drafts`, their events that the store no longer holds (a PostgreSQL server
        that crashed before its WAL writer flushed them forgot them while this process lived
        on, ADR 0026), and is then durable itself: at the same seqs and hashes as before,
        when nothing came between. With `sync` and nothing to append, it still makes them
        durable.
        """
        dialect = self._db.writer_engine.dialect
        again: list[Draft] = []
        # The events kept for that are bounded: past MAX_UNSURE, the commit is a durable one.
        durable = durable or self._unsure_events >= MAX_UNSURE
        with self._connection.transaction(durable=durable) as write:
            cursor = write.connection.cursor()

            def first(head: tuple[int, str]) -> list[Draft]:
                again.extend(self._missing(cursor, dialect, head))
                if again:
                    write.require_durable()
                return again

            try:
                outcome = append_on(
                    cursor,
                    dialect,
                    drafts,
                    self._signer,
                    self._checkpoint_every,
                    self._floor,
                    first if self._unsure else None,
                )
                if sync and not outcome.appended and not self._db.is_sqlite:
                    # An xid makes the commit write a record whose flush covers the earlier ones.
                    cursor.execute("SELECT txid_current()")
            finally:
                cursor.close()
            if outcome.checkpoints:
                write.require_durable()
            durable = write.durable
        if sync and not outcome.appended and self._db.is_sqlite:
            self._db.sync()  # the WAL frames of the NORMAL commits before this empty one
        if again:
            self.recovered += len(again)
            outcome = dataclasses.replace(outcome, results=outcome.results[len(again) :])
        # Only a durable commit: a relaxed one may be lost in a store crash (ADR 0026) and a
        # head back at the last durable commit is then no rewind.
        if durable:
            self._unsure.clear()
            self._unsure_events = 0
            if outcome.head is not None:  # continuing from the floor (append_on)
                self._floor = outcome.head
        elif outcome.tail is not None:
            kept = [d for d, r in zip(drafts, outcome.results, strict=True) if type(r) is int]
            self._unsure.append((kept, outcome.tail))
            self._unsure_events += len(kept)
        return dataclasses.replace(outcome, durable=durable)

    def _missing(self, cursor: Any, dialect: Any, head: tuple[int, str]) -> list[Draft]:
        """The events of relaxed commits that the store no longer holds, oldest first.

        A store recovers a prefix of its commits (WAL order), so the newest relaxed commit
        still holding its hash vouches for every one before it: none to look up when it is
        the `head` read under the lock (one replica), else usually one lookup.
        """
        if head == self._unsure[-1][1]:
            return []
        kept = 0
        for index in range(len(self._unsure) - 1, -1, -1):
            seq, hash_ = self._unsure[index][1]
            if stored_hash(cursor, dialect, seq) == hash_:
                kept = index + 1
                break
        lost = [item for drafts, _ in self._unsure[kept:] for item in drafts]
        if lost:
            log.error(
                "the audit store no longer holds %d events it committed without a sync since "
                "seq %d (a crash of the store's server, or someone deleting them); appending "
                "them again",
                len(lost),
                self._unsure[kept][1][0] - len(self._unsure[kept][0]) + 1,
            )
        return lost


def _retrieve(future: asyncio.Future[int]) -> None:
    if not future.cancelled():
        future.exception()


class _Job:
    """Work for the writer thread between batches (`transact`, reading the head, stopping)."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def run(self) -> None:
        if not self.future.set_running_or_notify_cancel():
            return
        try:
            result = self.fn()
        except BaseException as exc:
            self.future.set_exception(exc)
        else:
            self.future.set_result(result)


def _stopped() -> AuditUnavailable:
    return AuditUnavailable("the audit writer stopped: the control plane cannot record events")


_STOP = _Job(lambda: None)  # queued by `close`: everything before it is committed first
#: Seconds without work after which the writer thread hands its connection back to the pool.
_IDLE_RELEASE = 1.0
