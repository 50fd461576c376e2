"""Garbage tokens against a real control plane cannot flood the trail: a flood over gRPC and
HTTP from one address becomes a handful of `auth.fail` events whose counts add up to every
attempt (the rest of the window is recorded when the process stops), and past the limit the
source is answered at once without any token work."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
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
