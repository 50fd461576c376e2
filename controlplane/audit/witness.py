"""Witnesses: each signed checkpoint also leaves the store, so that a store rewound by someone
who can write to it (newest events deleted, head moved back) is caught by `audit verify
--witness`.

A witness is a file (one JSON line per checkpoint, appended and fsynced) or an http(s) URL (the
same JSON POSTed, retried with backoff). Delivery never blocks the trail: each witness has its
own bounded queue and task; a checkpoint a witness cannot take after every retry (or that finds
its queue full) is logged and counted (gatehouse_audit_witness_failures_total), and the trail
goes on. The checker (`check_witness`) is pure and imports nothing heavy: the CLI uses it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controlplane.errors import InvalidArgument

log = logging.getLogger(__name__)

WITNESS_TYPE = "gatehouse.audit.checkpoint"
QUEUE_SIZE = 1024  # checkpoints waiting per witness; a full queue drops (and counts) the newest
ATTEMPTS = 5  # per checkpoint and URL, with backoff 0.5, 1, 2, 4 s between
POST_TIMEOUT = 10.0


def witness_line(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What a witness keeps of a checkpoint: enough to check the store and its signature."""
    return {
        "type": WITNESS_TYPE,
        "event_seq": checkpoint["event_seq"],
        "seq": checkpoint["seq"],
        "hash": checkpoint["hash"],
        "key_id": checkpoint["key_id"],
        "signature": checkpoint["signature"],
        "time": checkpoint.get("time", ""),
    }


def check_target(target: str) -> str:
    """A witness must be an absolute path or an http(s) URL; says what is wrong otherwise."""
    if target.startswith(("http://", "https://")):
        return target
    if "://" in target:
        raise InvalidArgument(f"witness {target!r}: only file paths and http(s) URLs are allowed")
    if not os.path.isabs(target):
        raise InvalidArgument(f"witness {target!r}: a file witness needs an absolute path")
    if not os.path.isdir(os.path.dirname(target)):
        raise InvalidArgument(f"witness {target!r}: its directory does not exist")
    return target


class _Target:
    def __init__(self, target: str, publisher: WitnessPublisher) -> None:
        self.target = target
        self._publisher = publisher
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            document = await self.queue.get()
            try:
                await self._deliver(document)
            finally:
                self.queue.task_done()

    async def _deliver(self, document: dict[str, Any]) -> None:
        delay = 0.5
        for attempt in range(1, ATTEMPTS + 1):
            try:
                if self.target.startswith(("http://", "https://")):
                    await self._post(document)
                else:
                    await asyncio.to_thread(_append_line, Path(self.target), document)
            except Exception as exc:  # every failure is retried, then counted
                if attempt == ATTEMPTS:
                    self._publisher.failures += 1
                    log.error(
                        "witness %s did not take the checkpoint at seq %s after %d attempts: %s",
                        self.target,
                        document["event_seq"],
                        ATTEMPTS,
                        exc,
                    )
                    return
                await asyncio.sleep(delay)
                delay *= 2
            else:
                self._publisher.pushes += 1
                return

    async def _post(self, document: dict[str, Any]) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(self.target, json=document) as response,
        ):
            if response.status >= 300:
                raise RuntimeError(f"HTTP {response.status}")


def _append_line(path: Path, document: dict[str, Any]) -> None:
    line = (json.dumps(document, separators=(",", ":"), sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


class WitnessPublisher:
    """Hands each checkpoint to every configured witness, in order, never blocking the caller."""

    def __init__(self, targets: Iterable[str]) -> None:
        self._targets = [_Target(check_target(t), self) for t in targets]
        self.pushes = 0
        self.failures = 0

    def __bool__(self) -> bool:
        return bool(self._targets)

    def start(self) -> None:
        for target in self._targets:
            target.task = asyncio.create_task(target.run(), name=f"witness {target.target}")

    def offer(self, checkpoint: Mapping[str, Any]) -> None:
        """The writer's checkpoint sink: queue for every witness; a full queue is a failure."""
        document = witness_line(checkpoint)
        for target in self._targets:
            try:
                target.queue.put_nowait(document)
            except asyncio.QueueFull:
                self.failures += 1
                log.error("witness %s is %d checkpoints behind: dropped one", target, QUEUE_SIZE)

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (a bounded time) until every witness took what is queued."""
        waits = [t.queue.join() for t in self._targets if t.task is not None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except TimeoutError:
                log.warning("witnesses still had checkpoints queued at shutdown")

    async def close(self) -> None:
        await self.drain()
        for target in self._targets:
            if target.task is not None:
                target.task.cancel()
                await asyncio.gather(target.task, return_exceptions=True)
                target.task = None


# ---- checking the store against a witness --------------------------------------------------


@dataclass(frozen=True, slots=True)
class WitnessEntry:
    line: int
    event_seq: int
    seq: int
    hash: str
    document: dict[str, Any]


def read_witness(lines: Iterable[str]) -> list[WitnessEntry]:
    """The checkpoints of a witness file; ValueError naming the first line that is not one."""
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            document = json.loads(line)
        except ValueError:
            raise ValueError(f"witness line {number} is not JSON") from None
        if not isinstance(document, dict):
            raise ValueError(f"witness line {number} is not a JSON object")
        event_seq, seq, hash_ = (document.get(k) for k in ("event_seq", "seq", "hash"))
        if (
            not isinstance(event_seq, int)
            or not isinstance(seq, int)
            or not isinstance(hash_, str)
            or isinstance(event_seq, bool)
        ):
            raise ValueError(f"witness line {number} is not a checkpoint (event_seq, seq, hash)")
        entries.append(WitnessEntry(number, event_seq, seq, hash_, document))
    return entries


@dataclass(frozen=True, slots=True)
class WitnessReport:
    witnessed: int  # checkpoints in the witness
    matched: int  # found in the store, identical
    pruned: int  # before the store's start: no longer checkable
    newest: int  # event_seq of the newest witnessed checkpoint (0: none)
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def check_witness(
    entries: Iterable[WitnessEntry],
    *,
    start_seq: int,
    head_seq: int,
    stored: Mapping[int, Mapping[str, Any] | None],
    signature_problem: Any = None,
) -> WitnessReport:
    """Compare the store with what a witness saw.

    `stored` maps each witnessed event_seq that the store holds to that event's `checkpoint`
    object (None when the event there is not a checkpoint). Every witnessed checkpoint after
    the store's start must be there, identical; and the head must not be behind the newest one.
    `signature_problem(document)`, when given, says why a witnessed signature does not hold.
    """
    entries = list(entries)
    matched = pruned = 0
    newest = max((e.event_seq for e in entries), default=0)
    problem: str | None = None
    if newest > head_seq:
        witnessed = next(e for e in entries if e.event_seq == newest)
        problem = (
            f"the store ends at seq {head_seq}, but the witness holds a checkpoint at seq "
            f"{newest} (vouching for seq {witnessed.seq}, time "
            f"{witnessed.document.get('time') or 'unknown'}): events after seq {head_seq} "
            "were removed and the chain head rewound"
        )
    for entry in entries:
        if problem is not None:
            break
        if signature_problem is not None:
            why = signature_problem(entry.document)
            if why is not None:
                problem = f"witness line {entry.line} (seq {entry.event_seq}): {why}"
                break
        if entry.event_seq <= start_seq:
            pruned += 1
            continue
        found = stored.get(entry.event_seq)
        if found is None:
            problem = (
                f"the witness holds a checkpoint at seq {entry.event_seq}, but the store's "
                f"event {entry.event_seq} is not that checkpoint: the trail was rewritten"
            )
        elif (found.get("seq"), found.get("hash")) != (entry.seq, entry.hash):
            problem = (
                f"the checkpoint at seq {entry.event_seq} vouches for seq {found.get('seq')} "
                f"hash {found.get('hash')} in the store, but for seq {entry.seq} hash "
                f"{entry.hash} in the witness: the trail was rewritten"
            )
        else:
            matched += 1
    return WitnessReport(len(entries), matched, pruned, newest, problem)
