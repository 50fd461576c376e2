"""The agent's own counters, and its optional HTTP listener: `/healthz` and `/metrics`.

Off by default (`--http-listen HOST:PORT` turns it on): an agent only dials out, and a port
it listens on is one more thing to protect. Kubernetes' liveness probe and Prometheus are the
readers; nothing here carries a session's content or a secret.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


@dataclass
class AgentStats:
    """Counted by the agent as it runs; read at scrape time."""

    started: float = field(default_factory=time.monotonic)
    sessions_active: int = 0
    sessions_total: int = 0
    bytes_to_targets: int = 0
    bytes_from_targets: int = 0
    control_connected: bool = False
    control_connects: int = 0
    policy_version: int = -1
    certificate_not_after: float = 0.0  # unix time; 0 without a client certificate (--dev)
    certificate_renewals: int = 0


class _Collector(Collector):
    def __init__(self, stats: AgentStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        yield GaugeMetricFamily(
            "gatehouse_agent_sessions_active", "Sessions open now.", value=s.sessions_active
        )
        yield CounterMetricFamily(
            "gatehouse_agent_sessions", "Sessions opened since start.", value=s.sessions_total
        )
        bytes_ = CounterMetricFamily(
            "gatehouse_agent_session_bytes",
            "Session bytes relayed, by direction.",
            labels=["direction"],
        )
        bytes_.add_metric(["to_target"], s.bytes_to_targets)
        bytes_.add_metric(["from_target"], s.bytes_from_targets)
        yield bytes_
        yield GaugeMetricFamily(
            "gatehouse_agent_control_connected",
            "1 while the control stream to the control plane is up.",
            value=1.0 if s.control_connected else 0.0,
        )
        yield CounterMetricFamily(
            "gatehouse_agent_control_connects",
            "Control streams established since start (reconnects show here).",
            value=s.control_connects,
        )
        yield GaugeMetricFamily(
            "gatehouse_agent_certificate_expiry_timestamp_seconds",
            "When the agent's client certificate expires (unix time; 0: none, --dev). "
            "Alert when it comes near: renewal happens at 2/3 of its lifetime.",
            value=s.certificate_not_after,
        )
        yield CounterMetricFamily(
            "gatehouse_agent_certificate_renewals",
            "Client certificates renewed over the control stream since start.",
            value=s.certificate_renewals,
        )
        yield GaugeMetricFamily(
            "gatehouse_agent_policy_version",
            "Version of the policy last pushed by the control plane (-1: none yet).",
            value=s.policy_version,
        )


def exposition(stats: AgentStats) -> Callable[[], bytes]:
    """A private registry (not the process-global one) and its text exposition."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats))
    return lambda: generate_latest(registry)


def build_app(stats: AgentStats) -> web.Application:
    metrics = exposition(stats)

    async def healthz(_request: web.Request) -> web.Response:
        # Alive means the event loop answers; a lost control stream is reported, not fatal:
        # restarting the pod would not bring the control plane back sooner.
        body = {
            "status": "ok",
            "control_stream": "connected" if stats.control_connected else "reconnecting",
            "sessions": stats.sessions_active,
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    async def metrics_endpoint(_request: web.Request) -> web.Response:
        return web.Response(body=metrics(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def start_http(stats: AgentStats, listen: str) -> web.AppRunner:
    """Listen on `listen` (host:port); OSError naming the address when it cannot."""
    host, _, port = listen.rpartition(":")
    runner = web.AppRunner(build_app(stats), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host.strip("[]") or None, int(port))
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {listen} (agent HTTP): {exc.strerror}") from None
    return runner
