"""A session whose result event could not be recorded ends at once: the trail would otherwise
say a statement was sent with no word of how it ended, while the session went on."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from controlplane.audit.writer import ResultLoss
from controlplane.auth.identity import Identity
from controlplane.relay.service import ClientServicer


class Client:
    """The session's client end: what it was sent."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    async def write(self, data: bytes) -> None:
        self.written.append(data)


class Inspector:
    def fatal(self, message: str, sqlstate: str = "08P01") -> bytes:
        return f"{sqlstate} {message}".encode()


async def _relay_forever(cancelled: asyncio.Event) -> str:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return "closed"


async def _supervise(identity: Identity, loss: ResultLoss, cancelled: asyncio.Event) -> Any:
    servicer: Any = SimpleNamespace(_auth=None)  # a login with no expiry is never re-checked
    client = Client()
    why = await ClientServicer._relay_while_valid(
        servicer, client, _relay_forever(cancelled), identity, Inspector(), loss
    )
    return why, client.written


async def test_a_lost_result_event_ends_the_session_with_a_fatal_error() -> None:
    loss, cancelled = ResultLoss(), asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, loss, "db.result of seq 7: store unavailable")
    why, written = await asyncio.wait_for(_supervise(Identity("alice"), loss, cancelled), 5)
    assert why == "audit_lost: db.result of seq 7: store unavailable"
    assert cancelled.is_set()  # the pumps stopped: nothing more reaches the target
    [fatal] = written
    assert fatal.startswith(b"58000 session ended: audit_lost")


async def test_a_session_without_loss_ends_with_its_relay() -> None:
    async def relay() -> str:
        await asyncio.sleep(0.01)
        return "closed"

    servicer: Any = SimpleNamespace(_auth=None)
    client = Client()
    why = await ClientServicer._relay_while_valid(
        servicer, client, relay(), Identity("alice"), Inspector(), ResultLoss()
    )
    assert why == "closed" and client.written == []


class _DoneClient(Client):
    """A client that sent everything and half-closed (exec's shape): reads end at once."""

    async def read(self) -> None:
        return None


class _LosingInspector(Inspector):
    incomplete = False
    end_on_client_eof = False
    drain_timeout = 5.0
    finished = False

    def __init__(self) -> None:
        self.abandoned = False

    async def agent_lost(self) -> None:
        self.abandoned = True


async def test_an_agent_lost_while_the_client_waits_for_its_answers_ends_as_agent_lost() -> None:
    # The client is done sending and the relay drains the target's last answers: an agent
    # lost then is a session end like any other, never an exception out of the handler.
    from controlplane.relay.service import AGENT_LOST, _relay
    from controlplane.relay.tunnel import Tunnel

    tunnel = Tunnel("s-1", "vpc")
    tunnel.lost = True
    tunnel.to_client.put_nowait(None)
    inspector, client = _LosingInspector(), _DoneClient()
    session: Any = SimpleNamespace(tunnel=tunnel, inspector=inspector)
    why = await asyncio.wait_for(_relay(client, session), 5)
    assert why == AGENT_LOST and inspector.abandoned
    [fatal] = client.written
    assert fatal.startswith(b"08006 the connection to agent vpc was lost")
