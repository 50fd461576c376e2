"""How the agent refuses a session for a connection it does not know: in the client's protocol."""

from __future__ import annotations

import asyncio

from agent import sessions
from agent.engines import CANCEL, Cancel, Receive
from wire.pg import framing
from wire.pg import messages as pgm
from wire.term import codec


def feed(*items: bytes | Cancel | None) -> Receive:
    queue: asyncio.Queue[bytes | Cancel | None] = asyncio.Queue()
    for item in items:
        queue.put_nowait(item)

    async def receive() -> bytes | Cancel | None:
        return await queue.get()

    return receive


async def test_terminal_client_is_refused_with_an_exit() -> None:
    first = await sessions._first_bytes(feed(CANCEL, codec.encode_start(codec.Start(("ls",)))))
    frame = sessions._refusal(first, "the agent has no connection named 'web'")
    [message] = codec.TermFramer.from_target().feed(frame.data)
    assert message.tag == codec.EXIT
    assert codec.parse_exit(message.body) == codec.Exit(
        255, error="gatehouse agent: the agent has no connection named 'web'"
    )
    assert not frame.marks


async def test_postgres_client_is_refused_with_an_error_response() -> None:
    startup = pgm.startup_message({"user": "app", "database": "app"})
    first = await sessions._first_bytes(feed(startup))
    frame = sessions._refusal(first, "the agent has no connection named 'pg'")
    [message] = framing.MessageFramer().feed(frame.data)
    assert message.tag == ord("E")
    assert pgm.parse_error_fields(message.body).sqlstate == "08001"


async def test_client_that_left_gets_the_default_refusal() -> None:
    assert await sessions._first_bytes(feed(None)) == b""
    assert sessions._refusal(b"", "gone").marks, "a PostgreSQL error frame carries its mark"
