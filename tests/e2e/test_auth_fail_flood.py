"""Garbage tokens against a real control plane cannot flood the trail: a flood over gRPC and
HTTP from one address becomes a handful of `auth.fail` events whose counts add up to every
attempt (the rest of the window is recorded when the process stops), and past the limit the
source is answered at once without any token work."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from devenv.stack import ControlPlane, gatehouse
from gatehouse.v1 import client_pb2, client_pb2_grpc

LIMIT = 5
FLOOD = 300


def test_a_flood_of_garbage_tokens_is_counted_not_appended(tmp_path: Path) -> None:
    plane = ControlPlane.create(
        tmp_path / "cp",
        env={"GATEHOUSE_AUTH_FAIL_LIMIT": str(LIMIT), "GATEHOUSE_AUTH_FAIL_WINDOW": "600"},
    )
    plane.start_and_wait()
    try:
        before = gatehouse(["audit", "export"], env=plane.cli_env).stdout.count("\n")
        refusals: list[str] = []
        with grpc.insecure_channel(plane.address) as channel:
            stub = client_pb2_grpc.ClientServiceStub(channel)
            started = time.monotonic()
            for index in range(FLOOD):
                try:
                    stub.ListConnections(
                        client_pb2.ListMyConnectionsRequest(),
                        metadata=[("authorization", f"Bearer ghu_garbage{index}")],
                        timeout=5,
                    )
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.UNAUTHENTICATED
                    refusals.append(exc.details() or "")
            elapsed = time.monotonic() - started
        assert all("not known to this control plane" in r for r in refusals[:LIMIT])
        assert all("too many failed authentications from 127.0.0.1" in r for r in refusals[LIMIT:])
        assert len(refusals) == FLOOD
        print(f"{FLOOD} refusals over gRPC in {elapsed:.2f} s")
        # The HTTP API shares the budget of the address.
        request = urllib.request.Request(
            f"http://127.0.0.1:{plane.http_port}/v1/audit/events",
            headers={"Authorization": "Bearer ghu_garbage-http"},
        )
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("a garbage token was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
            assert "too many failed authentications" in json.loads(exc.read())["error"]
    finally:
        plane.stop()
    # Stopping recorded the window's count; a new process has no throttle state.
    plane.start_and_wait()
    try:
        export = gatehouse(["audit", "export", "--types", "auth.fail"], env=plane.cli_env)
        events = [json.loads(line) for line in export.stdout.splitlines()]
        total = gatehouse(["audit", "export"], env=plane.cli_env).stdout.count("\n")
    finally:
        plane.stop()
    assert 2 <= len(events) <= 4, events  # the first, the first throttled, the summary
    assert sum(e["count"] for e in events) == FLOOD + 1
    assert {e["source"]["ip"] for e in events} == {"127.0.0.1"}
    (summary,) = [e for e in events if e["count"] > 1]
    assert summary["throttled"] == FLOOD + 1 - LIMIT
    assert "ghu_garbage" not in export.stdout
    assert total - before < 10  # not one event per attempt


def refused_from(plane: ControlPlane, source: str, token: str) -> str:
    """A request to the HTTP API from `source` (any 127/8 address is this host's) with a
    garbage token: the error the control plane answers with."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", plane.http_port, timeout=10, source_address=(source, 0)
    )
    try:
        connection.request("GET", "/v1/audit/events", headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        assert response.status == 401
        error: str = json.loads(response.read())["error"]
        return error
    finally:
        connection.close()


def test_a_flood_from_many_addresses_overflows_explicitly_and_hides_no_one(
    tmp_path: Path,
) -> None:
    """Eight addresses flood a control plane that tracks three: the three are throttled, the
    others are the overflow, recorded as such; a real user's address arriving during the flood
    is checked (never throttled under the attacker's budget) and named in the trail."""
    plane = ControlPlane.create(
        tmp_path / "cp",
        env={
            "GATEHOUSE_AUTH_FAIL_LIMIT": str(LIMIT),
            "GATEHOUSE_AUTH_FAIL_WINDOW": "600",
            "GATEHOUSE_AUTH_FAIL_SOURCES": "3",
        },
    )
    plane.start_and_wait()
    attackers = [f"127.0.0.{10 + index}" for index in range(8)]
    try:
        answers = {
            source: [refused_from(plane, source, f"ghu_garbage{n}") for n in range(8)]
            for source in attackers
        }
        real = [refused_from(plane, "127.0.0.99", "ghu_my-old-token") for _ in range(3)]
    finally:
        plane.stop()  # records what the windows hold
    for source in attackers[:3]:  # tracked: over the limit, refused unchecked
        assert all("too many failed authentications" in r for r in answers[source][LIMIT:])
    for source in attackers[3:]:  # the overflow: checked, never throttled
        assert all("not known to this control plane" in r for r in answers[source])
    assert all("not known to this control plane" in r for r in real)

    plane.start_and_wait()
    try:
        export = gatehouse(["audit", "export", "--types", "auth.fail"], env=plane.cli_env)
    finally:
        plane.stop()
    events = [json.loads(line) for line in export.stdout.splitlines()]
    assert sum(e["count"] for e in events) == 8 * 8 + 3  # every failure, once
    overflowed = [e for e in events if "overflow" in e]
    first, summary = overflowed
    assert first["source"] == {"ip": attackers[3]} and first["count"] == 1
    assert first["overflow"] == {"tracked_sources": 3}
    assert "source" not in summary and summary["count"] == 5 * 8 + 3 - 1
    assert summary["overflow"]["sources"] == {**dict.fromkeys(attackers[3:], 8), "127.0.0.99": 3}
    assert summary["overflow"]["unlisted"] == 0
    tracked = {e["source"]["ip"] for e in events if "overflow" not in e}
    assert tracked == set(attackers[:3])  # no fake "other" address


def test_a_refused_session_always_names_its_reason(tmp_path: Path) -> None:
    """`gatehouse exec` writes its opening while the control plane decides: a refusal sent
    before that write completed made grpc's client report "Internal error from Core" instead
    of the reason (3 runs in 60 here). A refusal now waits for the opening to arrive."""
    plane = ControlPlane.create(tmp_path / "cp", env={"GATEHOUSE_AUTH_FAIL_LIMIT": "100000"})
    plane.start_and_wait()
    env = {**plane.cli_env, "GATEHOUSE_TOKEN": "ghu_garbage"}
    try:
        with ThreadPoolExecutor(4) as pool:
            runs = list(
                pool.map(lambda _: gatehouse(["exec", "pg", "-c", "select 1"], env=env), range(60))
            )
    finally:
        plane.stop()
    errors = {run.stderr.strip() for run in runs}
    assert errors == {"error: the token is not known to this control plane"}, errors
    assert {run.returncode for run in runs} == {1}
