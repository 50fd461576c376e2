"""Failed authentications against a real audit writer: the first of a source's window is
recorded at once, the rest as one event with their count (nothing lost), memory is bounded by
the number of tracked sources, and a source over its budget is refused without token work."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
from sqlmodel import select

from controlplane.audit.writer import AuditWriter
from controlplane.auth.failures import OTHER, AuthFailures
from controlplane.auth.oidc import OidcValidator
from controlplane.auth.sources import SOURCE, peer_ip
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import Unauthenticated
from controlplane.store.database import Database
from controlplane.store.models import EventRow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingIssuer:
    """Refuses every token, counting how often it was asked (the verification work)."""

    class settings:  # noqa: N801
        leeway = 0

    def __init__(self) -> None:
        self.calls = 0

    async def validate(self, token: str) -> Any:
        self.calls += 1
        raise Unauthenticated("the signature does not verify: the token was altered or forged")


async def trail(db: Database, writer: AuditWriter) -> list[dict[str, Any]]:
    await writer.commit_all([])  # let queued events land
    rows = await db.read(lambda s: list(s.exec(select(EventRow))))
    events = [json.loads(row.body) for row in sorted(rows, key=lambda r: r.seq)]
    return [e for e in events if e["type"] == "auth.fail"]


async def settle(writer: AuditWriter) -> None:
    from controlplane.audit.events import draft

    await writer.commit(draft("test.marker"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def test_the_first_failure_is_recorded_at_once_the_rest_with_their_count(
    db: Database, writer: AuditWriter, clock: Clock
) -> None:
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=10, monotonic=clock)
    await failures.failed("10.0.0.1", "unknown token", "gatehouse token", False)
    await settle(writer)
    (first,) = await trail(db, writer)
    assert (first["count"], first["source"], first["reason"]) == (
        1,
        {"ip": "10.0.0.1"},
        "unknown token",
    )
    for index in range(500):
        await failures.failed("10.0.0.1", f"reason {index % 20}", "jwt", False)
    await settle(writer)
    # 500 more: the first of four new reasons at once (five events per window), nothing else.
    immediate = await trail(db, writer)
    assert [e["reason"] for e in immediate[1:]] == [f"reason {i}" for i in range(4)]
    clock.now += 61
    await failures.failed("10.0.0.2", "unknown token", "jwt", False)  # flushes the due window
    await settle(writer)
    summary, other = (await trail(db, writer))[5:]
    assert summary["count"] == 501 - 5 and summary["source"] == {"ip": "10.0.0.1"}
    assert sum(summary["reasons"].values()) == 501  # the first one is in the summary's reasons
    assert len(summary["reasons"]) == 11  # ten named, the rest as "other"
    assert summary["reasons"]["other"] == 11 * 25  # reasons 9 to 19 of each round of 20
    assert other["source"] == {"ip": "10.0.0.2"} and other["count"] == 1


async def test_stop_records_what_is_left(db: Database, writer: AuditWriter, clock: Clock) -> None:
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=10, monotonic=clock)
    failures.start()
    for _ in range(3):
        await failures.failed("10.0.0.1", "bad", "jwt", False)
    await failures.stop()
    await settle(writer)
    counts = [e["count"] for e in await trail(db, writer)]
    assert counts == [1, 2]
    assert failures.tracked == 0


async def test_the_number_of_tracked_sources_is_bounded(
    db: Database, writer: AuditWriter, clock: Clock
) -> None:
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=3, monotonic=clock)
    for index in range(50):
        await failures.failed(f"10.0.1.{index}", "bad", "jwt", False)
    assert failures.tracked == 4  # three sources and the catch-all
    await failures.flush()
    await settle(writer)
    events = await trail(db, writer)
    assert sum(e["count"] for e in events) == 50
    catch_all = [e for e in events if e["source"] == {"ip": OTHER}]
    assert sum(e["count"] for e in catch_all) == 47


async def test_a_source_over_its_budget_is_refused_without_token_work(
    db: Database, writer: AuditWriter, clock: Clock
) -> None:
    issuer = CountingIssuer()
    failures = AuthFailures(writer, window=60, limit=5, max_sources=10, monotonic=clock)
    auth = TokenAuthenticator(db, writer, cast(OidcValidator, issuer), failures=failures)
    SOURCE.set("203.0.113.9")
    md = [("authorization", "Bearer a.b.c")]
    for _ in range(5):
        with pytest.raises(Unauthenticated, match="does not verify"):
            await auth.identify(md)
    for _ in range(100):
        with pytest.raises(Unauthenticated, match="too many failed authentications from 203"):
            await auth.identify(md)
    assert issuer.calls == 5
    SOURCE.set("203.0.113.10")  # another source is not affected
    with pytest.raises(Unauthenticated, match="does not verify"):
        await auth.identify(md)
    clock.now += 60  # the window ends: the source is checked again
    SOURCE.set("203.0.113.9")
    with pytest.raises(Unauthenticated, match="does not verify"):
        await auth.identify(md)
    assert issuer.calls == 7
    await failures.flush()
    await settle(writer)
    throttled = [e for e in await trail(db, writer) if e.get("throttled")]
    assert [(e["count"], e["throttled"]) for e in throttled] == [(103, 100)]


def test_peer_addresses() -> None:
    assert peer_ip("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_ip("ipv6:[::1]:5555") == "::1"
    assert peer_ip("ipv6:%5B2001:db8::1%5D:5555") == "2001:db8::1"  # how grpc 1.6x+ writes it
    assert peer_ip("ipv6:[::ffff:10.0.0.7]:5555") == "10.0.0.7"  # IPv4 on a dual-stack port
    # A unix peer is a connection the TLS front forwarded; one it did not register is unknown.
    assert peer_ip("unix:/tmp/s") == "unknown"
