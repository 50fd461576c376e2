"""The one audit writer: group commit of a bounded queue, seq and hash assigned in the commit.

Strict mode calls `commit()` and waits for *its* event's transaction before forwarding the
request; everything queued meanwhile rides in the same transaction (natural batching, no
timers), so one fsync serves many sessions. When the store fails, every waiting caller gets
`AuditUnavailable` and refuses its request: nothing unaudited goes through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from sqlmodel import Session, select

from controlplane.audit.chain import canonical, link_hash
from controlplane.audit.events import Draft
from controlplane.store.database import Database
from controlplane.store.models import ChainHeadRow, EventRow

log = logging.getLogger(__name__)

_Item = tuple[Draft, "asyncio.Future[int]"]


class AuditUnavailable(Exception):
    """The event could not be committed; the request it describes must not go through."""


class AuditWriter:
    def __init__(self, db: Database, *, max_batch: int = 1024, queue_size: int = 8192) -> None:
        self._db = db
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(queue_size)
        # One thread: the only appender in this process, so batches commit in queue order.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="audit-writer")
        self._task: asyncio.Task[None] | None = None
        self.committed = 0  # events, for metrics
        self.commits = 0  # transactions
        self.commit_seconds = 0.0

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._task is not None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def close(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is not None:
            await self._queue.join()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._thread.shutdown(wait=True)

    async def submit(self, event: Draft) -> asyncio.Future[int]:
        """Queue an event; the future resolves to its seq once committed.

        Awaiting this call itself only waits for room in the queue (back-pressure).
        """
        if self._task is None:
            raise AuditUnavailable("the audit writer is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))
        return future

    async def commit(self, event: Draft) -> int:
        """Queue an event and wait until it is durably committed; returns its seq."""
        return await (await self.submit(event))

    async def commit_all(self, events: Sequence[Draft]) -> list[int]:
        futures = [await self.submit(e) for e in events]
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            drafts = [draft for draft, _ in batch]
            started = time.perf_counter()
            try:
                seqs = await loop.run_in_executor(self._thread, self._append, drafts)
            except Exception as exc:
                log.exception("audit commit failed for %d events", len(batch))
                error = AuditUnavailable(f"the audit store could not commit the event: {exc}")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
            else:
                self.committed += len(seqs)
                for (_, future), seq in zip(batch, seqs, strict=True):
                    if not future.done():
                        future.set_result(seq)
            finally:
                self.commits += 1
                self.commit_seconds += time.perf_counter() - started
                for _ in batch:
                    self._queue.task_done()

    def _append(self, drafts: list[Draft]) -> list[int]:
        """Append in one transaction under the chain-head lock (runs in the writer thread)."""
        with self._db.write_session() as session, session.begin():
            return append_events(session, drafts)


def append_events(session: Session, drafts: Sequence[Draft]) -> list[int]:
    """Give each draft the next seq and its link in the chain, and insert it.

    The head row is locked (`FOR UPDATE` on PostgreSQL, the write lock on SQLite) for the
    whole transaction, so seq values become visible in commit order with no gaps.
    """
    head = session.exec(select(ChainHeadRow).where(ChainHeadRow.id == 1).with_for_update()).one()
    seq, prev = head.seq, head.hash
    seqs = []
    for item in drafts:
        seq += 1
        body = dict(item.body)
        body["seq"] = seq
        body["prev_hash"] = prev
        raw = canonical(body)
        prev = link_hash(prev, raw)
        session.add(
            EventRow(
                seq=seq,
                id=body["id"],
                time=item.time,
                type=item.type,
                session_id=item.session_id,
                body=raw.decode("utf-8"),
                hash=prev,
            )
        )
        seqs.append(seq)
    head.seq, head.hash = seq, prev
    session.add(head)
    return seqs
