"""A session the control plane ends (a revoked agent or token) while the CLI still holds it.

The control plane writes the protocol's fatal error and returns at once. A goodbye the CLI
then wrote raced that return: when grpc had the server's status first, the failed write set
the call's status to "Internal error from Core", and the CLI printed that instead of the
reason it had already read (seen in CI). A real grpc server here returns before the client
can answer, so the race goes the server's way nearly every time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from cli.mysql.query import run_sql_on as mysql_run_sql_on
from cli.pg.query import run_sql_on as pg_run_sql_on
from cli.session import finish, open_session
from gatehouse.v1 import client_pb2
from wire.mysql import messages as mysql
from wire.mysql.constants import NATIVE_PASSWORD, Capability
from wire.mysql.packets import encode
from wire.pg import messages as pgm

REASON = "session ended: agent 'vpc' serving this session was revoked"

# What the target side says, in turn, to each thing the client writes after `open`; the last
# answer is the fatal one, after which the control plane returns.
PG = [
    pgm.authentication_ok() + pgm.ready_for_query("I"),
    pgm.error_response(severity="FATAL", sqlstate="57P01", message=REASON),
]
MYSQL_GREETING = encode(
    mysql.handshake(
        server_version="10.11.0-MariaDB",
        connection_id=7,
        scramble=b"0" * 20,
        capabilities=Capability.PROTOCOL_41 | Capability.LONG_PASSWORD,
        plugin=NATIVE_PASSWORD,
    ),
    0,
)
MYSQL = [encode(mysql.ok(), 2), encode(mysql.err(1927, "70100", REASON), 1)]


class EndsAfterTheQuery:
    """Opens, answers what the client writes from `answers`, and returns after the last."""

    def __init__(self, connection_type: str, greeting: bytes, answers: list[bytes]) -> None:
        self.connection_type = connection_type
        self.greeting = greeting
        self.answers = answers
        self.returned = False

    async def session(self, request_iterator: Any, context: Any) -> None:
        await context.read()  # open
        opened = client_pb2.SessionOpened(session_id="s-1", connection_type=self.connection_type)
        await context.write(client_pb2.ServerFrame(opened=opened))
        if self.greeting:
            await context.write(client_pb2.ServerFrame(data=self.greeting))
        for answer in self.answers:
            await context.read()
            await context.write(client_pb2.ServerFrame(data=answer))
        self.returned = True


async def _pg(opened: Any) -> str:
    outcome = await pg_run_sql_on(opened, "select pg_sleep(60)")
    assert outcome.error is not None
    return outcome.error.message


async def _mysql(opened: Any) -> str:
    results, error = await mysql_run_sql_on(opened, "select sleep(60)")
    assert error is not None and not results
    return error.message


async def _run_once(servicer: EndsAfterTheQuery, run: Callable[[Any], Awaitable[str]]) -> str:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.session,
        request_deserializer=client_pb2.ClientFrame.FromString,
        response_serializer=client_pb2.ServerFrame.SerializeToString,
    )
    service = client_pb2.DESCRIPTOR.services_by_name["ClientService"].full_name
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(service, {"Session": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            opened = await open_session(channel, (), "db", "exec", "test")
            return await run(opened)
    finally:
        await server.stop(None)


@pytest.mark.parametrize("attempt", range(5))
def test_postgres_reports_the_reason_the_control_plane_gave(attempt: int) -> None:
    servicer = EndsAfterTheQuery("postgres", b"", PG)
    assert asyncio.run(_run_once(servicer, _pg)) == REASON  # not "Internal error from Core"
    assert servicer.returned


@pytest.mark.parametrize("attempt", range(5))
def test_mysql_reports_the_reason_the_control_plane_gave(attempt: int) -> None:
    servicer = EndsAfterTheQuery("mysql", MYSQL_GREETING, MYSQL)
    assert asyncio.run(_run_once(servicer, _mysql)) == REASON
    assert servicer.returned


async def _rest(call: Any) -> AsyncIterator[object]:
    while (frame := await call.read()) is not grpc.aio.EOF:
        yield frame


async def _goodbye_after_the_status(opened: Any) -> str:
    call = opened.call
    await call.write(client_pb2.ClientFrame(data=b"x"))
    await call.read()  # the last answer: the servicer returns after it
    await call.code()  # grpc has the status before the goodbye is written
    await finish(call, b"goodbye", _rest(call))
    return "finished"


def test_a_goodbye_written_after_grpc_has_the_status_is_taken_as_the_end() -> None:
    """The other side of the race: grpc already has the control plane's status when the
    goodbye is written, and refuses the write with InvalidStateError, not AioRpcError (the
    CLI printed a traceback, "RPC already finished", instead of the reason it had read)."""
    servicer = EndsAfterTheQuery("mysql", b"", [encode(mysql.err(1927, "70100", REASON), 1)])
    assert asyncio.run(_run_once(servicer, _goodbye_after_the_status)) == "finished"
