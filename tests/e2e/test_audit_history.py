"""History cannot be erased or forged, end to end: a witness file outside the store catches a
store whose newest events were dropped and head rewound; `verify --key` fails an export no
signed checkpoint vouches for; pruning keeps recent history and takes two admins."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devenv.postgres import PostgresServer
from devenv.stack import StackError
from tests.e2e.conftest import AGENT, Stack, start_stack
from tests.tampering import rewind
from trail.canonical import canonical
from trail.chain import GENESIS_HASH, export_line, link_hash


def start_with(base: Path, pg: PostgresServer, **env: str) -> Stack:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        stack = start_stack(base, pg)
    stack.controlplane.env.update(env)
    return stack


@pytest.fixture
def witnessed(tmp_path: Path, pg: PostgresServer) -> Iterator[tuple[Stack, Path]]:
    path = tmp_path / "witness.ndjson"
    stack = start_with(
        tmp_path / "stack",
        pg,
        GATEHOUSE_AUDIT_WITNESS=str(path),
        GATEHOUSE_CHECKPOINT_INTERVAL="1s",
    )
    yield stack, path
    stack.stop()


def witnessed_seqs(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [json.loads(line)["event_seq"] for line in path.read_text().splitlines()]


def wait_for_witness(stack: Stack, path: Path, timeout: float = 20) -> int:
    """Until the witness holds a checkpoint that is the store's newest event; returns its seq."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        head = stack.events()[-1]
        if head["type"] == "audit.checkpoint" and head["seq"] in witnessed_seqs(path):
            return int(head["seq"])
        time.sleep(0.2)
    raise AssertionError(f"no witnessed checkpoint at the head: {witnessed_seqs(path)}")


def two_witnessed_checkpoints(stack: Stack, path: Path) -> tuple[int, int]:
    """A statement, a witnessed checkpoint, the statement someone will want gone, another."""
    assert stack.cli("exec", "pg", "-c", "select 'kept'").returncode == 0
    first = wait_for_witness(stack, path)
    ran = stack.cli("exec", "pg", "-c", "select 'the statement someone wants gone'")
    assert ran.returncode == 0, ran.stderr
    return first, wait_for_witness(stack, path)


def test_a_store_rewound_after_a_witnessed_checkpoint_fails_verify_naming_it(
    witnessed: tuple[Stack, Path],
) -> None:
    stack, path = witnessed
    first, newest = two_witnessed_checkpoints(stack, path)
    assert newest > first
    ok = stack.cli("audit", "verify", "--witness", str(path))
    assert ok.returncode == 0, ok.stderr
    assert "checkpoints found in the store unchanged" in ok.stdout

    rewind(stack.controlplane.data_dir / "gatehouse.db", first)
    statements = [e.get("request", {}).get("statement") for e in stack.events()]
    assert "select 'the statement someone wants gone'" not in statements
    plain = stack.cli("audit", "verify")
    assert plain.returncode == 0, plain.stderr  # the chain alone cannot tell

    caught = stack.cli("audit", "verify", "--witness", str(path))
    assert caught.returncode == 1
    assert f"the store ends at seq {first}" in caught.stderr
    assert f"checkpoint at seq {newest}" in caught.stderr
    assert "head rewound" in caught.stderr
    as_json = stack.cli("audit", "verify", "--witness", str(path), "-o", "json")
    report = json.loads(as_json.stdout)
    assert report["ok"] is False and report["witness"]["newest"] == newest


def test_a_control_plane_does_not_start_on_a_store_rewound_behind_its_witness(
    witnessed: tuple[Stack, Path],
) -> None:
    """While it is down, someone drops the newest events from the store: started on it, the
    control plane would extend, and sign, the rewound trail. It refuses to start, saying what
    the witness saw; a store restored on purpose starts with a new witness file."""
    stack, path = witnessed
    first, _ = two_witnessed_checkpoints(stack, path)
    stack.controlplane.stop()
    stack.controlplane.start_and_wait()  # the store holds what the witness saw: it starts
    stack.controlplane.stop()
    # Stopping and starting recorded events, and a timed checkpoint may have followed them:
    # the newest witnessed checkpoint is the file's last.
    newest = max(witnessed_seqs(path))

    rewind(stack.controlplane.data_dir / "gatehouse.db", first)
    with pytest.raises(StackError) as refused:
        stack.controlplane.start_and_wait()
    told = str(refused.value)
    assert f"does not hold what witness {path} saw" in told
    assert f"the store ends at seq {first}" in told and f"checkpoint at seq {newest}" in told

    path.rename(path.with_name("witness.evidence"))
    stack.controlplane.start_and_wait()
    stack.controlplane.wait_agent(AGENT)
    again = stack.cli("exec", "pg", "-c", "select 'after the restore'")
    assert again.returncode == 0, again.stderr


def test_checkpoints_come_within_the_interval_so_the_newest_events_are_signed(
    witnessed: tuple[Stack, Path],
) -> None:
    stack, path = witnessed
    assert stack.cli("exec", "pg", "-c", "select 1").returncode == 0
    head = wait_for_witness(stack, path)
    verified = stack.cli("audit", "verify", "-o", "json")
    report = json.loads(verified.stdout)
    assert report["last_checkpoint"] == head
    assert report["unsigned"] == 0
    assert report["signed_through"] == head - 1
    metrics = stack.cli("audit", "verify")  # text: says how far the signatures reach
    assert f"signed through seq {head - 1}, 0 unsigned events" in metrics.stdout


# ---- signatures must vouch for an export ------------------------------------------------------


def hand_made_export(path: Path, n: int = 2) -> None:
    lines, prev = [], GENESIS_HASH
    for seq in range(1, n + 1):
        event: dict[str, Any] = {"id": f"forged-{seq}", "type": "db.query", "seq": seq}
        event |= {"time": "2026-01-01T00:00:00.000000Z", "prev_hash": prev}
        event["request"] = {"statement": "select 'nothing to see'"}
        raw = canonical(event)
        prev = link_hash(prev, raw)
        lines.append(export_line(raw.decode(), prev))
    path.write_text("\n".join(lines) + "\n")


def test_a_hand_made_unsigned_export_from_seq_1_fails_verify_with_the_key(
    own_stack: Stack, tmp_path: Path
) -> None:
    key = tmp_path / "pub.pem"
    key.write_text(own_stack.cli("audit", "public-key").stdout)
    forged = tmp_path / "forged.ndjson"
    hand_made_export(forged)

    result = own_stack.cli("audit", "verify", "--file", str(forged), "--key", str(key))

    assert result.returncode == 1
    assert "not verified: no checkpoint signed by key" in result.stderr
    assert "vouches for any of its 2 events (seq 1..2)" in result.stderr
    as_json = own_stack.cli(
        "audit", "verify", "--file", str(forged), "--key", str(key), "-o", "json"
    )
    report = json.loads(as_json.stdout)
    assert (report["ok"], report["unsigned"], report["last_checkpoint"]) == (False, 2, 0)


def test_a_live_export_needs_a_checkpoint_or_an_explicit_unsigned_tail(
    own_stack: Stack, tmp_path: Path
) -> None:
    key = tmp_path / "pub.pem"
    key.write_text(own_stack.cli("audit", "public-key").stdout)
    assert own_stack.cli("audit", "checkpoint").returncode == 0
    assert own_stack.cli("exec", "pg", "-c", "select 'after the checkpoint'").returncode == 0
    export = tmp_path / "trail.ndjson"
    export.write_text(own_stack.cli("audit", "export").stdout)
    verify = ["audit", "verify", "--file", str(export), "--key", str(key)]

    tail = own_stack.cli(*verify)
    assert tail.returncode == 1
    assert "events after the checkpoint at seq" in tail.stderr
    assert "--allow-unsigned-tail" in tail.stderr
    assert own_stack.cli(*verify, "--allow-unsigned-tail", "10m").returncode == 0
    assert own_stack.cli(*verify, "--allow-unsigned-tail", "1").returncode == 1
    bad = own_stack.cli(*verify, "--allow-unsigned-tail", "soon")
    assert bad.returncode == 2 and "--allow-unsigned-tail takes" in bad.stderr

    assert own_stack.cli("audit", "checkpoint").returncode == 0
    export.write_text(own_stack.cli("audit", "export").stdout)
    signed = own_stack.cli(*verify)
    assert signed.returncode == 0, signed.stderr
    assert "0 unsigned events after the last checkpoint" in signed.stdout


# ---- prune: retention and a second admin ---------------------------------------------------


@pytest.fixture
def short_retention(tmp_path: Path, pg: PostgresServer) -> Iterator[Stack]:
    stack = start_with(tmp_path, pg, GATEHOUSE_AUDIT_MIN_RETENTION="2s")
    yield stack
    stack.stop()


def admin_token(stack: Stack, name: str) -> dict[str, str]:
    created = stack.cli("admin", "tokens", "create", name, "--role", "admin", "-o", "json")
    assert created.returncode == 0, created.stderr
    return {"GATEHOUSE_TOKEN": json.loads(created.stdout)["secret"]}


def test_prune_refuses_anything_inside_the_default_retention(own_stack: Stack) -> None:
    for before in ("2099-01-01", (datetime.now(UTC) - timedelta(days=29)).date().isoformat()):
        refused = own_stack.cli("audit", "prune", "--before", before)
        assert refused.returncode == 1
        assert "too recent: the minimum retention keeps every event of the last 30 days" in (
            refused.stderr
        )
    assert not [e for e in own_stack.events() if e["type"].startswith("audit.prune")]


def test_a_prune_is_asked_by_one_admin_and_done_by_another(
    short_retention: Stack, tmp_path: Path
) -> None:
    stack = short_retention
    alice, bob = admin_token(stack, "alice"), admin_token(stack, "bob")
    assert stack.cli("exec", "pg", "-c", "select 'old enough'").returncode == 0
    time.sleep(3)
    cutoff = (datetime.now(UTC) - timedelta(seconds=2.5)).isoformat()
    head = max(e["seq"] for e in stack.events() if e["time"] < cutoff.replace("+00:00", "Z"))

    asked = stack.cli("audit", "prune", "--before", cutoff, "-o", "json", **alice)
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)
    assert request["requested_by"] == "token:alice" and request["approved_by"] is None
    assert (request["first_seq"], request["through_seq"]) == (1, head)
    assert stack.events()[0]["seq"] == 1  # nothing removed by asking
    (recorded,) = [e for e in stack.events() if e["type"] == "audit.prune_request"]
    assert recorded["id"] == request["request_id"]

    own = stack.cli("audit", "prune", "approve", request["request_id"], **alice)
    assert own.returncode == 1
    assert "another admin must approve it" in own.stderr
    (refusal,) = [e for e in stack.events() if e["type"] == "audit.prune_refused"]
    assert refusal["user"]["sub"] == "token:alice"
    assert stack.events()[0]["seq"] == 1

    done = stack.cli("audit", "prune", "approve", request["request_id"], **bob)
    assert done.returncode == 0, done.stderr
    assert f"removed {head} events, seq 1..{head}" in done.stdout
    assert "asked by token:alice, approved by token:bob" in done.stdout
    events = stack.events()
    assert events[0]["seq"] == head + 1
    (record,) = [e for e in events if e["type"] == "audit.prune"]
    assert record["prune"]["request"] == request["request_id"]
    assert (record["prune"]["requested_by"], record["prune"]["approved_by"]) == (
        "token:alice",
        "token:bob",
    )
    again = stack.cli("audit", "prune", "approve", request["request_id"], **bob)
    assert again.returncode == 1 and "already approved" in again.stderr
    verified = stack.cli("audit", "verify")
    assert verified.returncode == 0, verified.stderr
