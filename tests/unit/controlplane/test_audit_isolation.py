"""One bad event cannot poison others: drafts are checked, the writer encodes each on its own,
and a result event that cannot be recorded is counted and ends its session."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.audit.events import Draft, draft, new_event_id, utc_now
from controlplane.audit.writer import AuditUnavailable, AuditWriter, InvalidEvent
from controlplane.auth.identity import Identity
from controlplane.errors import InvalidArgument
from controlplane.store.database import Database
from trail.chain import verify_chain

HOSTILE: list[tuple[str, Any, str]] = [
    ("surrogate", {"argv": ["sh", "-c", "echo \ud800"]}, "request.argv[2]"),
    ("big int", {"pty": {"cols": 2**60}}, "request.pty.cols"),
    ("negative big int", {"n": -(2**53)}, "request.n"),
    ("nan", {"ratio": float("nan")}, "request.ratio"),
    ("infinity", {"ratio": float("inf")}, "request.ratio"),
    ("int key", {1: "x"}, "request"),
    ("bytes", {"raw": b"\x00"}, "request.raw"),
    ("set", {"s": {1}}, "request.s"),
    ("surrogate key", {"\udc80": 1}, "request.\\udc80"),
]


def stored(db_path: Path) -> list[tuple[int, str, str]]:
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute("SELECT seq, body, hash FROM audit_events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(s), str(b), str(h)) for s, b, h in rows]


@pytest.mark.parametrize(("label", "request_", "where"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_draft_refuses_what_rfc8785_cannot_encode_naming_the_field(
    label: str, request_: Any, where: str
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        draft("ssh.exec", identity=Identity("mallory"), request=request_)
    message = str(caught.value)
    assert f"field {where}" in message
    message.encode("utf-8")  # the error itself is always sendable
    assert isinstance(caught.value, InvalidArgument)  # a clear client error over gRPC
    assert isinstance(caught.value, AuditUnavailable)  # refused by every audit-failure path


def test_draft_accepts_the_edges_of_what_is_encodable() -> None:
    event = draft(
        "test.event",
        n=2**53 - 1,
        m=-(2**53 - 1),
        f=1.5e300,
        text="é ✓ 😀",
        nested=[{"a": [None, True, 0.0]}],
    )
    assert event.body["n"] == 2**53 - 1


def test_deep_nesting_is_refused_not_recursed() -> None:
    value: Any = "leaf"
    for _ in range(100):
        value = [value]
    with pytest.raises(InvalidEvent, match="deeper than"):
        draft("test.event", value=value)


def _raw(event_type: str, session_id: str, **fields: Any) -> Draft:
    """A draft that skipped the check (the pg inspector edits bodies after drafting)."""
    body = {"id": new_event_id(), "time": "2026-01-01T00:00:00.000000Z"}
    body.update(type=event_type, session_id=session_id, **fields)
    return Draft(event_type, utc_now(), body)


@pytest.mark.parametrize("poison", ["\ud800", 2**60])
async def test_a_bad_event_in_a_group_commit_fails_only_itself(
    db: Database, db_path: Path, poison: object
) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        good = [_raw("db.query", f"s{n}", request={"statement": f"select {n}"}) for n in range(50)]
        bad = _raw("db.query", "mallory", request={"statement": poison})
        drafts = [*good[:25], bad, *good[25:]]
        futures = [await writer.submit(d) for d in drafts]  # all in the queue: one group
        results = await asyncio.gather(*futures, return_exceptions=True)
    finally:
        await writer.close()

    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(results[25], InvalidEvent)
    assert "db.query event has no canonical JSON form" in str(results[25])
    assert sorted(r for r in results if isinstance(r, int)) == list(range(1, 51))
    rows = stored(db_path)
    assert len(rows) == 50
    assert verify_chain(rows).broken is None
    assert all(json.loads(body)["session_id"] != "mallory" for _, body, _ in rows)
    assert writer.invalid_events == 1


async def test_strict_sessions_commit_while_another_sends_poison_concurrently(
    db: Database, db_path: Path
) -> None:
    """Many sessions commit in their own tasks; one keeps sending poisoned events."""
    writer = AuditWriter(db, max_batch=64)
    writer.start()

    async def honest(n: int) -> list[int]:
        return [
            await writer.commit(_raw("db.query", f"s{n}", request={"statement": f"select {i}"}))
            for i in range(20)
        ]

    async def attacker() -> int:
        refused = 0
        for i in range(40):
            try:
                await writer.commit(_raw("db.query", "mallory", request={"n": 2**60 + i}))
            except InvalidEvent:
                refused += 1
        return refused

    try:
        *seqs, refused = await asyncio.gather(*(honest(n) for n in range(10)), attacker())
    finally:
        await writer.close()
    assert refused == 40
    assert sorted(s for session in seqs for s in session) == list(range(1, 201))
    assert verify_chain(stored(db_path)).broken is None


async def test_a_result_that_cannot_be_recorded_is_counted_and_ends_its_session(
    db: Database,
) -> None:
    writer = AuditWriter(db)
    writer.start()
    ended: list[str] = []
    unwatch = writer.watch("s1", ended.append)
    try:
        future = await writer.submit(_raw("db.result", "s1", result={"rows": 2**60}))
        other = await writer.submit(_raw("db.result", "s2", result={"rows": 1}))
        assert await other == 1
        with pytest.raises(InvalidEvent):
            await future
        assert writer.result_failures == 1
        assert len(ended) == 1 and "db.result could not be recorded" in ended[0]
        unwatch()
        await writer.submit(_raw("db.result", "s1", result={"rows": float("nan")}))
        await writer.commit(_raw("db.query", "s3"))
        assert writer.result_failures == 2 and len(ended) == 1  # no longer watched
    finally:
        await writer.close()


async def test_a_result_lost_to_a_store_failure_ends_its_session(
    db: Database, db_path: Path
) -> None:
    writer = AuditWriter(db)
    writer.start()
    ended: list[str] = []
    writer.watch("s1", ended.append)
    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_events "
        "BEGIN SELECT RAISE(ABORT, 'audit disk is full'); END"
    )
    conn.close()
    try:
        await writer.submit(_raw("ssh.result", "s1", result={"exit": 0}))
        with pytest.raises(AuditUnavailable):
            await writer.commit(_raw("db.query", "s2"))
        assert writer.result_failures == 1
        assert ended and "audit disk is full" in ended[0]
    finally:
        await writer.close()


def test_lost_results_and_witness_failures_are_exposed_as_prometheus_counters() -> None:
    from controlplane.http.metrics import registry

    values = dict.fromkeys(
        ("events_committed", "commits", "commit_seconds", "queue_depth", "sessions"), 0.0
    )
    values |= {"sessions_total": 0.0, "agents": 0.0, "result_failures": 3.0}
    values |= {"invalid_events": 2.0, "witness_pushes": 5.0, "witness_failures": 1.0}
    text = registry(lambda: values)().decode()
    assert "gatehouse_audit_result_failures_total 3.0" in text
    assert "gatehouse_audit_invalid_events_total 2.0" in text
    assert "gatehouse_audit_witness_pushes_total 5.0" in text
    assert "gatehouse_audit_witness_failures_total 1.0" in text


@pytest.mark.parametrize("poison", ['"echo \\ud800"', '"\\udfff"'])
async def test_a_surrogate_in_one_terminal_command_refuses_only_that_command(
    db: Database, db_path: Path, poison: str
) -> None:
    """Through the terminal inspector: a start message whose JSON holds a lone surrogate is
    refused with a clear error while other sessions' commands commit at the same time."""
    from tests.unit.controlplane.test_term_inspector import Harness, decode
    from wire.term import codec

    writer = AuditWriter(db)
    writer.start()
    try:
        honest = [Harness(db, writer, "ssh", "exec") for _ in range(8)]
        for n, harness in enumerate(honest):
            harness.inspector.session.session_id = f"honest-{n}"
        mallory = Harness(db, writer, "ssh", "exec")
        mallory.inspector.session.session_id = "mallory"
        raw = codec.encode(codec.START, f'{{"argv":["sh","-c",{poison}]}}'.encode())
        sent = [codec.encode_start(codec.Start(argv=("echo", str(n)))) for n in range(8)]
        results = await asyncio.gather(
            mallory.inspector.from_client(raw),
            *(h.inspector.from_client(s) for h, s in zip(honest, sent, strict=True)),
        )
    finally:
        await writer.close()

    refused, *forwarded = results
    assert refused == b""  # nothing of it reaches the agent
    assert forwarded == sent  # every other command went through, recorded
    answer = b"".join(mallory.inspector.take_synthetic())
    messages = dict(decode(answer))
    assert b"field request.command holds a lone surrogate" in messages[codec.STDERR]
    rows = stored(db_path)
    assert sorted(json.loads(b)["session_id"] for _, b, _ in rows) == sorted(
        f"honest-{n}" for n in range(8)
    )
    assert verify_chain(rows).broken is None


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "a\udfffb", "é\udc80", "😀"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.sampled_from(["\ud801"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(_values)
def test_draft_refuses_exactly_what_rfc8785_cannot_encode(value: object) -> None:
    """Differential: draft() and the RFC 8785 library agree on every value, by hypothesis."""
    import rfc8785

    try:
        rfc8785.dumps({"value": value})  # type: ignore[arg-type]
        encodable = True
    except Exception:
        encodable = False
    try:
        draft("test.event", value=value)
        accepted = True
    except InvalidEvent:
        accepted = False
    assert accepted == encodable


async def test_watching_gives_a_relay_an_event_to_wait_on_beside_its_pumps(db: Database) -> None:
    writer = AuditWriter(db)
    writer.start()
    try:
        with writer.watching("s1") as loss:
            relaying = asyncio.create_task(asyncio.sleep(30))  # the session's pumps
            lost = asyncio.create_task(loss.lost.wait())
            await writer.submit(_raw("db.result", "s1", result={"rows": 2**60}))
            done, _ = await asyncio.wait({relaying, lost}, return_when=asyncio.FIRST_COMPLETED)
            relaying.cancel()
            assert done == {lost}
            assert "db.result could not be recorded" in loss.reason
        await writer.submit(_raw("db.result", "s1", result={"rows": 2**60}))
        await writer.commit(_raw("db.query", "s2"))
        assert writer.result_failures == 2  # counted; nobody watches s1 any more
    finally:
        await writer.close()


def test_a_result_the_target_made_unrecordable_still_leaves_a_result() -> None:
    """The request already ran: its result event keeps every value that can be kept, names the
    ones it could not, and never vanishes."""
    from controlplane.audit.events import SessionContext, draft_result

    ctx = SessionContext("s1", Identity("alice"), {"name": "pg"}, "strict")
    result = {"rows": 3, "error": "22021", "message": "bad \ud800 text", "masked": False}
    event = draft_result("db.result", session=ctx, ref=7, result=result)
    assert event.body["ref"] == 7
    assert event.body["result"] == {"rows": 3, "error": "22021", "masked": False}
    assert event.body["dropped"] == {
        "result.message": "holds a lone surrogate: it is not valid Unicode text"
    }
    good = draft_result("db.result", session=ctx, ref=8, result={"rows": 1})
    assert good.body["result"] == {"rows": 1} and "dropped" not in good.body


def test_an_unrecordable_value_costs_a_command_result_only_that_value() -> None:
    """A shell result with its recording, stdin program and run_as: a bad value in one of them
    leaves the others whole (the recording's digest is what replay checks against)."""
    from controlplane.audit.events import SessionContext, draft_result

    ctx = SessionContext("s1", Identity("alice"), {"name": "ops"}, "strict")
    stdin = {"sha256": "ab" * 32, "bytes": 12, "readers": [{"command": ["sh"], "why": "\udcff"}]}
    recording = {"sha256": "cd" * 32, "bytes": 2**60, "chunks": 3}
    event = draft_result(
        "shell.result",
        session=ctx,
        ref=9,
        result={"exit_code": 0, "error": None, "stdin": stdin, "run_as": "svc-ops"},
        recording=recording,
    )
    assert event.body["result"]["exit_code"] == 0
    assert event.body["result"]["run_as"] == "svc-ops"
    assert event.body["result"]["stdin"]["sha256"] == "ab" * 32
    assert event.body["result"]["stdin"]["readers"] == [{"command": ["sh"]}]
    assert event.body["recording"] == {"sha256": "cd" * 32, "chunks": 3}
    assert set(event.body["dropped"]) == {"result.stdin.readers[0].why", "recording.bytes"}
    assert "2**53" in event.body["dropped"]["recording.bytes"]


def test_a_list_keeps_its_places_and_the_names_of_what_it_lost() -> None:
    from controlplane.audit.events import MAX_DROPPED, SessionContext, draft_result

    ctx = SessionContext("s1", Identity("alice"), {"name": "pg"}, "strict")
    values = ["ok", "\ud800", 1.5, float("nan")] + ["\udc80"] * (MAX_DROPPED + 5)
    event = draft_result("db.result", session=ctx, ref=1, result={"values": values})
    assert event.body["result"]["values"][:4] == ["ok", None, 1.5, None]
    dropped = event.body["dropped"]
    assert len(dropped) == MAX_DROPPED + 1
    assert dropped["..."] == "7 more values were left out"
