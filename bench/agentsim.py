"""Simulated agents: one process holds many `AgentService.Control` streams, as real agents do.

Each simulated agent speaks the real protocol (bearer credential or, with --mtls, its own
client certificate on a connection of its own; Hello, Welcome, the pushed
Policy, heartbeats at the interval the control plane asks for), so the control plane does for
it exactly what it does for a real agent. Streams share a few gRPC channels (HTTP/2
connections), `--per-channel` streams each, so thousands of them fit in a few processes.

The parent (bench/agents.py) reads one JSON status line every half second from stdout and
stops the process by closing its stdin. Run: `python -m bench.agentsim --help`.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from gatehouse.v1 import agent_pb2, agent_pb2_grpc

STATUS_EVERY = 0.5
MTLS = "mtls"  # the --seed of agents that authenticate by client certificate


def agent_name(index: int) -> str:
    return f"sim-{index:05d}"


def connection_name(index: int) -> str:
    """The connection the pushed policy gives this agent (so receipt can be checked)."""
    return f"pg-{index:05d}"


def credential(seed: str, index: int) -> str:
    """A deterministic agent credential: the parent stores its hash, this process derives it."""
    return "gha_bench" + hashlib.sha256(f"{seed}:{index}".encode()).hexdigest()


@dataclass
class Fleet:
    """What the simulated agents have seen; printed as the status line."""

    connected: int = 0
    failed: int = 0
    lost: int = 0
    heartbeats: int = 0
    first_error: str = ""
    versions: dict[int, int] = field(default_factory=dict)  # agent index -> policy version
    own: dict[int, bool] = field(default_factory=dict)  # latest policy names its connection
    received_at: dict[int, float] = field(default_factory=dict)  # version -> latest receipt

    def status(self) -> dict[str, Any]:
        by_version = Counter(self.versions.values())
        own_by_version = Counter(v for i, v in self.versions.items() if self.own.get(i))
        return {
            "connected": self.connected,
            "failed": self.failed,
            "lost": self.lost,
            "heartbeats": self.heartbeats,
            "first_error": self.first_error,
            "versions": {str(k): n for k, n in by_version.items()},
            "own": {str(k): n for k, n in own_by_version.items()},
            "received_at": {str(k): t for k, t in self.received_at.items()},
        }

    def policy(self, index: int, policy: agent_pb2.Policy) -> None:
        self.versions[index] = policy.version
        self.own[index] = any(c.name == connection_name(index) for c in policy.connections)
        self.received_at[policy.version] = time.time()


def make_channels(
    address: str, count: int, tls: list[grpc.ChannelCredentials] | None = None
) -> list[grpc.aio.Channel]:
    """Separate HTTP/2 connections: gRPC would otherwise share one subchannel between channels
    with the same arguments. With `tls`, channel i holds agent i's client certificate."""
    channels = []
    for index in range(count):
        options = [
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.keepalive_time_ms", 20_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("bench.channel", index),
        ]
        if tls is None:
            channels.append(grpc.aio.insecure_channel(address, options=options))
        else:
            channels.append(grpc.aio.secure_channel(address, tls[index], options=options))
    return channels


def mtls_credentials(path: str, first: int, count: int) -> list[grpc.ChannelCredentials]:
    """Agent i's key and certificate from the file bench/agents.py wrote (mTLS: one identity,
    so one connection, per agent)."""
    with open(path) as handle:
        document = json.load(handle)
    ca = document["ca"].encode()
    return [
        grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=document["agents"][str(i)]["key"].encode(),
            certificate_chain=document["agents"][str(i)]["certificate"].encode(),
        )
        for i in range(first, first + count)
    ]


async def simulate(
    index: int,
    seed: str,
    channel: grpc.aio.Channel,
    gate: asyncio.Semaphore,
    fleet: Fleet,
) -> None:
    stub = agent_pb2_grpc.AgentServiceStub(channel)
    mtls = seed == MTLS
    metadata = () if mtls else (("authorization", f"Bearer {credential(seed, index)}"),)
    heartbeat: asyncio.Task[None] | None = None
    connected = False
    try:
        async with gate:  # connect a bounded number at a time, like a staggered fleet
            call = stub.Control(metadata=metadata)  # type: ignore[call-arg]
            hello = agent_pb2.Hello(
                name=agent_name(index),
                version="bench",
                hostname="bench",
                multiplexed=True,
                framed_leg=True,
            )
            await call.write(agent_pb2.AgentMessage(hello=hello))
            welcome = await call.read()
            if not isinstance(welcome, agent_pb2.ControlMessage) or not welcome.HasField("welcome"):
                raise RuntimeError("the control stream did not start with welcome")
            first = await call.read()
            if not isinstance(first, agent_pb2.ControlMessage) or not first.HasField("policy"):
                raise RuntimeError("no policy after welcome")
            fleet.policy(index, first.policy)
        fleet.connected += 1
        connected = True
        interval = welcome.welcome.heartbeat_interval_ms / 1000 or 10.0
        heartbeat = asyncio.create_task(_heartbeats(call, interval, fleet))
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.ControlMessage):
                break
            if message.HasField("policy"):
                fleet.policy(index, message.policy)
        fleet.lost += 1
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if connected:
            fleet.lost += 1
        else:
            fleet.failed += 1
        if not fleet.first_error:
            fleet.first_error = f"{agent_name(index)}: {type(exc).__name__}: {exc}"[:500]
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        if connected:
            fleet.connected -= 1


async def _heartbeats(
    call: grpc.aio.StreamStreamCall[agent_pb2.AgentMessage, agent_pb2.ControlMessage],
    interval: float,
    fleet: Fleet,
) -> None:
    # The first beat at a random point of the interval: agents do not beat in lockstep.
    await asyncio.sleep(random.uniform(0, interval))
    while True:
        beat = agent_pb2.Heartbeat(sent_unix_ms=int(time.time() * 1000))
        await call.write(agent_pb2.AgentMessage(heartbeat=beat))
        fleet.heartbeats += 1
        await asyncio.sleep(interval)


async def main_async(args: argparse.Namespace) -> None:
    fleet = Fleet()
    if args.mtls:
        args.seed, args.per_channel = MTLS, 1
        tls = mtls_credentials(args.mtls, args.first, args.count)
        channels = make_channels(args.address, args.count, tls)
    else:
        channels = make_channels(args.address, max(1, -(-args.count // args.per_channel)))
    gate = asyncio.Semaphore(args.concurrency)
    tasks = [
        asyncio.create_task(
            simulate(i, args.seed, channels[(i - args.first) // args.per_channel], gate, fleet)
        )
        for i in range(args.first, args.first + args.count)
    ]
    loop = asyncio.get_running_loop()
    stdin_closed = loop.run_in_executor(None, sys.stdin.buffer.read)
    try:
        while not stdin_closed.done():
            print(json.dumps(fleet.status()), flush=True)
            await asyncio.wait([stdin_closed], timeout=STATUS_EVERY)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close(None)
        print(json.dumps(fleet.status()), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--address", required=True, help="the control plane's gRPC host:port")
    parser.add_argument("--seed", default="", help="derives each agent's credential")
    parser.add_argument("--first", type=int, required=True, help="index of the first agent")
    parser.add_argument("--count", type=int, required=True, help="how many agents")
    parser.add_argument("--per-channel", type=int, default=100, help="streams per connection")
    parser.add_argument("--concurrency", type=int, default=50, help="connects at once")
    parser.add_argument(
        "--mtls", help="JSON of the CA and each agent's key and certificate: connect with mTLS"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main_async(args))
    else:
        uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
