"""Witnesses: each signed checkpoint also leaves the store, so that a store rewound by someone
who can write to it (newest events deleted, head moved back) is caught by `audit verify
--witness`.

A witness is a file (one JSON line per checkpoint, appended and fsynced) or an http(s) URL (the
same JSON POSTed, retried with backoff). Delivery never blocks the trail: each witness has its
own bounded queue and task; a checkpoint a witness cannot take after every retry (or that finds
its queue full) is logged and counted (gatehouse_audit_witness_failures_total), and the trail
goes on. The checker is trail.witness, which `audit verify --witness` uses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from controlplane.errors import InvalidArgument
from trail.witness import witness_line

log = logging.getLogger(__name__)

QUEUE_SIZE = 1024  # checkpoints waiting per witness; a full queue drops (and counts) the newest
ATTEMPTS = 5  # per checkpoint and URL, with backoff 0.5, 1, 2, 4 s between
POST_TIMEOUT = 10.0


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
