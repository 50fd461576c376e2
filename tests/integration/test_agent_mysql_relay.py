"""The agent's MySQL engine on its own, against a throwaway MariaDB: it greets the client,
logs in with its credential, marks each result, and a cancel order kills the running query."""

from __future__ import annotations

import asyncio
import os
import time

from agent.engines import CANCEL, Cancel
from agent.mysql import relay
from devenv.mariadb import MariadbServer
from gatehouse.v1 import tunnel_pb2
from tests.conftest import MYSQL_PASSWORD
from wire.mysql import messages as msg
from wire.mysql.constants import Capability, Command
from wire.mysql.packets import PacketFramer, encode

Mark = tunnel_pb2.ResultMark


async def _session(mariadb: MariadbServer) -> tuple[list[tunnel_pb2.Frame], float]:
    inbox: asyncio.Queue[bytes | Cancel | None] = asyncio.Queue()
    frames: list[tunnel_pb2.Frame] = []
    arrived = asyncio.Event()

    async def send(frame: tunnel_pb2.Frame) -> None:
        frames.append(frame)
        arrived.set()

    os.environ["GATEHOUSE_TEST_MY_PASSWORD"] = MYSQL_PASSWORD
    target = {"host": mariadb.host, "port": mariadb.port, "database": "app", "user": "app"}
    engine = asyncio.create_task(
        relay.run(target, {"password": "env:GATEHOUSE_TEST_MY_PASSWORD"}, inbox.get, send)
    )
    await asyncio.wait_for(arrived.wait(), 10)
    greeting = msg.parse_handshake(PacketFramer().feed(frames[0].data)[0].payload)
    assert not greeting.capabilities & Capability.SSL  # TLS is the local listener's business
    caps = int(Capability.PROTOCOL_41 | Capability.DEPRECATE_EOF | Capability.SECURE_CONNECTION)
    hello = msg.handshake_response(
        capabilities=caps, user="someone", auth_response=b"wrong", plugin="mysql_native_password"
    )
    await inbox.put(encode(hello, 1))
    while not any(m.kind == Mark.READY for f in frames for m in f.marks):
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
    await inbox.put(encode(msg.command(Command.QUERY, b"SELECT SLEEP(30)"), 0))
    await asyncio.sleep(1)
    started = time.monotonic()
    await inbox.put(CANCEL)
    while sum(m.kind == Mark.READY for f in frames for m in f.marks) < 2:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 20)
    took = time.monotonic() - started
    await inbox.put(None)
    await asyncio.wait_for(engine, 30)
    return frames, took


def test_the_engine_logs_in_marks_results_and_cancels(mariadb: MariadbServer) -> None:
    frames, took = asyncio.run(_session(mariadb))
    assert took < 20  # SLEEP(30) was killed
    marks = [m for f in frames for m in f.marks]
    assert [m.kind for m in marks] == [Mark.COMPLETE, Mark.READY, marks[2].kind, Mark.READY]
    # The killed SLEEP either returns 1 or fails with "query execution was interrupted".
    result = marks[2]
    assert (result.kind, result.command, result.rows) == (Mark.COMPLETE, "SELECT", 1) or (
        result.kind,
        result.code,
    ) == (Mark.ERROR, 1317)
    logged = [e for e in mariadb.general_log() if e.text.startswith("KILL QUERY")]
    assert logged  # the agent's own connection ran it
