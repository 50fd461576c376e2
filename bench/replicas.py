"""`python -m bench.replicas --minutes N`: a soak of two replicas and two agent instances.

The world of tests/e2e/test_replicas_network.py (devenv/replicanet.py: network namespaces,
TLS, one PostgreSQL store, HAProxy in front) under a steady `exec` load through the balancer,
while every `--every` seconds a random replica or agent instance is killed with -9 and started
again. At the end the trail is reconciled with the target's own statement log (chain, seq,
every statement's `db.query` event). Prints each kill's recovery time (until a session that
began after the kill succeeded) and the counts. Needs root (network namespaces) and HAProxy;
not part of the tests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from devenv import netns
from devenv.replicanet import REPLICAS, Load, World, create_pool, reconcile, started, wait


def _settle(world: World) -> None:
    """Both replicas ready and both instances online again."""
    for replica in REPLICAS:
        if not world.replicas[replica].running:
            world.start_replica(replica)
    for index, agent in enumerate(world.agents):
        if not agent.running:
            world.start_agent(world.join_token, index)
    wait("both instances online", lambda: len(world.online()) == 2)


def soak(base: Path, minutes: float, every: float, threads: int, seed: int) -> int:
    rng = random.Random(seed)
    recoveries: dict[str, list[float]] = {"replica": [], "agent": []}
    with started(base) as world:
        world.place_agents(create_pool(world))
        deadline = time.monotonic() + minutes * 60
        with Load(world, threads=threads) as load:
            load.wait_ok(threads * 2)
            while time.monotonic() + every < deadline:
                time.sleep(every)
                kind = rng.choice(("replica", "agent"))
                killed = time.monotonic()
                if kind == "replica":
                    victim = rng.choice(REPLICAS)
                    world.kill_replica(victim)
                else:
                    index = rng.randrange(len(world.agents))
                    victim = f"agent-{index}"
                    world.kill_agent(index)
                recovered = load.recovered_after(killed, timeout=60)
                recoveries[kind].append(recovered)
                print(f"kill -9 {victim}: a new session succeeded after {recovered:.2f} s")
                _settle(world)
        counts = reconcile(world, base / "soak.pub")
    print(f"\nsessions: {len(load.ok)} ok, {len(load.refused)} refused")
    for kind, times in recoveries.items():
        if times:
            print(
                f"{kind} kills: {len(times)}, recovery median {statistics.median(times):.2f} s, "
                f"max {max(times):.2f} s"
            )
    for _, _, why in load.refused[:10]:
        print(f"refused: {why}")
    print(f"trail: {counts} (verified, seq dense, every statement has its db.query event)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__)
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to run")
    parser.add_argument("--every", type=float, default=20.0, help="seconds between kills")
    parser.add_argument("--threads", type=int, default=2, help="exec clients in parallel")
    parser.add_argument("--seed", type=int, default=0, help="which kills, in which order")
    args = parser.parse_args(argv)
    why = netns.available()
    if why is not None:
        parser.error(f"{why}; run as root")
    with tempfile.TemporaryDirectory(prefix="gatehouse-soak-") as base:
        return soak(Path(base), args.minutes, args.every, args.threads, args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
