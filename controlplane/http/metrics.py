"""Prometheus metrics, read from the live objects at scrape time (nothing to keep in sync)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Live(Collector):
    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        values = self._read()
        yield CounterMetricFamily(
            "gatehouse_audit_events_committed",
            "Audit events committed to the store by this process.",
            value=values["events_committed"],
        )
        yield CounterMetricFamily(
            "gatehouse_audit_commits",
            "Audit store transactions (group commits) by this process.",
            value=values["commits"],
        )
        yield CounterMetricFamily(
            "gatehouse_audit_commit_seconds",
            "Time spent in audit store transactions; divide by commits for the mean latency.",
            value=values["commit_seconds"],
        )
        yield CounterMetricFamily(
            "gatehouse_audit_result_failures",
            "Result events (db.result, ssh.result...) that could not be recorded; each ended "
            "its session. Alert on any.",
            value=values.get("result_failures", 0.0),
        )
        yield CounterMetricFamily(
            "gatehouse_audit_invalid_events",
            "Events refused by the writer for having no canonical JSON form (their request "
            "failed; nothing else did).",
            value=values.get("invalid_events", 0.0),
        )
        yield CounterMetricFamily(
            "gatehouse_audit_witness_pushes",
            "Signed checkpoints delivered to a witness outside the store.",
            value=values.get("witness_pushes", 0.0),
        )
        yield CounterMetricFamily(
            "gatehouse_audit_witness_failures",
            "Checkpoints a witness did not take after every retry (the trail went on).",
            value=values.get("witness_failures", 0.0),
        )
        yield GaugeMetricFamily(
            "gatehouse_audit_queue_depth",
            "Audit events waiting for their commit.",
            value=values["queue_depth"],
        )
        yield GaugeMetricFamily(
            "gatehouse_sessions_active", "Sessions relayed now.", value=values["sessions"]
        )
        yield CounterMetricFamily(
            "gatehouse_sessions", "Sessions opened since start.", value=values["sessions_total"]
        )
        yield GaugeMetricFamily(
            "gatehouse_agents_online", "Agents holding a control stream.", value=values["agents"]
        )


def registry(read: Callable[[], dict[str, float]]) -> Callable[[], bytes]:
    """A private registry (not the process-global one) and its text exposition."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Live(read))
    return lambda: generate_latest(reg)
