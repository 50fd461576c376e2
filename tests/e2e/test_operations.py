"""Operations: liveness and readiness over HTTP, the standard gRPC health service, JSON logs,
the Prometheus histograms, and the agent's own /healthz and /metrics."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devenv.postgres import PostgresServer, start_postgres
from devenv.processes import free_port
from devenv.stack import Agent, ControlPlane, enroll_agent
from tests.e2e.conftest import AGENT, PG_PASSWORD, POLICY, Stack

pytestmark = pytest.mark.e2e


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def grpc_health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return int(answer.status)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the exposition")


@pytest.fixture
def ops_stack(tmp_path: Path, pg: PostgresServer) -> Iterator[tuple[Stack, int]]:
    """A control plane and an agent, both logging JSON, the agent's HTTP listener on."""
    controlplane = ControlPlane.create(
        tmp_path / "controlplane", env={"GATEHOUSE_LOG_FORMAT": "json"}
    )
    controlplane.start_and_wait()
    agent_port = free_port()
    try:
        agent: Agent = enroll_agent(
            controlplane,
            AGENT,
            tmp_path / "agent",
            env={"PG_PASSWORD": PG_PASSWORD, "GATEHOUSE_LOG_FORMAT": "json"},
        )
    except Exception:
        controlplane.stop()
        raise
    agent.stop()  # again with the flag: `--http-listen` on the command line
    agent.args += ["--http-listen", f"127.0.0.1:{agent_port}"]
    agent.start()
    stack = Stack(controlplane, agent, pg, tmp_path)
    try:
        controlplane.wait_agent(AGENT)
        assert stack.apply(POLICY.format(agent=AGENT, port=pg.port)).returncode == 0
        yield stack, agent_port
    finally:
        stack.stop()


def test_health_readiness_grpc_health_json_logs_and_histograms(
    ops_stack: tuple[Stack, int],
) -> None:
    stack, agent_port = ops_stack
    cp = stack.controlplane
    base = f"http://127.0.0.1:{cp.http_port}"

    status, body = get(base + "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = get(base + "/readyz")
    assert status == 200, body
    assert json.loads(body) == {
        "status": "ready",
        "checks": {"store": "ok", "migrations": "ok", "audit_writer": "ok"},
    }

    serving = health_pb2.HealthCheckResponse.SERVING
    assert grpc_health(cp.address) == serving
    assert grpc_health(cp.address, "gatehouse.v1.ClientService") == serving
    with pytest.raises(grpc.RpcError) as unknown:
        grpc_health(cp.address, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    result = stack.cli("exec", "pg", "-c", "select 41+1 as answer")
    assert result.returncode == 0, result.stderr
    assert "42" in result.stdout

    _, exposition = get(base + "/metrics")
    text = exposition.decode()
    assert metric(text, "gatehouse_audit_commit_duration_seconds_count") >= 2
    assert metric(text, 'gatehouse_audit_commit_duration_seconds_bucket{le="+Inf"}') >= 2
    deadline = time.monotonic() + 10
    while metric(text, "gatehouse_session_duration_seconds_count") < 1:
        assert time.monotonic() < deadline, "no session duration was observed"
        time.sleep(0.2)
        text = get(base + "/metrics")[1].decode()

    # The agent's own listener: alive, connected, and the session it served counted.
    status, body = get(f"http://127.0.0.1:{agent_port}/healthz")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "control_stream": "connected", "sessions": 0}
    agent_metrics = get(f"http://127.0.0.1:{agent_port}/metrics")[1].decode()
    assert metric(agent_metrics, "gatehouse_agent_control_connected") == 1.0
    assert metric(agent_metrics, "gatehouse_agent_sessions_total") == 1.0
    assert metric(agent_metrics, 'gatehouse_agent_session_bytes_total{direction="to_target"}') > 0
    assert metric(agent_metrics, 'gatehouse_agent_session_bytes_total{direction="from_target"}') > 0
    assert metric(agent_metrics, "gatehouse_agent_policy_version") >= 1

    # Every line either process logged is one JSON object with the fields a pipeline needs,
    # and the agent's session lines carry the session id; no query text reached a log.
    session_lines = 0
    for log_file in (cp.log_file, stack.agent.log_file):
        lines = [line for line in log_file.read_text().splitlines() if line.strip()]
        assert lines
        for line in lines:
            record: dict[str, Any] = json.loads(line)
            assert {"time", "level", "logger", "message"} <= record.keys(), line
            assert "41+1" not in line
            if record["logger"] == "agent.sessions" and "ended" in record["message"]:
                assert record["session_id"] in record["message"]
                session_lines += 1
    assert session_lines == 1


def test_readyz_and_grpc_health_fail_when_the_store_is_gone(tmp_path: Path) -> None:
    store = start_postgres(
        tmp_path / "store", roles={"gh": "gh-pass"}, databases={"gh": "gh"}, log_statements=False
    )
    controlplane = ControlPlane.create(
        tmp_path / "controlplane",
        env={"GATEHOUSE_DATABASE_URL": store.dsn("gh", "gh-pass", "gh")},
    )
    try:
        controlplane.start_and_wait()
        base = f"http://127.0.0.1:{controlplane.http_port}"
        assert get(base + "/readyz")[0] == 200
        assert grpc_health(controlplane.address) == health_pb2.HealthCheckResponse.SERVING
        store.stop()
        deadline = time.monotonic() + 5  # a probe's answer is reused for a second
        while (answer := get(base + "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, "/readyz still 200 without a store"
            time.sleep(0.2)
        status, body = answer
        assert status == 503, body
        answer = json.loads(body)
        assert answer["status"] == "unready"
        assert answer["checks"]["store"].startswith("unreachable")
        assert answer["checks"]["audit_writer"] == "ok"
        assert "gh-pass" not in body.decode()
        assert get(base + "/healthz")[0] == 200  # alive: restarting would not bring the store
        deadline = time.monotonic() + 15  # the gRPC status follows within HEALTH_INTERVAL
        while grpc_health(controlplane.address) != health_pb2.HealthCheckResponse.NOT_SERVING:
            assert time.monotonic() < deadline, "gRPC health still SERVING without a store"
            time.sleep(0.5)
    finally:
        controlplane.stop()
        store.stop()


def test_controlplane_runs_from_a_config_file_with_env_over_file(tmp_path: Path) -> None:
    """A TOML file gives everything; a variable overrides one key; the store URL comes from
    a file (`database_url_file`); the process serves where the winning values say."""
    data_dir = tmp_path / "data"
    grpc_port, file_http_port, env_http_port = free_port(), free_port(), free_port()
    url_file = tmp_path / "database-url"
    url_file.write_text(f"sqlite:///{tmp_path / 'from-file.db'}\n")
    config = tmp_path / "controlplane.toml"
    config.write_text(
        f'dev = true\ndata_dir = "{data_dir}"\ngrpc_listen = "127.0.0.1:{grpc_port}"\n'
        f'http_listen = "127.0.0.1:{file_http_port}"\ndatabase_url_file = "{url_file}"\n'
        'log_format = "json"\n'
    )
    controlplane = ControlPlane(
        args=["controlplane", "serve", "--config", str(config)],
        log_file=tmp_path / "controlplane.log",
        env={"GATEHOUSE_HTTP_LISTEN": f"127.0.0.1:{env_http_port}"},
        data_dir=data_dir,
        grpc_port=grpc_port,
        http_port=env_http_port,
    )
    try:
        controlplane.start_and_wait()
        assert get(f"http://127.0.0.1:{env_http_port}/readyz")[0] == 200
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{file_http_port}/healthz", timeout=2)
        assert (tmp_path / "from-file.db").exists()
        assert not (data_dir / "gatehouse.db").exists()
        first = controlplane.log_file.read_text().splitlines()[0]
        assert json.loads(first)["level"] == "info"
    finally:
        controlplane.stop()


def test_a_bad_config_file_stops_the_start_with_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "controlplane.yaml"
    config.write_text("dev: true\ncheckpoint_every: lots\n")
    from devenv.stack import gatehouse

    result = gatehouse(["controlplane", "serve", "--config", str(config)])
    assert result.returncode == 2
    assert f"checkpoint_every ({config}:2): must be a whole number" in result.stderr


def test_agent_runs_from_a_config_file_with_its_token_in_a_file(tmp_path: Path) -> None:
    """Everything in agent.yaml, the join token in a 0600 file named by `token_file`: nothing
    secret on the command line or in the environment."""
    controlplane = ControlPlane.create(tmp_path / "controlplane")
    controlplane.start_and_wait()
    agent: Agent | None = None
    try:
        from devenv.stack import gatehouse

        created = gatehouse(["admin", "agents", "create", "from-file"], env=controlplane.cli_env)
        assert created.returncode == 0, created.stderr
        token_file = tmp_path / "join.token"
        token_file.write_text(created.stdout)
        token_file.chmod(0o600)
        port = free_port()
        config = tmp_path / "agent.yaml"
        config.write_text(
            f"controlplane: {controlplane.address}\nname: from-file\ninsecure: true\n"
            f"data_dir: {tmp_path / 'agent'}\ntoken_file: {token_file}\n"
            f"http_listen: 127.0.0.1:{port}\n"
        )
        agent = Agent(
            args=["agent", "run", "--config", str(config)],
            log_file=tmp_path / "agent.log",
            name="from-file",
        )
        agent.start()
        controlplane.wait_agent("from-file")
        assert created.stdout.strip() not in " ".join(agent.args)
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200
        assert json.loads(body)["control_stream"] == "connected"
    finally:
        if agent is not None:
            agent.stop()
        controlplane.stop()


def test_health_over_tls_in_production_mode(tmp_path: Path) -> None:
    """Without --dev: /healthz and /readyz over HTTPS and the gRPC health service over TLS,
    both trusting the control plane's own CA (DATA_DIR/ca.pem); plaintext is refused."""
    import ssl

    controlplane = ControlPlane.create(
        tmp_path / "controlplane", tls=True, extra=["--public-addr", "127.0.0.1"]
    )
    try:
        controlplane.start_and_wait()
        ca = controlplane.data_dir / "ca.pem"
        context = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{controlplane.http_port}/readyz"
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            assert json.loads(response.read())["status"] == "ready"
        credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
        with grpc.secure_channel(controlplane.address, credentials) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError):
            grpc_health(controlplane.address)  # plaintext
    finally:
        controlplane.stop()


def test_agent_metrics_show_its_client_certificate_in_production_mode(tmp_path: Path) -> None:
    """Over TLS the agent enrolls for a client certificate; /metrics says when it expires, so
    an operator can alert before a failing renewal locks the agent out."""
    controlplane = ControlPlane.create(
        tmp_path / "controlplane",
        tls=True,
        extra=["--public-addr", "127.0.0.1", "--agent-cert-lifetime", "1h"],
    )
    controlplane.start_and_wait()
    port = free_port()
    try:
        agent = enroll_agent(
            controlplane,
            "tls-agent",
            tmp_path / "agent",
            env={"GATEHOUSE_AGENT_HTTP_LISTEN": f"127.0.0.1:{port}"},
        )
        try:
            text = get(f"http://127.0.0.1:{port}/metrics")[1].decode()
            expiry = metric(text, "gatehouse_agent_certificate_expiry_timestamp_seconds")
            assert time.time() + 3000 < expiry <= time.time() + 3600 + 60
            assert metric(text, "gatehouse_agent_control_connected") == 1.0
        finally:
            agent.stop()
    finally:
        controlplane.stop()
