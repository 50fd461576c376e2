"""Audit export for SIEMs, end to end: signed checkpoints verified offline from an exported
file, tampering with that file named at its seq, retention that leaves a verifiable trail, and
`export --follow` printing every event exactly once across a control-plane restart."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from devenv.postgres import PostgresServer
from devenv.stack import GATEHOUSE, REPO
from tests.e2e.conftest import AGENT, Stack, start_stack

CHECKPOINT_EVERY = "5"


def start_signed_stack(base: Path, pg: PostgresServer, **extra: str) -> Stack:
    """A stack whose control plane signs a checkpoint every few events, also after restarts."""
    env = {"GATEHOUSE_CHECKPOINT_EVERY": CHECKPOINT_EVERY, **extra}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        stack = start_stack(base, pg)
    stack.controlplane.env.update(env)
    return stack


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer) -> Iterator[Stack]:
    """Shared by tests that only read: a few statements, so several checkpoints exist."""
    stack = start_signed_stack(tmp_path_factory.mktemp("signed"), pg)
    for n in range(4):
        ran = stack.cli("exec", "pg", "-c", f"select {n} as n")
        assert ran.returncode == 0, ran.stderr
    yield stack
    stack.stop()


@pytest.fixture
def own_signed(tmp_path: Path, pg: PostgresServer) -> Iterator[Stack]:
    stack = start_signed_stack(tmp_path, pg)
    yield stack
    stack.stop()


def public_key(stack: Stack, path: Path) -> Path:
    result = stack.cli("audit", "public-key")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    path.write_text(result.stdout)
    return path


def export_file(stack: Stack, path: Path, *args: str) -> list[str]:
    result = stack.cli("audit", "export", *args)
    assert result.returncode == 0, result.stderr
    path.write_text(result.stdout)
    return result.stdout.splitlines()


def verify_file(
    stack: Stack, path: Path, key: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    return stack.cli("audit", "verify", "--file", str(path), "--key", str(key), *args)


def seqs_of(lines: list[str]) -> list[int]:
    return [json.loads(line)["seq"] for line in lines]


# ---- export, then verify offline -----------------------------------------------------------


def test_an_exported_trail_verifies_offline_with_the_public_key(
    signed: Stack, tmp_path: Path
) -> None:
    key = public_key(signed, tmp_path / "pub.pem")
    lines = export_file(signed, tmp_path / "trail.ndjson")
    checkpoints = [json.loads(line) for line in lines if '"type":"audit.checkpoint"' in line]
    assert len(checkpoints) >= 2
    for event in checkpoints:
        assert event["checkpoint"]["seq"] == event["seq"] - 1
        assert event["checkpoint"]["key_id"]

    tail = ("--allow-unsigned-tail", "10m")  # events after the last checkpoint
    result = verify_file(signed, tmp_path / "trail.ndjson", key, *tail, "-o", "json")

    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["checked"] == len(lines)
    assert report["checkpoints"] == len(checkpoints)
    assert report["signed_through"] == checkpoints[-1]["seq"] - 1
    assert report["last_checkpoint"] == checkpoints[-1]["seq"]
    assert report["unsigned"] == seqs_of(lines)[-1] - checkpoints[-1]["seq"]
    table = verify_file(signed, tmp_path / "trail.ndjson", key, *tail)
    assert table.stdout.startswith(f"ok: {len(lines)} events")

    store = signed.cli("audit", "verify")
    assert store.returncode == 0, store.stderr
    assert f"{len(checkpoints)} signed checkpoints verified" in store.stdout


def alter(lines: list[str]) -> tuple[list[str], int]:
    index = next(i for i, line in enumerate(lines) if '"type":"db.query"' in line)
    event = json.loads(lines[index])
    event["request"]["statement"] = "select 'nothing happened here'"
    return [*lines[:index], json.dumps(event), *lines[index + 1 :]], event["seq"]


def delete(lines: list[str]) -> tuple[list[str], int]:
    index = len(lines) // 2
    return lines[:index] + lines[index + 1 :], seqs_of(lines)[index] + 1


def swap(lines: list[str]) -> tuple[list[str], int]:
    i = len(lines) // 2
    swapped = [*lines[:i], lines[i + 1], lines[i], *lines[i + 2 :]]
    return swapped, seqs_of(lines)[i + 1]  # it arrives where seq i was due


@pytest.mark.parametrize(
    ("tamper", "says"),
    [(alter, "altered"), (delete, "missing"), (swap, "reordered")],
    ids=["altered-line", "deleted-line", "swapped-lines"],
)
def test_a_tampered_export_is_named_at_its_seq(
    signed: Stack,
    tmp_path: Path,
    tamper: Callable[[list[str]], tuple[list[str], int]],
    says: str,
) -> None:
    key = public_key(signed, tmp_path / "pub.pem")
    lines = export_file(signed, tmp_path / "trail.ndjson")
    changed, seq = tamper(lines)
    (tmp_path / "tampered.ndjson").write_text("\n".join(changed) + "\n")

    result = verify_file(signed, tmp_path / "tampered.ndjson", key)

    assert result.returncode == 1
    assert f"chain broken at seq {seq}:" in result.stderr
    assert says in result.stderr
    as_json = verify_file(signed, tmp_path / "tampered.ndjson", key, "-o", "json")
    assert json.loads(as_json.stdout)["broken"]["seq"] == seq


def test_checkpoints_do_not_verify_with_another_key(signed: Stack, tmp_path: Path) -> None:
    from controlplane.audit.checkpoints import SigningKey

    other = tmp_path / "other.pem"
    other.write_text(SigningKey.generate().public_pem())
    lines = export_file(signed, tmp_path / "trail.ndjson")
    first = next(json.loads(line) for line in lines if '"type":"audit.checkpoint"' in line)

    result = verify_file(signed, tmp_path / "trail.ndjson", other)

    assert result.returncode == 1
    assert f"chain broken at seq {first['seq']}:" in result.stderr
    assert "not by a key given to verify with" in result.stderr


def test_a_partial_export_verifies_only_when_a_checkpoint_vouches_for_its_start(
    signed: Stack, tmp_path: Path
) -> None:
    key = public_key(signed, tmp_path / "pub.pem")
    lines = export_file(signed, tmp_path / "trail.ndjson")
    first_checkpoint = next(
        json.loads(line)["seq"] for line in lines if '"type":"audit.checkpoint"' in line
    )
    export_file(signed, tmp_path / "later.ndjson", "--after", str(first_checkpoint - 3))

    later = verify_file(
        signed, tmp_path / "later.ndjson", key, "--allow-unsigned-tail", "10m", "-o", "json"
    )

    assert later.returncode == 0, later.stderr
    report = json.loads(later.stdout)
    assert report["first_seq"] == first_checkpoint - 2
    assert report["start"]["vouched_by"] == f"the checkpoint at seq {first_checkpoint}"

    last = seqs_of(lines)[-1]
    export_file(signed, tmp_path / "tail.ndjson", "--after", str(last - 1))  # past every checkpoint
    tail = verify_file(signed, tmp_path / "tail.ndjson", key)
    assert tail.returncode == 1
    assert f"not verified: the trail starts at seq {last}" in tail.stderr


def test_an_audit_reader_reads_and_verifies_but_cannot_sign_or_prune(
    signed: Stack, tmp_path: Path
) -> None:
    created = signed.cli(
        "admin", "tokens", "create", "siem", "--role", "audit-reader", "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    reader = {"GATEHOUSE_TOKEN": json.loads(created.stdout)["secret"]}

    for verb in (["export", "--limit", "3"], ["verify"], ["public-key"]):
        allowed = signed.cli("audit", *verb, **reader)
        assert allowed.returncode == 0, (verb, allowed.stderr)
    for verb in (["checkpoint"], ["prune", "--before", "2000-01-01"]):
        refused = signed.cli("audit", *verb, **reader)
        assert refused.returncode == 1, verb
        assert "needs 'admin'" in refused.stderr


def test_export_passes_the_format_to_the_server(signed: Stack) -> None:
    result = signed.cli("audit", "export", "--format", "ocsf", "--limit", "3")

    assert result.returncode == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(documents) == 3
    assert all("class_uid" in d for d in documents)


def test_a_checkpoint_on_demand_is_appended_and_names_the_admin(own_signed: Stack) -> None:
    made = own_signed.cli("audit", "checkpoint", "-o", "json")

    assert made.returncode == 0, made.stderr
    checkpoint = json.loads(made.stdout)
    (event,) = [e for e in own_signed.events() if e["seq"] == checkpoint["event_seq"]]
    assert event["type"] == "audit.checkpoint"
    assert event["reason"] == "requested"
    assert event["user"]["sub"] == "admin"
    assert event["checkpoint"]["seq"] == checkpoint["seq"] == event["seq"] - 1
    assert event["checkpoint"]["signature"] == checkpoint["signature"]
    table = own_signed.cli("audit", "checkpoint")
    assert table.stdout.startswith("checkpoint at seq ")


# ---- retention -----------------------------------------------------------------------------


@pytest.fixture
def pruneable(tmp_path: Path, pg: PostgresServer) -> Iterator[Stack]:
    """A signed stack whose minimum retention is 2 s, so a test can prune what it made."""
    stack = start_signed_stack(tmp_path, pg, GATEHOUSE_AUDIT_MIN_RETENTION="2s")
    yield stack
    stack.stop()


def test_prune_leaves_a_trail_that_still_verifies(pruneable: Stack, tmp_path: Path) -> None:
    stack = pruneable
    admins = []
    for name in ("ann", "ben"):
        created = stack.cli("admin", "tokens", "create", name, "--role", "admin", "-o", "json")
        assert created.returncode == 0, created.stderr
        admins.append({"GATEHOUSE_TOKEN": json.loads(created.stdout)["secret"]})
    assert stack.cli("exec", "pg", "-c", "select 'before the prune'").returncode == 0
    time.sleep(3)
    head = stack.events()[-1]["seq"]
    cutoff = (datetime.now(UTC) - timedelta(seconds=2.5)).isoformat()
    dry = stack.cli("audit", "prune", "--before", cutoff, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"would remove {head} events, seq 1..{head}" in dry.stdout

    asked = stack.cli("audit", "prune", "--before", cutoff, **admins[0])
    assert asked.returncode == 0, asked.stderr
    request_id = asked.stdout.split()[2]
    assert f"gatehouse audit prune approve {request_id}" in asked.stdout
    pruned = stack.cli("audit", "prune", "approve", request_id, "-o", "json", **admins[1])

    assert pruned.returncode == 0, pruned.stderr
    result = json.loads(pruned.stdout)
    assert (result["first_seq"], result["through_seq"]) == (1, head)
    assert result["anchor"]["pruned_by"] == "token:ben"
    events = stack.events()
    assert events[0]["seq"] == head + 1
    assert events[0]["prev_hash"] == result["anchor"]["hash"]
    (record,) = [e for e in events if e["type"] == "audit.prune"]
    assert record["seq"] == result["event_seq"]
    assert record["prune"]["through_seq"] == head
    assert record["user"]["sub"] == "token:ben"
    assert record["prune"]["requested_by"] == "token:ann"

    after = stack.cli("exec", "pg", "-c", "select 'after the prune'")
    assert after.returncode == 0, after.stderr
    verified = stack.cli("audit", "verify", "-o", "json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["start"]["vouched_by"] == f"the prune anchor at seq {head}"
    key = public_key(stack, tmp_path / "pub.pem")
    export_file(stack, tmp_path / "rest.ndjson")
    offline = verify_file(stack, tmp_path / "rest.ndjson", key, "--allow-unsigned-tail", "10m")
    assert offline.returncode == 0, offline.stderr

    nothing = stack.cli("audit", "prune", "--before", "2000-01-01")
    assert "nothing to prune" in nothing.stdout
    bad = stack.cli("audit", "prune", "--before", "last tuesday")
    assert bad.returncode == 2
    assert "not a date" in bad.stderr


# ---- follow --------------------------------------------------------------------------------


class Follower:
    """`gatehouse audit export --follow` as a user runs it, its lines collected as they come."""

    def __init__(self, stack: Stack, stderr: Path) -> None:
        self._stderr_path = stderr
        self._stderr = stderr.open("w")
        self.proc = subprocess.Popen(
            [*GATEHOUSE, "audit", "export", "--follow"],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env={**os.environ, **stack.controlplane.cli_env},
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    def wait_for(self, statement: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.get("request", {}).get("statement") == statement for e in self.events()):
                return
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.1)
        raise AssertionError(f"the follower never printed {statement!r}:\n{self.stderr()}")

    def wait_until_seq(self, seq: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.events() and self.events()[-1]["seq"] >= seq:
                return
            time.sleep(0.1)
        raise AssertionError(f"the follower did not reach seq {seq}:\n{self.stderr()}")

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self._stderr_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self._reader.join(5)
        self._stderr.close()


def test_follow_prints_every_event_once_in_order_across_a_restart(
    own_signed: Stack, tmp_path: Path
) -> None:
    follower = Follower(own_signed, tmp_path / "follower.err")
    try:
        for n in range(3):
            sql = f"select 'first {n}'"
            assert own_signed.cli("exec", "pg", "-c", sql).returncode == 0
            follower.wait_for(sql)

        own_signed.controlplane.stop()
        own_signed.controlplane.start_and_wait()
        own_signed.controlplane.wait_agent(AGENT, timeout=40)

        for n in range(3):
            sql = f"select 'second {n}'"
            ran = own_signed.cli("exec", "pg", "-c", sql)
            assert ran.returncode == 0, ran.stderr
            follower.wait_for(sql)
        exported = own_signed.events()
        follower.wait_until_seq(exported[-1]["seq"])
    finally:
        follower.stop()

    printed = follower.events()
    seqs = [e["seq"] for e in printed]
    assert seqs == list(range(1, len(seqs) + 1))  # every seq once, in order, from the start
    assert printed[: len(exported)] == exported  # exactly what the store holds
    stderr = follower.stderr()
    assert "reconnecting" in stderr, stderr
    kinds = [e["type"] for e in printed]
    assert kinds.count("agent.connect") == 2  # one from each control-plane process
    assert "audit.checkpoint" in kinds
