"""How the agent refuses a session for a connection it does not know: in the client's protocol."""

from __future__ import annotations

import asyncio

import pymysql
import pytest

from agent import sessions
from agent.engines import CANCEL, Cancel, Receive
from wire.mysql.constants import ER_UNKNOWN_ERROR
from wire.mysql.messages import parse_err
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
    frame = sessions._sniffed_refusal(first, "the agent has no connection named 'web'")
    [message] = codec.TermFramer.from_target().feed(frame.data)
    assert message.tag == codec.EXIT
    assert codec.parse_exit(message.body) == codec.Exit(
        255, error="gatehouse agent: the agent has no connection named 'web'"
    )
    assert not frame.marks


async def test_postgres_client_is_refused_with_an_error_response() -> None:
    startup = pgm.startup_message({"user": "app", "database": "app"})
    first = await sessions._first_bytes(feed(startup))
    frame = sessions._sniffed_refusal(first, "the agent has no connection named 'pg'")
    [message] = framing.MessageFramer().feed(frame.data)
    assert message.tag == ord("E")
    assert pgm.parse_error_fields(message.body).sqlstate == "08001"


async def test_client_that_left_gets_the_default_refusal() -> None:
    assert await sessions._first_bytes(feed(None)) == b""
    assert sessions._sniffed_refusal(b"", "gone").marks, "a PostgreSQL error frame carries its mark"


async def _never() -> bytes | Cancel | None:
    raise AssertionError("a session of a known type must not wait for the client")


async def test_mysql_connection_is_refused_with_an_err_packet_before_any_greeting() -> None:
    frame = await sessions._refusal("mysql", _never, "the agent has no connection named 'db'")
    length = int.from_bytes(frame.data[:3], "little")
    assert (length, frame.data[3]) == (len(frame.data) - 4, 0)  # one packet, sequence 0
    err = parse_err(frame.data[4:])
    assert (err.sqlstate, err.message) == ("08001", "the agent has no connection named 'db'")


async def test_http_connection_is_refused_with_a_502() -> None:
    frame = await sessions._refusal("http", _never, "the agent has no connection named 'web'")
    assert frame.data.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert frame.data.endswith(b"the agent has no connection named 'web'\"}\n")


async def test_an_order_without_a_type_is_refused_in_the_client_s_protocol() -> None:
    startup = pgm.startup_message({"user": "app", "database": "app"})
    frame = await sessions._refusal("", feed(startup), "the agent has no connection named 'pg'")
    [message] = framing.MessageFramer().feed(frame.data)
    assert pgm.parse_error_fields(message.body).sqlstate == "08001"


async def test_pymysql_reads_the_refusal_as_the_server_s_error() -> None:
    """What the client of a `mysql` connection receives when the agent lacks the connection:
    PyMySQL, which waits for the server's greeting, reports the agent's words."""
    frame = await sessions._refusal("mysql", _never, "the agent has no connection named 'db'")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(frame.data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(pymysql.err.OperationalError) as refused:
            await asyncio.to_thread(
                pymysql.connect, host="127.0.0.1", port=port, user="any", connect_timeout=30
            )
    assert refused.value.args == (ER_UNKNOWN_ERROR, "the agent has no connection named 'db'")
