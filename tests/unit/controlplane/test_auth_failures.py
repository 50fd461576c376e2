"""Failed authentications against a real audit writer: the first of a source's window is
recorded at once, the rest as one event with their count (nothing lost), memory is bounded by
the number of tracked sources, and a source over its budget is refused without token work."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
from sqlmodel import select

from controlplane.audit.errors import AuditUnavailable
from controlplane.audit.writer import AuditWriter
from controlplane.auth.failures import MAX_OVERFLOW_LISTED, OTHER, AuthFailures
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


async def test_the_number_of_tracked_sources_is_bounded_and_the_overflow_is_explicit(
    db: Database, writer: AuditWriter, clock: Clock
) -> None:
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=3, monotonic=clock)
    for index in range(150):
        await failures.failed(f"10.0.1.{index}", f"bad {index % 2}", "jwt", False)
    assert failures.tracked == 3  # three sources; the rest are the overflow, which is none
    assert failures.overflow_total == 147
    await settle(writer)
    first, second, third, overflowed = await trail(db, writer)
    assert [e["source"] for e in (first, second, third)] == [
        {"ip": "10.0.1.0"},
        {"ip": "10.0.1.1"},
        {"ip": "10.0.1.2"},
    ]
    # The overflow is recorded at once, as an overflow, with the address that overflowed.
    assert overflowed["source"] == {"ip": "10.0.1.3"} and overflowed["count"] == 1
    assert overflowed["overflow"] == {"tracked_sources": 3}
    await failures.flush()
    await settle(writer)
    events = await trail(db, writer)
    assert sum(e["count"] for e in events) == 150  # nothing lost
    (summary,) = events[4:]
    assert "source" not in summary  # many addresses: no one address
    assert summary["count"] == 146 and summary["reasons"] == {"bad 0": 73, "bad 1": 74}
    assert summary["overflow"]["tracked_sources"] == 3
    listed = summary["overflow"]["sources"]
    assert len(listed) == MAX_OVERFLOW_LISTED and listed["10.0.1.3"] == 1
    assert summary["overflow"]["unlisted"] == 147 - MAX_OVERFLOW_LISTED
    assert OTHER not in {e.get("source", {}).get("ip") for e in events}


class ExpiringIssuer(CountingIssuer):
    """The attacker's tokens are forged; the real user's one has expired."""

    async def validate(self, token: str) -> Any:
        if token == "real.but.expired":
            self.calls += 1
            raise Unauthenticated("the token expired")
        return await super().validate(token)


async def test_a_flood_from_many_sources_does_not_throttle_a_real_one(
    db: Database, writer: AuditWriter, clock: Clock
) -> None:
    """The table is full of an attacker's addresses, each over its budget: a real user's
    failures from a new address are still checked and recorded with their own reason and
    address, never refused under a budget shared with the attacker."""
    issuer = ExpiringIssuer()
    failures = AuthFailures(writer, window=60, limit=5, max_sources=20, monotonic=clock)
    auth = TokenAuthenticator(db, writer, cast(OidcValidator, issuer), failures=failures)
    forged = [("authorization", "Bearer a.b.c")]
    for index in range(100):  # 100 addresses, 10 attempts each: the table holds only 20
        SOURCE.set(f"198.51.100.{index}")
        for _ in range(10):
            with pytest.raises(Unauthenticated):
                await auth.identify(forged)
    assert failures.tracked == 20
    assert issuer.calls == 20 * 5 + 80 * 10  # tracked ones throttled after 5, the rest checked
    SOURCE.set("203.0.113.77")
    for _ in range(10):
        with pytest.raises(Unauthenticated, match="the token expired"):
            await auth.identify([("authorization", "Bearer real.but.expired")])
    assert issuer.calls == 900 + 10
    await failures.flush()
    await settle(writer)
    events = await trail(db, writer)
    assert sum(e["count"] for e in events) == 1010
    (summary,) = [e for e in events if "overflow" in e and e["count"] > 1]
    assert summary["overflow"]["sources"]["203.0.113.77"] == 10
    assert summary["reasons"]["the token expired"] == 10


async def test_failures_the_writer_could_not_take_are_recorded_later(
    db: Database, clock: Clock
) -> None:
    writer = AuditWriter(db)  # not running yet: it takes nothing
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=10, monotonic=clock)
    for _ in range(3):
        await failures.failed("10.0.0.1", "bad", "jwt", False)
    with pytest.raises(AuditUnavailable):
        await failures.flush()
    assert failures.tracked == 1  # the window stays until its event is queued
    writer.start()
    try:
        await failures.flush()
        await settle(writer)
        assert [e["count"] for e in await trail(db, writer)] == [3]
        assert failures.tracked == 0
    finally:
        await writer.close()


async def test_a_summary_the_store_refused_is_kept_for_the_next_flush(
    db: Database, db_path: Path, writer: AuditWriter, clock: Clock
) -> None:
    failures = AuthFailures(writer, window=60, limit=1000, max_sources=10, monotonic=clock)
    for _ in range(4):
        await failures.failed("10.0.0.1", "bad", "jwt", False)
    await settle(writer)
    refuse(db_path, True)
    await failures.flush()  # queued, then refused by the store
    with pytest.raises(AuditUnavailable):
        await settle(writer)
    await failures.failed("10.0.0.1", "bad", "jwt", False)  # its event is refused too
    with pytest.raises(AuditUnavailable):
        await settle(writer)
    refuse(db_path, False)
    assert failures.tracked == 1
    await failures.flush()
    await settle(writer)
    assert [e["count"] for e in await trail(db, writer)] == [1, 4]


def refuse(db_path: Path, on: bool) -> None:
    """The store refuses every new event (a full disk), or takes them again."""
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
            "BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
            if on
            else "DROP TRIGGER refuse"
        )
    finally:
        conn.close()


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
