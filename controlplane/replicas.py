"""Several control-plane replicas on one PostgreSQL store: membership and the replica bus.

Each replica has a row in `replicas` (its id, the address agents dial for its clients'
sessions, a heartbeat every HEARTBEAT seconds). What one replica does that others must act on
travels as PostgreSQL notifications on one channel (`LISTEN gatehouse`), each a small JSON
object addressed to everyone or to one replica:

* `order` — a session of this replica's client goes to an agent instance whose control stream
  another replica holds: that replica passes the order on, with this replica's address, and
  the agent dials its session leg here (ADRs 0023, 0035).
* `revoke` — agent instances were revoked: every replica cuts their control and session
  streams.
* `policy` — a policy was applied: every replica pushes it to the instances it holds.
* `audit` — events were committed: followers (`StreamEvents`, export `--follow`) read now.

A notification is delivered only to sessions listening when it commits, so one missed while
the listener reconnects is made up by a re-check every RECHECK seconds (revocations, the
policy version) and by followers' own one-second poll. SQLite holds one replica: a lock on a
file next to the store refuses a second process, and nothing else here runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import psycopg
from sqlmodel import Session

from controlplane.addresses import split_host_port
from controlplane.agents.registry import AgentLink, AgentRegistry, Route
from controlplane.audit.events import utc_now
from controlplane.audit.writer import AuditWriter
from controlplane.errors import FailedPrecondition, Unavailable
from controlplane.policy.store import PolicyStore
from controlplane.store.database import Database
from controlplane.store.models import ReplicaRow
from gatehouse.v1 import agent_pb2

log = logging.getLogger(__name__)

CHANNEL = "gatehouse"
HEARTBEAT = 1.0  # seconds between a replica's "alive" writes
RECHECK = 3.0  # seconds between re-checks of revocations and the policy version
RECONNECT = 1.0  # seconds before the listener tries its connection again
PUBLISH_TIMEOUT = 5.0  # seconds a notification may take to send
ORDER_ACK = 2.0  # seconds the holding replica has to confirm it passed an order on
# The holder passes an order on only within this many seconds of its sending (wall clocks,
# which replicas keep in step for certificates and tokens anyway); the rest of ORDER_ACK is
# for its ack to travel back. A late order is refused, never delivered after the origin has
# given up on it and sent the session to another instance.
ORDER_TTL = ORDER_ACK / 2


async def push_policy(links: list[AgentLink], policy: PolicyStore) -> list[str]:
    """Send each instance its part of the current policy; returns the names that took it.

    Never waits: this runs on the replica bus's listener and in the heartbeat's re-check, so
    an agent not reading its control stream would hold up revocations, orders and this
    replica's heartbeat. One whose queue is full is cut instead; it gets the policy when it
    connects again."""
    notified = []
    for link in links:
        if link.closed.is_set():
            continue
        push = agent_pb2.ControlMessage(policy=policy.for_agent(link.name))
        try:
            link.outbox.put_nowait(push)
        except asyncio.QueueFull:
            log.warning(
                "agent %s (instance %s) does not read its control stream: cut, it gets the "
                "policy when it connects again",
                link.name,
                link.instance_id,
            )
            link.close("it did not read its control stream (a policy push found it full)")
            continue
        notified.append(link.name)
    return notified


def default_advertise(grpc_listen: str, public_addr: tuple[str, ...]) -> str:
    """Where agents reach this replica: its listen address, unless that is every address."""
    host, port = split_host_port(grpc_listen)
    if host not in ("0.0.0.0", "::", ""):
        return grpc_listen
    if public_addr:
        name = public_addr[0]
        return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
    return f"{socket.getfqdn()}:{port}"


class SqliteReplicaLock:
    """SQLite holds one replica: an exclusive lock on `<store>.replica-lock` while it runs."""

    def __init__(self, db: Database) -> None:
        database = db.sa_url.database or ""
        self.path = Path(database + ".replica-lock") if database not in ("", ":memory:") else None
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        if self.path is None:
            return
        handle = open(self.path, "a+")  # noqa: SIM115  (held for the process's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FailedPrecondition(
                f"another control plane ({holder}) already serves the SQLite store "
                f"{self.path.with_suffix('')}: SQLite holds one replica. Stop it, or run "
                "several replicas on PostgreSQL (GATEHOUSE_DATABASE_URL=postgresql://…)"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the lock
            self._file = None


class Replicas:
    """This replica's membership and its end of the replica bus (PostgreSQL only)."""

    def __init__(
        self,
        db: Database,
        registry: AgentRegistry,
        policy: PolicyStore,
        audit: AuditWriter,
        advertise: str,
    ) -> None:
        self._db = db
        self._registry = registry
        self._policy = policy
        self._audit = audit
        self.id = registry.replica_id
        self.advertise = advertise
        self._conninfo = db.sa_url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )
        self._publisher: psycopg.AsyncConnection[Any] | None = None
        self._publish_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._acks: dict[str, asyncio.Future[bool]] = {}  # forwarded orders, by session id
        self._pushed_version = -1
        self.listening = asyncio.Event()
        self.handlers: dict[str, Callable[[dict[str, Any]], Awaitable[None]]] = {
            "order": self._on_order,
            "revoke": self._on_revoke,
            "policy": self._on_policy,
            "audit": self._on_audit,
            "ack": self._on_ack,
        }

    async def start(self) -> None:
        """Join: our row, the listener, the heartbeat and re-check, the audit wake-ups."""
        now = utc_now()
        row = ReplicaRow(
            id=self.id,
            advertise=self.advertise,
            hostname=socket.gethostname()[:255],
            started_at=now,
            seen_at=now,
        )
        await self._db.write(lambda s: s.add(row))
        self._registry.forward = self.forward
        self._registry.on_revoked = self.revoked
        self._pushed_version = self._policy.version
        self._tasks = [
            asyncio.create_task(self._listen(), name="replica-listener"),
            asyncio.create_task(self._heartbeat(), name="replica-heartbeat"),
            asyncio.create_task(self._announce_commits(), name="replica-audit-wake"),
        ]
        with contextlib.suppress(TimeoutError):  # the first orders may come at once
            await asyncio.wait_for(self.listening.wait(), 10)
        log.info("replica %s joined, advertising %s to agents", self.id, self.advertise)

    async def stop(self) -> None:
        """Leave: other replicas stop routing to the instances we held at once."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

        def leave(session: Session) -> None:
            row = session.get(ReplicaRow, self.id)
            if row is not None:
                row.stopped_at = utc_now()
                session.add(row)

        try:
            await self._db.write(leave)
        except Exception as exc:  # the store is gone: the heartbeat simply stops
            log.warning("could not record that replica %s stopped: %s", self.id, exc)
        if self._publisher is not None:
            await self._publisher.close()
            self._publisher = None

    # ---- sending ----------------------------------------------------------------------------

    async def publish(self, message: dict[str, Any]) -> None:
        """Send one notification to every replica (raises Unavailable when it cannot)."""
        payload = json.dumps({**message, "from": self.id}, separators=(",", ":"))
        async with self._publish_lock:
            try:
                if self._publisher is None or self._publisher.closed:
                    self._publisher = await psycopg.AsyncConnection.connect(
                        self._conninfo, autocommit=True, connect_timeout=int(PUBLISH_TIMEOUT)
                    )
                await asyncio.wait_for(
                    self._publisher.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload)),
                    PUBLISH_TIMEOUT,
                )
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self._publisher is not None:
                    await self._publisher.close()
                    self._publisher = None
                raise Unavailable(
                    f"cannot reach the other control-plane replicas through the store: {exc}"
                ) from None

    async def forward(self, route: Route, order: agent_pb2.OpenSession) -> None:
        """A session order for an instance another replica holds: it passes it on, and the
        agent dials this replica's advertised address. Raises Unavailable when that replica
        does not confirm within ORDER_ACK (it died, or no longer holds the instance)."""
        acked = asyncio.get_running_loop().create_future()
        self._acks[order.session_id] = acked
        try:
            await self.publish(
                {
                    "kind": "order",
                    "to": route.replica,
                    "instance": route.instance_id,
                    "session_id": order.session_id,
                    "connection": order.connection,
                    "type": order.type,
                    "dial": self.advertise,
                    "leg": order.leg,
                    "expires": time.time() + ORDER_TTL,
                }
            )
            taken = await asyncio.wait_for(acked, ORDER_ACK)
        except TimeoutError:
            taken = False
        finally:
            self._acks.pop(order.session_id, None)
        if not taken:
            raise Unavailable(f"replica {route.replica} did not take the session order")

    async def revoked(self, instances: list[str]) -> None:
        try:
            await self.publish({"kind": "revoke", "instances": instances})
        except Unavailable as exc:  # the others find it at their next re-check
            log.warning("could not tell the other replicas of a revocation: %s", exc)

    async def policy_applied(self) -> None:
        try:
            await self.publish({"kind": "policy", "version": self._policy.version})
        except Unavailable as exc:
            log.warning("could not tell the other replicas of the new policy: %s", exc)

    async def _announce_commits(self) -> None:
        """After this replica's commits, wake the others' followers: at most one notification
        in flight, the commits meanwhile share the next."""
        announced = self._audit.committed
        while True:
            await self._audit.commit_signal().wait()
            if self._audit.committed == announced:
                continue  # a wake-up from another replica, or a stop: nothing of ours
            announced = self._audit.committed
            try:
                await self.publish({"kind": "audit"})
            except Unavailable:
                await asyncio.sleep(RECONNECT)  # followers still poll every second

    # ---- receiving --------------------------------------------------------------------------

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    await self._recheck()  # whatever was said while we were not listening
                    async for notification in connection.notifies():
                        await self._dispatch(notification.payload)
            except (psycopg.Error, OSError) as exc:
                self.listening.clear()
                log.warning("replica bus: lost the store's notifications (%s); reconnecting", exc)
                await asyncio.sleep(RECONNECT)

    async def _dispatch(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            handler = self.handlers.get(message.get("kind", ""))
        except (ValueError, AttributeError):
            log.warning("replica bus: ignored a notification that is not ours")
            return
        if handler is None or message.get("to", self.id) != self.id:
            return
        try:
            await handler(message)
        except Exception:  # one bad message must not stop the listener
            log.exception("replica bus: handling %s failed", message.get("kind"))

    async def _on_order(self, message: dict[str, Any]) -> None:
        order = agent_pb2.OpenSession(
            session_id=str(message["session_id"]),
            connection=str(message["connection"]),
            dial=str(message["dial"]),
            type=str(message.get("type", "")),
            leg=str(message.get("leg", "")),
        )
        late = time.time() - float(message.get("expires", 0))
        if late > 0:
            log.warning(
                "session %s: the order came %.1f s after its deadline (a slow store, or clocks "
                "out of step); refused, its replica sends it to another instance",
                order.session_id,
                late,
            )
            taken = False
        else:
            taken = self._registry.deliver(str(message["instance"]), order)
        if late <= 0 and not taken:
            log.warning(
                "session %s: instance %s is no longer held here; its replica reroutes",
                order.session_id,
                message["instance"],
            )
        ack = {"kind": "ack", "to": message.get("from"), "session_id": order.session_id}
        with contextlib.suppress(Unavailable):  # the origin then times out and reroutes
            await self.publish({**ack, "taken": taken})

    async def _on_ack(self, message: dict[str, Any]) -> None:
        acked = self._acks.get(str(message.get("session_id")))
        if acked is not None and not acked.done():
            acked.set_result(bool(message.get("taken")))

    async def _on_revoke(self, message: dict[str, Any]) -> None:
        if message.get("from") != self.id:
            self._registry.cut(str(i) for i in message.get("instances", []))

    async def _on_policy(self, message: dict[str, Any]) -> None:
        await self._push_if_new()

    async def _on_audit(self, message: dict[str, Any]) -> None:
        if message.get("from") != self.id:
            self._audit.wake_followers()

    async def _push_if_new(self) -> None:
        await self._policy.load()
        if self._policy.version != self._pushed_version:
            self._pushed_version = self._policy.version
            await push_policy(self._registry.online(), self._policy)

    def pushed(self, version: int) -> None:
        """This replica pushed `version` itself (an apply here)."""
        self._pushed_version = version

    # ---- the heartbeat and the re-check ------------------------------------------------------

    async def _heartbeat(self) -> None:
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            await asyncio.sleep(HEARTBEAT)

            def alive(session: Session) -> None:
                row = session.get(ReplicaRow, self.id)
                if row is not None:
                    row.seen_at = utc_now()
                    session.add(row)

            try:
                await self._db.write(alive)
                if loop.time() - checked >= RECHECK:
                    checked = loop.time()
                    await self._recheck()
            except Exception as exc:  # the store is down: try again at the next beat
                log.warning("replica %s: heartbeat or re-check failed: %s", self.id, exc)

    async def _recheck(self) -> None:
        """What a missed notification would have told us: revocations and a new policy."""
        await self._registry.recheck()
        await self._push_if_new()
