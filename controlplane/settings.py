"""Everything one control-plane process is configured with, as one typed, frozen object.

Built once at the edge (`gatehouse controlplane serve`: flags > GATEHOUSE_* > --config file >
defaults, see cli/config.py) and passed down; no module below reads the environment. A new
setting is one field here: its flag, variable and file key follow from its name.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from cli.config import setting
from controlplane.addresses import split_host_port
from controlplane.agents.certificates import DEFAULT_LIFETIME as DEFAULT_AGENT_CERT_LIFETIME
from controlplane.audit.settings import (
    DEFAULT_CHECKPOINT_INTERVAL,
    DEFAULT_MIN_RETENTION,
    parse_duration,
    split_witnesses,
)
from controlplane.audit.witness import check_target
from controlplane.errors import InvalidArgument
from controlplane.tls import proxy
from wire.addresses import is_loopback_host

log = logging.getLogger(__name__)

LOG_FORMATS = ("text", "json")


def default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "gatehouse"


def _seconds(text: str) -> float:
    return parse_duration(text, "a duration").total_seconds()


def _duration(text: str) -> timedelta:
    return parse_duration(text, "a duration")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = setting(
        default_factory=default_data_dir,
        help="State directory (SQLite store, signing key, admin token).",
    )
    dev: bool = setting(
        False, help="Plaintext on loopback (no TLS), for a laptop; admin token in DIR."
    )
    grpc_listen: str = setting("127.0.0.1:8443", help="host:port for gRPC.")
    http_listen: str = setting("127.0.0.1:8080", help="host:port for health, metrics, export.")
    pg_listen: str = setting(
        "",
        help="host:port where native PostgreSQL clients connect (dbname=<connection>, "
        "password=<a Gatehouse token>); TLS required but with --dev. Empty: off.",
    )
    pg_listen_max_connections: int = setting(
        1000, help="Connections the --pg-listen listener holds at once (sessions and handshakes)."
    )
    mysql_listen: str = setting(
        "",
        help="host:port where native MySQL/MariaDB clients connect (database=<connection>, "
        "password=<a Gatehouse token>); TLS required but with --dev. Empty: off.",
    )
    mysql_listen_max_connections: int = setting(
        1000,
        help="Connections the --mysql-listen listener holds at once (sessions and handshakes).",
    )
    database_url: str | None = setting(
        None, secret=True, help="SQLAlchemy URL of the store (default: SQLite in the data dir)."
    )
    log_format: str = setting("text", help="text or json (one JSON object per line).")
    verbose: bool = setting(False, flags=("--verbose", "-v"), help="Debug logging.")
    heartbeat_interval: float = setting(10.0, help="Seconds between agent heartbeats.")
    agent_cert_lifetime: timedelta = setting(
        DEFAULT_AGENT_CERT_LIFETIME,
        parse=_duration,
        help="Lifetime of agents' client certificates, renewed at 2/3 of it (30s, 8h, 1d).",
    )
    # ---- the audit trail
    audit_key_file: Path | None = setting(
        None,
        help="Ed25519 key (PEM) that signs checkpoints; shared by all replicas. "
        "Default: made in the data dir.",
    )
    checkpoint_every: int = setting(1000, help="Sign a checkpoint every N audit events.")
    checkpoint_interval: float = setting(
        DEFAULT_CHECKPOINT_INTERVAL,
        parse=_seconds,
        help="Also sign a checkpoint this often when events came since the last (90s, 5m).",
    )
    witnesses: tuple[str, ...] = setting(
        (),
        key="audit_witness",
        parse=split_witnesses,
        help="Push each checkpoint here too, comma-separated: absolute file paths "
        "(NDJSON, fsynced) and http(s) URLs (JSON POST).",
    )
    min_retention: timedelta = setting(
        DEFAULT_MIN_RETENTION,
        key="audit_min_retention",
        parse=_duration,
        help="Prune never removes events younger than this (e.g. 30d, 90d).",
    )
    # ---- people and tokens
    oidc_issuer: str = setting("", help="OIDC issuer URL people log in with (empty: none).")
    oidc_audience: tuple[str, ...] = setting((), help="Audiences the tokens must carry.")
    oidc_groups_claim: str = setting("groups", help="The claim that lists a person's groups.")
    oidc_leeway: int = setting(30, help="Seconds of clock skew allowed (0 to 60).")
    oidc_client_id: str = setting("gatehouse-cli", help="Client id the CLI logs in as.")
    oidc_resource: str = setting("", help="RFC 8707 resource the CLI asks tokens for.")
    oidc_scopes: str = setting("", help="Extra scopes the CLI asks for, space-separated.")
    admin_groups: tuple[str, ...] = setting(
        ("admins",), help="People in one of these groups are admins."
    )
    delegation_login_max_age: float = setting(
        86400.0, help="Seconds since a person's login within which their delegated tokens work."
    )
    auth_fail_window: float = setting(60.0, help="Seconds of one failed-authentication window.")
    auth_fail_limit: int = setting(30, help="Failed authentications per source and window.")
    auth_fail_sources: int = setting(10_000, help="Sources tracked before they share one.")
    # ---- TLS (production mode): the operator's certificate and key, re-read when they
    # change; without them the CA in data_dir issues one for public_addr and the listen
    # addresses.
    tls_cert: Path | None = setting(
        None,
        help="Server certificate chain (PEM) for both listeners; re-read when it changes. "
        "Default: issued by the control plane's own CA (DIR/ca.pem).",
    )
    tls_key: Path | None = setting(None, help="Key (PEM) of --tls-cert.")
    public_addr: tuple[str, ...] = setting(
        (),
        help="Names and IPs clients dial, comma-separated: put in the self-issued "
        "certificate (with the listen addresses and localhost).",
    )
    # PROXY protocol v2 headers are read from these peers only (comma-separated CIDRs).
    trusted_proxies: str = setting(
        "",
        help="Read a PROXY protocol v2 header (the client's address) from these peers "
        "only, comma-separated CIDRs (your TCP load balancers).",
    )
    # ---- several replicas on one PostgreSQL store (ADR 0023)
    advertise: str = setting(
        "",
        help="host:port of this replica's gRPC listener that agents dial for the sessions of "
        "its clients, when several replicas share a PostgreSQL store (default: the gRPC "
        "listen address, or the first --public-addr with its port when it listens on all).",
    )
    # ---- listeners
    handshake_timeout: float = setting(10.0, help="Seconds a new connection has to handshake.")
    max_pending_handshakes: int = setting(128, help="Connections handshaking at once.")

    def validate(self) -> None:
        """Refuse nonsense before anything starts; messages name the key."""
        if self.dev and (self.tls_cert or self.tls_key or self.trusted_proxies):
            raise InvalidArgument(
                "--dev serves plaintext on loopback: --tls-cert, --tls-key and "
                "--trusted-proxies are for production mode (drop --dev)"
            )
        if self.advertise:
            host, sep, port = self.advertise.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgument(
                    f"advertise {self.advertise!r} is not host:port (the address agents dial "
                    "to reach this replica)"
                )
        if not timedelta(seconds=10) <= self.agent_cert_lifetime <= timedelta(days=397):
            raise InvalidArgument(
                "--agent-cert-lifetime must be from 10s (agents renew at 2/3 of it) to 397d"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("--tls-cert and --tls-key go together: give both or neither")
        try:
            proxy.parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise InvalidArgument(f"--trusted-proxies: {exc}") from None
        if self.log_format not in LOG_FORMATS:
            raise InvalidArgument(f"log_format must be text or json, not {self.log_format!r}")
        if self.checkpoint_every < 1:
            raise InvalidArgument("checkpoint_every must be a whole number of events, at least 1")
        if not 0 < self.checkpoint_interval <= 86400:
            raise InvalidArgument(
                "checkpoint_interval must be a duration from 1s to 24h (e.g. 60s, 5m)"
            )
        if not timedelta(seconds=1) <= self.min_retention <= timedelta(days=36500):
            raise InvalidArgument(
                "audit_min_retention must be a duration up to 100 years (e.g. 30d, 90d)"
            )
        if self.min_retention < timedelta(days=1):
            log.warning(
                "audit_min_retention is %s: prune may remove events that young (meant for tests)",
                self.min_retention,
            )
        if not 0 <= self.oidc_leeway <= 60:
            raise InvalidArgument(f"oidc_leeway must be 0 to 60 s, not {self.oidc_leeway}")
        if not 1 <= self.delegation_login_max_age <= 30 * 86400:
            raise InvalidArgument("delegation_login_max_age must be between 1 s and 30 days")
        if not 1 <= self.auth_fail_window <= 3600:
            raise InvalidArgument("auth_fail_window must be between 1 and 3600 s")
        if not 1 <= self.auth_fail_limit <= 1_000_000:
            raise InvalidArgument("auth_fail_limit must be between 1 and 1000000")
        if not 1 <= self.auth_fail_sources <= 10_000_000:
            raise InvalidArgument("auth_fail_sources must be between 1 and 10000000")
        if not 0.1 <= self.handshake_timeout <= 600:
            raise InvalidArgument("handshake_timeout must be between 0.1 and 600 s")
        if not 1 <= self.max_pending_handshakes <= 100_000:
            raise InvalidArgument("max_pending_handshakes must be between 1 and 100000")
        if not 1 <= self.pg_listen_max_connections <= 100_000:
            raise InvalidArgument("pg_listen_max_connections must be between 1 and 100000")
        if not 1 <= self.mysql_listen_max_connections <= 100_000:
            raise InvalidArgument("mysql_listen_max_connections must be between 1 and 100000")
        if not 0.5 <= self.heartbeat_interval <= 300:
            raise InvalidArgument("heartbeat_interval must be between 0.5 and 300 s")
        if self.oidc_issuer.strip():
            from controlplane.auth.oidc import OidcSettings

            try:
                OidcSettings(issuer=self.oidc_issuer.strip(), audience=self.oidc_audience)
            except ValueError as exc:
                raise InvalidArgument(f"oidc_issuer/oidc_audience: {exc}") from None
        for target in self.witnesses:
            check_target(target)
        for name, listen in (
            ("--grpc-listen", self.grpc_listen),
            ("--http-listen", self.http_listen),
            *((("--pg-listen", self.pg_listen),) if self.pg_listen else ()),
            *((("--mysql-listen", self.mysql_listen),) if self.mysql_listen else ()),
        ):
            host = split_host_port(listen)[0]
            if self.dev and not is_loopback_host(host):
                raise InvalidArgument(
                    f"{name} {listen}: --dev serves plaintext and only listens on loopback "
                    "(127.0.0.1 or ::1)"
                )
