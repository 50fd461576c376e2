"""The hash chain: an intact chain verifies, and every kind of tampering is named at its seq."""

import json
import time
import uuid

import pytest

from controlplane.audit.events import new_event_id
from trail.canonical import canonical
from trail.chain import GENESIS_HASH, link_hash, verify_chain

Triple = tuple[int, str, str]

STATEMENTS = [
    "SELECT 1",
    "UPDATE accounts SET balance = 0 WHERE id = 7",
    "DELETE FROM orders",
    "SELECT * FROM users",
    "COMMIT",
]


def build_chain(statements: list[str] = STATEMENTS) -> list[Triple]:
    """Events linked exactly as the writer links them: body names seq and prev_hash."""
    chain: list[Triple] = []
    prev = GENESIS_HASH
    for seq, sql in enumerate(statements, start=1):
        body = {
            "id": new_event_id(),
            "type": "db.query",
            "request": {"statement": sql, "protocol": "simple"},
            "seq": seq,
            "prev_hash": prev,
        }
        raw = canonical(body)
        prev = link_hash(prev, raw)
        chain.append((seq, raw.decode("utf-8"), prev))
    return chain


def with_body(triple: Triple, body: dict[str, object]) -> Triple:
    """The same stored seq and hash, a replaced (canonical) body."""
    return (triple[0], canonical(body).decode("utf-8"), triple[2])


def test_intact_chain_verifies_every_event() -> None:
    chain = build_chain()

    report = verify_chain(chain)

    assert report.broken is None
    assert report.checked == len(chain)
    assert report.last_seq == len(chain)
    assert report.last_hash == chain[-1][2]


def test_empty_chain_verifies_and_stays_at_genesis() -> None:
    report = verify_chain([])

    assert report.broken is None
    assert (report.checked, report.last_seq, report.last_hash) == (0, 0, GENESIS_HASH)


def test_verification_can_resume_from_a_known_head() -> None:
    chain = build_chain()

    report = verify_chain(chain[2:], prev_seq=chain[1][0], prev_hash=chain[1][2])

    assert report.broken is None
    assert report.checked == len(chain) - 2
    assert report.last_hash == chain[-1][2]


def test_altered_statement_is_reported_at_its_seq_as_altered() -> None:
    chain = build_chain()
    body = json.loads(chain[2][1])
    body["request"]["statement"] = "SELECT 'nothing to see here'"
    chain[2] = with_body(chain[2], body)  # still canonical: only the content changed

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 3
    assert "altered" in report.broken.reason
    assert report.checked == 2
    assert report.last_seq == 2


def test_deleted_event_is_reported_as_a_gap_at_the_next_seq() -> None:
    chain = build_chain()
    del chain[1]

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 3
    assert "expected seq 2" in report.broken.reason
    assert "missing" in report.broken.reason


def test_deleted_last_events_cannot_hide_behind_a_resumed_head() -> None:
    """Resuming after seq 2 with seq 4 first (seq 3 dropped) is a gap too."""
    chain = build_chain()

    report = verify_chain(chain[3:], prev_seq=2, prev_hash=chain[1][2])

    assert report.broken is not None
    assert report.broken.seq == 4


def test_swapped_events_are_reported() -> None:
    chain = build_chain()
    chain[1], chain[2] = chain[2], chain[1]

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 3  # seq 3 arrives where seq 2 was due
    assert "reordered" in report.broken.reason
    assert report.checked == 1


def test_swapped_events_renumbered_to_fit_are_still_reported() -> None:
    """Swap the bodies but keep seq dense in the stored column: the body's own seq disagrees."""
    chain = build_chain()
    (s2, b2, h2), (s3, b3, h3) = chain[1], chain[2]
    chain[1], chain[2] = (s2, b3, h3), (s3, b2, h2)

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 2
    assert "seq 3" in report.broken.reason


def test_non_canonical_body_with_the_same_content_is_reported() -> None:
    chain = build_chain()
    seq, raw, stored_hash = chain[1]
    content = json.loads(raw)
    reordered = json.dumps(dict(reversed(list(content.items()))), indent=1)
    assert json.loads(reordered) == content  # same content, other bytes
    chain[1] = (seq, reordered, stored_hash)

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 2
    assert "canonical" in report.broken.reason


def test_extra_whitespace_alone_breaks_canonical_form() -> None:
    chain = build_chain()
    seq, raw, stored_hash = chain[0]
    chain[0] = (seq, raw.replace(",", ", ", 1), stored_hash)

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 1
    assert "canonical" in report.broken.reason


def test_forged_event_with_recomputed_hash_is_reported_at_its_successor() -> None:
    chain = build_chain()
    seq, raw, _ = chain[2]
    body = json.loads(raw)
    body["request"]["statement"] = "SELECT 1"
    forged = canonical(body)
    chain[2] = (seq, forged.decode("utf-8"), link_hash(chain[1][2], forged))

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 4
    assert "prev_hash" in report.broken.reason
    assert report.checked == 3  # the forgery itself is self-consistent


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("{not json", "not valid JSON"), ("[1,2]", "not a JSON object")],
)
def test_unreadable_body_is_reported(raw: str, reason: str) -> None:
    chain = build_chain()
    chain[1] = (2, raw, chain[1][2])

    report = verify_chain(chain)

    assert report.broken is not None
    assert report.broken.seq == 2
    assert reason in report.broken.reason


def test_link_hash_depends_on_the_previous_hash() -> None:
    body = canonical({"seq": 1})

    assert link_hash(GENESIS_HASH, body) != link_hash("1" * 64, body)
    assert len(link_hash(GENESIS_HASH, body)) == 64


def test_canonical_sorts_keys_and_drops_whitespace() -> None:
    assert canonical({"b": 1, "a": [1, "x"]}) == b'{"a":[1,"x"],"b":1}'


# ---- event ids -----------------------------------------------------------------------------


def test_new_event_id_is_a_valid_uuid_v7() -> None:
    for _ in range(200):
        text = new_event_id()
        value = uuid.UUID(text)
        assert str(value) == text  # lowercase, canonical 8-4-4-4-12 layout
        assert value.version == 7
        assert value.variant == uuid.RFC_4122
        assert text[14] == "7"
        assert text[19] in "89ab"  # variant bits 10xx


def test_new_event_ids_are_distinct() -> None:
    ids = [new_event_id() for _ in range(2000)]

    assert len(set(ids)) == len(ids)


def test_new_event_id_carries_the_time_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = 1_790_000_000_123
    monkeypatch.setattr(time, "time_ns", lambda: ms * 1_000_000 + 999_999)

    value = uuid.UUID(new_event_id())

    assert value.int >> 80 == ms


def test_new_event_ids_sort_by_time(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = {"ms": 0}
    monkeypatch.setattr(time, "time_ns", lambda: clock["ms"] * 1_000_000)

    ids = []
    for ms in [1_700_000_000_000, 1_700_000_000_001, 1_700_000_001_000, 1_800_000_000_000]:
        clock["ms"] = ms
        ids.append(new_event_id())

    assert sorted(ids) == ids
    assert len(set(ids)) == len(ids)
