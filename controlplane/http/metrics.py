"""Prometheus metrics: counters and gauges read from the live objects at scrape time (nothing
to keep in sync), and the two histograms that cannot be read afterwards, observed as they
happen: audit commit latency and session duration."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: An audit commit is one fsynced transaction: sub-millisecond on a local SSD, tens of
#: milliseconds on networked PostgreSQL; seconds mean trouble (each request waits for it).
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: From a one-shot `exec` (under a second) to a working day's shell.
SESSION_BUCKETS = (0.5, 1, 5, 15, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400)


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
            "Audit store transactions by this process: group commits, and the transactions "
            "that store a credential or a prune with its event.",
            value=values["commits"],
        )
        yield CounterMetricFamily(
            "gatehouse_audit_durable_commits",
            "Audit store transactions that waited for the disk (the others held only events "
            "nobody waits for: results, async requests).",
            value=values.get("durable_commits", 0.0),
        )
        yield CounterMetricFamily(
            "gatehouse_audit_syncs",
            "Timed syncs of relaxed audit commits that no durable commit covered in time.",
            value=values.get("syncs", 0.0),
        )
        yield CounterMetricFamily(
            "gatehouse_audit_recovered_events",
            "Events of relaxed audit commits that the store lost (a crash of its server) and "
            "the writer appended again. Alert on any: look for a store crash.",
            value=values.get("recovered_events", 0.0),
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
        for prefix, flag in (("pg_listen", "--pg-listen"), ("mysql_listen", "--mysql-listen")):
            if f"{prefix}_active" in values:
                yield from _listener(prefix, flag, values)


def _listener(prefix: str, flag: str, values: dict[str, float]) -> Iterator[Metric]:
    """A native listener (`--pg-listen`, `--mysql-listen`): what it took, holds and refused,
    and why."""
    yield CounterMetricFamily(
        f"gatehouse_{prefix}_connections",
        f"Connections the {flag} listener accepted since start (refused ones included).",
        value=values[f"{prefix}_accepted"],
    )
    yield GaugeMetricFamily(
        f"gatehouse_{prefix}_active",
        f"Connections the {flag} listener holds now (starting up or in a session).",
        value=values[f"{prefix}_active"],
    )
    refused = CounterMetricFamily(
        f"gatehouse_{prefix}_refused",
        f"Connections the {flag} listener refused: over its connection or handshake limit, "
        "no startup in time, or a plaintext startup where TLS is required.",
        labels=["reason"],
    )
    for reason in ("limit", "timeout", "plaintext"):
        refused.add_metric([reason], values[f"{prefix}_refused_{reason}"])
    yield refused


class Metrics:
    """A private registry (not the process-global one): the live values and the histograms."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Live(read))
        self.commit_latency = Histogram(
            "gatehouse_audit_commit_duration_seconds",
            "Latency of each audit store transaction (group commit), in seconds.",
            buckets=COMMIT_BUCKETS,
            registry=self._registry,
        )
        self.session_duration = Histogram(
            "gatehouse_session_duration_seconds",
            "How long relayed sessions lasted, from open to close, in seconds.",
            buckets=SESSION_BUCKETS,
            registry=self._registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self._registry)


def registry(read: Callable[[], dict[str, float]]) -> Callable[[], bytes]:
    """The text exposition of the live values alone (no histograms)."""
    return Metrics(read).exposition
