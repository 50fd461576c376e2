"""HTTP through the gateway, against httpbin (under waitress) behind nginx, with curl, httpx and
requests: what the caller gets, what nginx's access log says reached the target, and what the
trail recorded — credentials never in the caller's hands nor in the trail, refusals never in
the target's log, and every request in that log recorded first."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import requests

from devenv.httpd import HttpTargets
from devenv.postgres import PostgresServer
from devenv.stack import Connect, ControlPlane, enroll_agent, gatehouse
from tests.e2e.conftest import AGENT, Stack, hasty_listener, read_until_closed

API_PASSWORD = "s3cret-api-password"
API_KEY = "k3y-for-the-tls-api"
CALLER_TOKEN = "caller-supplied-token"

POLICY = """\
connections:
  - name: api
    type: http
    agent: {agent}
    target: {{url: 'http://127.0.0.1:{port}'}}
    secret: {{basic: {{user: alice, password: env:API_PASSWORD}}}}
    guardrails: [api-rules]
  - name: api-masked
    type: http
    agent: {agent}
    target: {{url: 'http://127.0.0.1:{port}'}}
    masking: [pii]
  - name: api-tls
    type: http
    agent: {agent}
    target:
      url: 'https://127.0.0.1:{tls_port}'
      tls: {{ca_file: '{ca}', server_name: api.internal}}
    secret: {{headers: {{X-Api-Key: env:API_KEY}}}}
  - name: ws
    type: http
    agent: {agent}
    target: {{url: 'http://127.0.0.1:{ws_port}'}}
guardrails:
  - name: api-rules
    deny_requests: ['DELETE /**', 'POST /admin/**', 'GET /anything/no-get/**']
    deny_patterns: ['DROP TABLE']
masking:
  - name: pii
    columns: [origin]
    detectors: [email]
"""


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, pg: PostgresServer, http_targets: HttpTargets
) -> Iterator[Stack]:
    base = tmp_path_factory.mktemp("stack")
    controlplane = ControlPlane.create(base / "controlplane")
    controlplane.start_and_wait()
    agent = enroll_agent(
        controlplane,
        AGENT,
        base / "agent",
        env={"API_PASSWORD": API_PASSWORD, "API_KEY": API_KEY},
    )
    started = Stack(controlplane, agent, pg, base)
    policy = POLICY.format(
        agent=AGENT,
        port=http_targets.port,
        tls_port=http_targets.tls_port,
        ca=http_targets.cert.ca,
        ws_port=http_targets.ws_port,
    )
    applied = started.apply(policy)
    assert applied.returncode == 0, applied.stderr
    yield started
    started.stop()


@pytest.fixture(scope="module")
def listener(stack: Stack) -> Iterator[Connect]:
    connect = Connect.create(stack.controlplane, "api", stack.base)
    connect.start_and_wait()
    yield connect
    connect.stop()


def requests_of(stack: Stack, after: int = 0) -> list[dict[str, Any]]:
    return [e for e in stack.events(after) if e["type"] == "http.request"]


def last_seq(stack: Stack) -> int:
    events = stack.events()
    return int(events[-1]["seq"]) if events else 0


def wait_logged(http_targets: HttpTargets, uri: str, timeout: float = 5) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [line for line in http_targets.log_lines() if line.uri == uri]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_exec_prints_the_body_and_records_request_and_response(
    stack: Stack, http_targets: HttpTargets
) -> None:
    after = last_seq(stack)
    result = stack.cli("exec", "api", "--", "GET", "/get?q=1&token=abc", "-v")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["args"] == {"q": "1", "token": "abc"}
    assert "HTTP/1.1 200" in result.stderr
    events = stack.events(after)
    request = next(e for e in events if e["type"] == "http.request")
    assert request["request"]["method"] == "GET"
    assert request["request"]["path"] == "/get"
    assert request["request"]["query"] == "q=1&token=%5Bredacted%5D"
    assert request["decision"] == {"result": "allow"}
    response = next(e for e in events if e["type"] == "http.response")
    assert response["ref"] == request["seq"]
    assert response["result"]["status"] == 200
    assert response["result"]["content_type"] == "application/json"
    assert response["result"]["bytes"]["response"] > 0
    assert request["seq"] < response["seq"]
    ocsf = stack.cli(
        "audit", "export", "--after", str(after), "--types", "http.request,http.response",
        "--format", "ocsf",
    )  # fmt: skip
    mapped = [json.loads(line) for line in ocsf.stdout.splitlines() if line]
    assert [e["class_name"] for e in mapped] == ["HTTP Activity", "HTTP Activity"]
    assert mapped[0]["http_request"]["http_method"] == "GET"
    assert mapped[1]["http_response"]["code"] == 200


def test_exec_json_output_and_exit_status_of_a_404(stack: Stack) -> None:
    result = stack.cli("exec", "api", "--", "GET", "/status/404", "-o", "json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["status"] == 404


def test_exec_posts_a_body_from_a_file(stack: Stack, tmp_path: Path) -> None:
    body = tmp_path / "item.json"
    body.write_text('{"name": "widget"}')
    result = stack.cli(
        "exec", "api", "--", "POST", "/post", "-H", "Content-Type: application/json",
        "-d", f"@{body}", "-o", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["body"]["json"] == {"name": "widget"}
    piped = gatehouse(
        [
            "exec",
            "api",
            "-o",
            "json",
            "--",
            "PUT",
            "/put",
            "-d",
            "@-",
            "-H",
            "Content-Type: text/plain",
        ],
        env=stack.controlplane.cli_env,
        input="from stdin",
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["body"]["data"] == "from stdin"


def test_methods_and_bodies_through_the_listener(stack: Stack, listener: Connect) -> None:
    after = last_seq(stack)
    with httpx.Client(base_url=f"http://127.0.0.1:{listener.port}", timeout=30) as http:
        assert http.put("/put", json={"a": 1}).json()["json"] == {"a": 1}
        assert http.patch("/patch", content=b"raw bytes").json()["data"] == "raw bytes"
        head = http.head("/get")
        assert head.status_code == 200 and head.content == b""
        assert http.options("/get").status_code == 200
        assert http.get("/status/418").status_code == 418
        assert http.get("/anything/after-all").json()["method"] == "GET"  # still in step
    recorded = [(e["request"]["method"], e["request"]["path"]) for e in requests_of(stack, after)]
    assert recorded == [
        ("PUT", "/put"), ("PATCH", "/patch"), ("HEAD", "/get"), ("OPTIONS", "/get"),
        ("GET", "/status/418"), ("GET", "/anything/after-all"),
    ]  # fmt: skip
    statuses = [e["result"]["status"] for e in stack.events(after) if e["type"] == "http.response"]
    assert statuses == [200, 200, 200, 200, 418, 200]


def test_the_credential_reaches_the_target_not_the_caller_nor_the_trail(
    stack: Stack, http_targets: HttpTargets
) -> None:
    after = last_seq(stack)
    uri = f"/basic-auth/alice/{API_PASSWORD}"
    result = stack.cli(
        "exec", "api", "--", "GET", uri, "-H", f"Authorization: Bearer {CALLER_TOKEN}", "-v"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"authenticated": True, "user": "alice"}
    logged = wait_logged(http_targets, uri)
    basic = base64.b64encode(f"alice:{API_PASSWORD}".encode()).decode()
    assert [line.authorization for line in logged] == [f"Basic {basic}"]  # not the caller's
    trail = json.dumps(stack.events(after))
    assert basic not in trail
    assert CALLER_TOKEN not in trail
    assert basic not in result.stdout + result.stderr


def test_tls_target_with_its_own_ca_and_an_injected_header(
    stack: Stack, http_targets: HttpTargets
) -> None:
    result = stack.cli("exec", "api-tls", "--", "GET", "/anything/tls-check")
    assert result.returncode == 0, result.stderr
    logged = wait_logged(http_targets, "/anything/tls-check")
    assert [line.api_key for line in logged] == [API_KEY]


def test_a_denied_request_is_a_403_naming_the_rule_and_never_reaches_the_target(
    stack: Stack, http_targets: HttpTargets, listener: Connect
) -> None:
    after = last_seq(stack)
    refused = stack.cli("exec", "api", "--", "DELETE", "/anything/doomed")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["rule"] == "api-rules"
    # Through the listener: a dot segment does not get a path past the rule.
    answer = requests.post(
        f"http://127.0.0.1:{listener.port}/public/../admin/users", data="x", timeout=30
    )
    assert answer.status_code == 403
    assert answer.json()["rule"] == "api-rules"
    body = requests.post(
        f"http://127.0.0.1:{listener.port}/anything/sql", data="DROP TABLE users", timeout=30
    )
    assert body.status_code == 403
    recorded = requests_of(stack, after)
    assert [e["decision"]["result"] for e in recorded] == ["deny", "deny", "deny"]
    assert recorded[0]["request"]["method"] == "DELETE"
    time.sleep(0.5)  # nginx writes a line when a request ends; none of these may have one
    uris = {line.uri for line in http_targets.log_lines()}
    assert not uris & {
        "/anything/doomed",
        "/admin/users",
        "/public/../admin/users",
        "/anything/sql",
    }


def test_keep_alive_chunked_upload_and_100_continue(
    stack: Stack, listener: Connect, tmp_path: Path
) -> None:
    base = f"http://127.0.0.1:{listener.port}"
    after = last_seq(stack)
    with requests.Session() as session:
        for i in range(5):
            assert session.get(f"{base}/get?i={i}", timeout=30).json()["args"] == {"i": str(i)}

        def chunks() -> Iterator[bytes]:
            yield b"first,"
            yield b"second"

        posted = session.post(f"{base}/post", data=chunks(), timeout=30)
        assert posted.json()["data"] == "first,second"
    # One TCP connection, one session: the five GETs and the POST share it.
    sessions = {e["session_id"] for e in requests_of(stack, after)}
    assert len(sessions) == 1
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"z" * 200_000)
    curl = shutil.which("curl")
    assert curl is not None
    result = subprocess.run(
        [curl, "-sSv", "-H", "Expect: 100-continue", "--data-binary", f"@{upload}",
         "-H", "Content-Type: application/octet-stream", f"{base}/anything/upload"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 100 Continue" in result.stderr  # curl waited, and was told to go on
    assert json.loads(result.stdout)["data"] == "z" * 200_000
    event = requests_of(stack, after)[-1]
    assert event["request"]["body"]["bytes"] == 200_000


def test_a_connection_the_target_closed_while_idle_is_opened_again(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    with requests.Session() as session:
        first = session.get(f"http://127.0.0.1:{listener.port}/anything/idle-1", timeout=30)
        time.sleep(3)  # nginx closes its side of the agent's connection after 2 s
        second = session.get(f"http://127.0.0.1:{listener.port}/anything/idle-2", timeout=30)
    assert (first.status_code, second.status_code) == (200, 200)
    assert wait_logged(http_targets, "/anything/idle-2")


def test_an_http_1_0_client_gets_an_answer_it_can_read(listener: Connect) -> None:
    curl = shutil.which("curl")
    assert curl is not None
    result = subprocess.run(
        [curl, "-sS", "--http1.0", f"http://127.0.0.1:{listener.port}/anything/old?x=1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["args"] == {"x": "1"}


def test_malformed_head_is_a_400_and_nothing_is_forwarded(
    listener: Connect, http_targets: HttpTargets
) -> None:
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        sock.sendall(b"GET /anything/malformed HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    time.sleep(0.3)
    assert not any(line.uri == "/anything/malformed" for line in http_targets.log_lines())


def test_json_field_masked_at_the_agent(stack: Stack) -> None:
    after = last_seq(stack)
    result = stack.cli("exec", "api-masked", "--", "GET", "/anything?contact=bob@example.com")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # still valid JSON
    assert document["origin"] == "****"
    assert "bob@example.com" not in result.stdout
    response = next(e for e in stack.events(after) if e["type"] == "http.response")
    assert response["result"]["masked"] is True


def test_500_requests_from_20_clients_over_keep_alive(stack: Stack, listener: Connect) -> None:
    after = last_seq(stack)

    async def client(index: int) -> list[int]:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}") as http:
            return [
                (await http.get(f"/anything/load?c={index}&i={i}", timeout=60)).status_code
                for i in range(25)
            ]

    async def everyone() -> list[list[int]]:
        return await asyncio.gather(*(client(i) for i in range(20)))

    statuses = asyncio.run(everyone())
    assert [s for batch in statuses for s in batch] == [200] * 500
    recorded = [e for e in requests_of(stack, after) if e["request"]["path"] == "/anything/load"]
    assert len(recorded) == 500
    assert len({e["session_id"] for e in recorded}) == 20


def test_a_100_mb_download_streams_with_flat_memory(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    size = 100 * 1024 * 1024
    with (http_targets.www / "static" / "big.bin").open("wb") as fh:
        fh.truncate(size)
    processes = {
        "agent": stack.agent.proc,
        "control plane": stack.controlplane.proc,
        "connect": listener.proc,
    }
    pids = {name: proc.pid for name, proc in processes.items() if proc is not None}
    before = {name: _rss(pid) for name, pid in pids.items()}
    peak = dict(before)
    received = 0
    with requests.get(
        f"http://127.0.0.1:{listener.port}/static/big.bin", stream=True, timeout=120
    ) as answer:
        assert answer.status_code == 200
        for chunk in answer.iter_content(1024 * 1024):
            received += len(chunk)
            for name, pid in pids.items():
                peak[name] = max(peak[name], _rss(pid))
    assert received == size
    grown = {name: (peak[name] - before[name]) >> 20 for name in pids}
    assert len(grown) == 3 and max(grown.values()) < 40, f"MiB grown while streaming: {grown}"


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_websocket_echo_passes_through_and_is_recorded(stack: Stack) -> None:
    connect = Connect.create(stack.controlplane, "ws", stack.base)
    connect.start_and_wait()
    after = last_seq(stack)

    async def talk() -> list[str | bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"http://127.0.0.1:{connect.port}/echo") as socket,
        ):
            answers: list[str | bytes] = []
            for text in ("hello", "wörld" * 1000):
                await socket.send_str(text)
                answers.append((await socket.receive(timeout=30)).data)
            await socket.send_bytes(b"\x00\x01")
            answers.append((await socket.receive(timeout=30)).data)
            return answers

    try:
        assert asyncio.run(talk()) == ["hello", "wörld" * 1000, b"\x00\x01"]
    finally:
        connect.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = stack.events(after)
        upgrade = [e for e in events if e["type"] == "http.upgrade"]
        if upgrade:
            break
        time.sleep(0.1)
    request = next(e for e in events if e["type"] == "http.request")
    assert request["request"]["upgrade"] == "websocket"
    response = next(e for e in events if e["type"] == "http.response")
    assert response["result"]["status"] == 101
    assert upgrade[0]["ref"] == request["seq"]
    assert upgrade[0]["result"]["bytes"]["client"] > 6000
    assert upgrade[0]["result"]["messages"] == {"client": 3, "target": 3}


def raw_exchange(port: int, data: bytes, responses: int) -> list[tuple[int, bytes]]:
    """`data` written as it is on one connection; the first `responses` answers (status and
    body, framed by their Content-Length) read back."""
    out: list[tuple[int, bytes]] = []
    buffer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        while len(out) < responses:
            head, sep, rest = buffer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head) if sep else None
            if length is not None and len(rest) >= int(length.group(1)):
                size = int(length.group(1))
                out.append((int(head.split(b" ", 2)[1]), rest[:size]))
                buffer = rest[size:]
                continue
            chunk = sock.recv(65536)
            assert chunk, f"the connection closed after {len(out)} answers: {buffer!r}"
            buffer += chunk
    return out


def test_a_trailing_dot_segment_does_not_get_a_path_past_the_rule(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    """nginx resolves /admin/users/.. to /admin/, which `POST /admin/**` denies."""
    after = last_seq(stack)
    answer = raw_exchange(
        listener.port,
        b"POST /admin/users/.. HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        1,
    )
    assert [status for status, _ in answer] == [403]
    assert [e["decision"]["result"] for e in requests_of(stack, after)] == ["deny"]
    time.sleep(0.5)
    assert not any(line.uri.startswith("/admin/") for line in http_targets.log_lines())


def test_an_upgrade_the_target_refuses_leaves_the_next_requests_parsed_and_decided(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    """Pipelined behind an upgrade nginx does not take: a denied request is refused, the next
    one is recorded and reaches nginx as a request of its own."""
    after = last_seq(stack)
    answer = raw_exchange(
        listener.port,
        b"GET /anything/upgrade-refused HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        b"POST /admin/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        b"GET /anything/after-upgrade HTTP/1.1\r\nHost: x\r\n\r\n",
        3,
    )
    assert [status for status, _ in answer] == [200, 403, 200]
    recorded = requests_of(stack, after)
    assert [(e["request"]["path"], e["decision"]["result"]) for e in recorded] == [
        ("/anything/upgrade-refused", "allow"),
        ("/admin/smuggled", "deny"),
        ("/anything/after-upgrade", "allow"),
    ]
    assert wait_logged(http_targets, "/anything/after-upgrade")
    assert not any(line.uri == "/admin/smuggled" for line in http_targets.log_lines())


def test_a_fragment_in_the_request_target_is_a_400_and_never_reaches_the_target(
    listener: Connect, http_targets: HttpTargets
) -> None:
    """The event records path and query: `#...` would reach nginx unrecorded."""
    answer = raw_exchange(
        listener.port, b"GET /anything/fragment#/../x HTTP/1.1\r\nHost: x\r\n\r\n", 1
    )
    assert [status for status, _ in answer] == [400]
    assert b"fragment" in answer[0][1]
    time.sleep(0.5)
    assert not any(line.uri.startswith("/anything/fragment") for line in http_targets.log_lines())


@pytest.mark.parametrize("path", ["/anything/closing", "/admin/closing"])
def test_connection_close_ends_the_conversation_after_its_answer(
    listener: Connect, path: str
) -> None:
    """Allowed or refused (POST /admin/** is denied), the answer comes and the socket closes."""
    request = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx"
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):  # a connection left open times out here
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 " if path.startswith("/anything") else b"HTTP/1.1 403 ")


def test_every_request_in_the_access_log_was_recorded_first(
    stack: Stack, http_targets: HttpTargets
) -> None:
    """Runs last: the whole module's traffic, reconciled with nginx's own log."""
    time.sleep(0.5)
    recorded = [
        (e["request"]["method"], e["request"]["path"], e["request"].get("query") or "")
        for e in requests_of(stack)
        if e["decision"]["result"] == "allow"
    ]
    logged = http_targets.log_lines()
    assert logged
    remaining = list(recorded)
    for line in logged:
        path = line.uri.split("?", 1)[0]
        match = next((r for r in remaining if r[0] == line.method and r[1] == path), None)
        assert match is not None, f"{line.method} {line.uri} reached nginx unrecorded"
        remaining.remove(match)


# A request target opening with `//` is a path to the target (nginx routes `//admin/users` as
# `/admin/users`), not `//authority/path`: the event and the guard take the path the target
# receives, all before the `?`.


def test_a_double_slash_target_is_recorded_and_decided_as_what_the_target_receives(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    after = last_seq(stack)
    answer = raw_exchange(
        listener.port,
        b"POST //admin/users HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx",
        1,
    )
    time.sleep(0.5)  # nginx writes a line when a request ends
    reached = [
        (line.method, line.uri)
        for line in http_targets.log_lines()
        if line.uri.endswith("/admin/users")
    ]
    recorded = [
        (e["request"]["method"], e["request"]["path"], e["decision"]["result"])
        for e in requests_of(stack, after)
    ]
    # A POST under /admin/ is denied by `POST /admin/**`: it must be refused...
    assert [status for status, _ in answer] == [403], (recorded, reached)
    # ...and never reach the target.
    assert reached == [], (recorded, reached)


def test_a_double_slash_target_is_recorded_with_the_path_the_target_receives(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    after = last_seq(stack)
    raw_exchange(listener.port, b"GET //anything/unrecorded-part HTTP/1.1\r\nHost: x\r\n\r\n", 1)
    time.sleep(0.5)
    reached = [
        line.uri for line in http_targets.log_lines() if line.uri.endswith("/unrecorded-part")
    ]
    recorded = [e["request"]["path"] for e in requests_of(stack, after)]
    assert reached, "nginx did not log the request"
    # The trail must name the path the target got (modulo the target URL's own prefix).
    assert recorded == reached, (recorded, reached)


def test_a_101_that_is_no_websocket_does_not_open_a_tunnel_past_the_guard(
    stack: Stack, listener: Connect, http_targets: HttpTargets
) -> None:
    """nginx's `return 101` (an application's status, not a WebSocket handshake: no
    Sec-WebSocket-Accept) leaves nginx reading HTTP on that connection: had the gateway
    switched to opaque bytes, the POST behind it would reach nginx undecided and unrecorded."""
    after = last_seq(stack)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=30) as sock:
        sock.sendall(
            b"GET /switch-protocols HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            b"POST /admin/after-101 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"
        )
        answer = b""
        with contextlib.suppress(TimeoutError):
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                answer += chunk
    time.sleep(0.5)
    reached = [line.uri for line in http_targets.log_lines() if line.uri == "/admin/after-101"]
    recorded = [(e["request"]["path"], e["decision"]["result"]) for e in requests_of(stack, after)]
    assert reached == [], (answer, recorded)
    assert answer.startswith(b"HTTP/1.1 502 "), answer
    assert b"answered 101 without taking the WebSocket" in answer
    # The connection stayed HTTP: the POST behind it was read, decided (and denied) as any.
    assert recorded == [("/switch-protocols", "allow"), ("/admin/after-101", "deny")]


@pytest.mark.parametrize(
    ("uri", "content_type", "body"),
    [
        ("/anything/form-escaped", "application/x-www-form-urlencoded", b"q=DROP%20TABLE+users"),
        ("/anything/json-escaped", "application/json", b'{"q": "\\u0044ROP TABLE users"}'),
    ],
)
def test_a_body_pattern_holds_against_the_encodings_the_application_undoes(
    stack: Stack, listener: Connect, http_targets: HttpTargets, uri: str, content_type: str,
    body: bytes,
) -> None:  # fmt: skip
    """httpbin reads `DROP%20TABLE` in a form, and `\\u0044ROP` in JSON, as `DROP TABLE`:
    `deny_patterns: ['DROP TABLE']` must refuse them as it refuses the plain text."""
    after = last_seq(stack)
    answer = requests.post(
        f"http://127.0.0.1:{listener.port}{uri}",
        data=body,
        headers={"Content-Type": content_type},
        timeout=30,
    )
    time.sleep(0.5)
    reached = [line.uri for line in http_targets.log_lines() if line.uri == uri]
    assert answer.status_code == 403, (answer.text, reached)
    assert answer.json()["rule"] == "api-rules"
    assert reached == []
    assert [e["decision"]["result"] for e in requests_of(stack, after)] == ["deny"]


@pytest.mark.parametrize(
    ("method", "uri", "headers"),
    [
        ("HEAD", "/anything/no-get/head", {}),
        ("POST", "/anything/overridden", {"X-HTTP-Method-Override": "DELETE"}),
        ("GET", "/anything/original-url", {"X-Original-URL": "/anything/no-get/x"}),
    ],
)
def test_a_method_or_path_the_application_may_act_on_instead_is_decided_too(
    stack: Stack, listener: Connect, http_targets: HttpTargets, method: str, uri: str,
    headers: dict[str, str],
) -> None:  # fmt: skip
    """`GET /anything/no-get/**` is denied: httpbin (Flask) serves a HEAD with the GET view, so
    HEAD is refused with it; a method or path named in X-HTTP-Method-Override or
    X-Original-URL (honoured by many frameworks, not by httpbin) is decided as well."""
    after = last_seq(stack)
    answer = requests.request(
        method, f"http://127.0.0.1:{listener.port}{uri}", headers=headers, timeout=30
    )
    time.sleep(0.5)
    reached = [(line.method, line.uri) for line in http_targets.log_lines() if line.uri == uri]
    assert answer.status_code == 403, reached
    assert reached == []
    assert [e["decision"]["result"] for e in requests_of(stack, after)] == ["deny"]


def test_a_client_that_never_sends_a_request_is_closed_at_the_deadline(
    stack: Stack, tmp_path: Path
) -> None:
    """A TCP connection to `connect`'s HTTP listener that never sends a request head is closed
    at the handshake deadline, as on every listener, without a session for it."""
    with hasty_listener(stack.controlplane, "api", tmp_path) as listener:
        after = last_seq(stack)
        answers: list[bytes] = []
        for first in (b"", b"GET /get HTTP/1.1\r\nHost: x\r\n"):  # nothing, or half a head
            with socket.create_connection(("127.0.0.1", listener.port), timeout=15) as sock:
                sock.sendall(first)
                answer, waited = read_until_closed(sock)
            assert waited < 8, f"still open after {waited:.0f} s"
            answers.append(answer)
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
        assert b"no request within 1 s" in answers[0]
        assert [e for e in stack.events(after) if e["type"].startswith("session.")] == []
