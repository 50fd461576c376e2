"""A session whose result event could not be recorded, or whose agent was revoked, ends at
once: the trail would otherwise say a statement was sent with no word of how it ended, while
the session went on. The results still in flight are recorded before the client is told."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from controlplane.audit.writer import ResultLoss
from controlplane.auth.identity import Identity
from controlplane.relay.inspection import EndCause
from controlplane.relay.pg.inspector import FATAL_SQLSTATES
from controlplane.relay.service import AGENT_REVOKED, ClientServicer, Ending, _close
from controlplane.relay.tunnel import Tunnel


class Client:
    """The session's client end: what it was sent."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class Inspector:
    """Notes the order of what happens at the end: results first, then the client's fatal."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.finished_with: list[tuple[str, int]] = []

    def fatal(self, message: str, cause: EndCause = EndCause.PROTOCOL) -> bytes:
        return f"{FATAL_SQLSTATES[cause]} {message}".encode()  # as PostgreSQL says it

    async def finish(self, reason: str) -> None:
        self.finished_with.append((reason, len(self.client.written)))


async def _relay_forever(cancelled: asyncio.Event) -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return "closed"


async def _supervise(
    loss: ResultLoss, tunnel: Tunnel, cancelled: asyncio.Event
) -> tuple[Ending, Inspector, Client]:
    servicer: Any = SimpleNamespace(_auth=None)  # a login with no expiry is never re-checked
    client = Client()
    inspector = Inspector(client)
    ending = await ClientServicer._relay_while_valid(
        servicer, _relay_forever(cancelled), Identity("alice"), loss, tunnel
    )
    await _close(client, inspector, ending)  # type: ignore[arg-type]
    return ending, inspector, client


async def test_a_lost_result_event_ends_the_session_with_a_fatal_error() -> None:
    loss, tunnel, cancelled = ResultLoss(), Tunnel("s-1", "vpc"), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, loss, "db.result of seq 7: store unavailable")
    ending, inspector, client = await asyncio.wait_for(_supervise(loss, tunnel, cancelled), 5)
    assert ending.reason == "audit_lost: db.result of seq 7: store unavailable"
    assert cancelled.is_set()  # the pumps stopped: nothing more reaches the target
    # The requests still in flight got their results before the client heard anything.
    assert inspector.finished_with == [(ending.reason, 0)]
    [fatal] = client.written
    assert fatal.startswith(b"58000 session ended: audit_lost")


async def test_a_revoked_agent_ends_the_session_and_says_so() -> None:
    loss, tunnel, cancelled = ResultLoss(), Tunnel("s-1", "vpc"), asyncio.Event()
    why = "agent 'vpc' (instance i-1) serving this session was revoked"
    asyncio.get_running_loop().call_later(0.05, tunnel.revoke, why)
    ending, inspector, client = await asyncio.wait_for(_supervise(loss, tunnel, cancelled), 5)
    assert ending.reason == AGENT_REVOKED
    assert cancelled.is_set()
    assert inspector.finished_with == [(AGENT_REVOKED, 0)]
    [fatal] = client.written
    assert fatal == f"57P01 session ended: {why}".encode()


async def test_a_revocation_that_also_closed_the_relay_is_still_a_revocation() -> None:
    """Revoking the agent closes its tunnel: the relay may end first, as if simply closed."""
    tunnel = Tunnel("s-1", "vpc")

    async def relay() -> str:
        tunnel.revoke("the agent serving it was revoked")
        return "closed"

    servicer: Any = SimpleNamespace(_auth=None)
    ending = await ClientServicer._relay_while_valid(
        servicer, relay(), Identity("alice"), ResultLoss(), tunnel
    )
    assert ending.reason == AGENT_REVOKED and ending.cause is EndCause.SHUTDOWN


async def test_a_session_without_loss_ends_with_its_relay() -> None:
    async def relay() -> str:
        await asyncio.sleep(0.01)
        return "closed"

    servicer: Any = SimpleNamespace(_auth=None)
    client = Client()
    inspector = Inspector(client)
    ending = await ClientServicer._relay_while_valid(
        servicer, relay(), Identity("alice"), ResultLoss(), Tunnel("s-1", "vpc")
    )
    await _close(client, inspector, ending)  # type: ignore[arg-type]
    assert ending == Ending("closed")
    assert inspector.finished_with == [("closed", 0)]
    assert client.written == []  # the client ended it: nothing to tell it


def test_a_loss_counts_every_result_and_keeps_the_first_reason() -> None:
    loss = ResultLoss()
    loss("first")
    loss("second")
    assert (loss.count, loss.reason, loss.lost.is_set()) == (2, "first", True)


class _DoneClient(Client):
    """A client that sent everything and half-closed (exec's shape): reads end at once."""

    async def read(self) -> None:
        return None


class _LosingInspector(Inspector):
    incomplete = False
    end_on_client_eof = False
    drain_timeout = 5.0
    finished = False

    def __init__(self, client: Client) -> None:
        super().__init__(client)
        self.abandoned = False

    async def agent_lost(self) -> None:
        self.abandoned = True


async def test_an_agent_lost_while_the_client_waits_for_its_answers_ends_as_agent_lost() -> None:
    # The client is done sending and the relay drains the target's last answers: an agent
    # lost then is a session end like any other, never an exception out of the handler.
    from controlplane.relay.service import AGENT_LOST, _relay

    tunnel = Tunnel("s-1", "vpc")
    tunnel.lost = True
    tunnel.to_client.put_nowait(None)
    client = _DoneClient()
    inspector = _LosingInspector(client)
    session: Any = SimpleNamespace(tunnel=tunnel, inspector=inspector)
    why = await asyncio.wait_for(_relay(client, session), 5)
    assert why == AGENT_LOST and inspector.abandoned
    [fatal] = client.written
    assert fatal.startswith(b"08006 the connection to agent vpc was lost")
