"""Wiring and lifecycle of one control-plane process: store, audit writer, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import grpc
from aiohttp import web

from controlplane.addresses import is_loopback, split_host_port
from controlplane.admin import AdminServicer
from controlplane.agents.registry import AgentRegistry
from controlplane.agents.service import AgentServicer
from controlplane.audit.checkpoints import (
    CHECKPOINT_EVERY_ENV,
    KEY_FILE_NAME,
    env_checkpoint_every,
    env_key_file,
    load_signing_key,
)
from controlplane.audit.service import AuditServicer
from controlplane.audit.settings import (
    CHECKPOINT_INTERVAL_ENV,
    MIN_RETENTION_ENV,
    env_checkpoint_interval,
    env_min_retention,
    env_witnesses,
)
from controlplane.audit.witness import WitnessPublisher, check_target
from controlplane.audit.writer import AuditWriter
from controlplane.auth.oidc import OidcSettings, OidcValidator
from controlplane.auth.sources import SourceInterceptor, source_middleware
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.errors import InvalidArgument
from controlplane.handshakes import (
    MAX_CONNECTIONS,
    HandshakeGuard,
    HandshakeLimits,
    grpc_options,
)
from controlplane.http.api import build_app
from controlplane.http.metrics import registry as metrics_registry
from controlplane.policy.store import PolicyStore
from controlplane.relay.service import ClientServicer
from controlplane.relay.tunnel import Tunnels
from controlplane.sessions import SessionServicer
from controlplane.store.database import Database, default_url
from controlplane.tls import proxy
from controlplane.tls.front import TlsFront
from controlplane.tls.server import ALPN_GRPC, ALPN_HTTP, ServerTls
from gatehouse.v1 import (
    admin_pb2_grpc,
    agent_pb2_grpc,
    audit_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    sessions_pb2_grpc,
)

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
GRPC_PENDING_HANDSHAKES = 4096  # TLS handshakes at once on the gRPC listener, at least


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    grpc_listen: str = "127.0.0.1:8443"
    http_listen: str = "127.0.0.1:8080"
    database_url: str | None = None
    dev: bool = False
    heartbeat_interval: float = 10.0
    # Audit signing key (Ed25519, PEM); None: DATA_DIR/audit-signing.key, made on first start.
    audit_key_file: Path | None = field(default_factory=env_key_file)
    # A signed audit.checkpoint event each time seq passes a multiple of this.
    checkpoint_every: int = field(default_factory=env_checkpoint_every)
    # ... and one every this many seconds when events came since the last (0: never).
    checkpoint_interval: float = field(default_factory=env_checkpoint_interval)
    # Each checkpoint is also pushed to these (file paths, http(s) URLs), outside the store.
    witnesses: tuple[str, ...] = field(default_factory=env_witnesses)
    # Prune never removes events younger than this.
    min_retention: timedelta = field(default_factory=env_min_retention)
    # TLS (production mode): the operator's certificate and key, re-read when they change;
    # without them the CA in data_dir issues one for public_addr and the listen addresses.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    public_addr: tuple[str, ...] = ()
    # PROXY protocol v2 headers are read from these peers only (comma-separated CIDRs).
    trusted_proxies: str = ""

    def validate(self) -> None:
        if self.dev and (self.tls_cert or self.tls_key or self.trusted_proxies):
            raise InvalidArgument(
                "--dev serves plaintext on loopback: --tls-cert, --tls-key and "
                "--trusted-proxies are for production mode (drop --dev)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidArgument("--tls-cert and --tls-key go together: give both or neither")
        try:
            proxy.parse_networks(self.trusted_proxies)
        except ValueError as exc:
            raise InvalidArgument(f"--trusted-proxies: {exc}") from None
        if self.checkpoint_every < 1:
            raise InvalidArgument(
                f"{CHECKPOINT_EVERY_ENV} must be a whole number of events, at least 1"
            )
        if not 0 < self.checkpoint_interval <= 86400:
            raise InvalidArgument(
                f"{CHECKPOINT_INTERVAL_ENV} must be a duration from 1s to 24h (e.g. 60s, 5m)"
            )
        if not timedelta(seconds=1) <= self.min_retention <= timedelta(days=36500):
            raise InvalidArgument(
                f"{MIN_RETENTION_ENV} must be a duration up to 100 years (e.g. 30d, 90d)"
            )
        if self.min_retention < timedelta(days=1):
            log.warning(
                "%s is %s: prune may remove events that young (meant for tests)",
                MIN_RETENTION_ENV,
                self.min_retention,
            )
        for target in self.witnesses:
            check_target(target)
        for name, listen in (
            ("--grpc-listen", self.grpc_listen),
            ("--http-listen", self.http_listen),
        ):
            host = split_host_port(listen)[0]
            if self.dev and not is_loopback(host):
                raise InvalidArgument(
                    f"{name} {listen}: --dev serves plaintext and only listens on loopback "
                    "(127.0.0.1 or ::1)"
                )


class ControlPlane:
    """Everything one process runs; `start` then `wait`, and `stop` in any order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.database_url or default_url(settings.data_dir))
        self.audit = AuditWriter(
            self.db,
            checkpoint_every=settings.checkpoint_every,
            checkpoint_interval=settings.checkpoint_interval,
        )
        self.witnesses = WitnessPublisher(settings.witnesses)
        if self.witnesses:
            self.audit.add_checkpoint_sink(self.witnesses.offer)
        oidc = OidcSettings.from_env()
        self.oidc_settings = oidc
        self.oidc = OidcValidator(oidc) if oidc is not None else None
        self.auth = TokenAuthenticator(self.db, self.audit, self.oidc)
        self.agents = AgentRegistry(self.db, self.audit)
        self.policy = PolicyStore(self.db, self.audit)
        self.tunnels = Tunnels()
        self.limits = HandshakeLimits.from_env()
        self.http_handshakes = HandshakeGuard(self.limits)
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self.tls: ServerTls | None = None
        self._fronts: list[TlsFront] = []
        self._run_dir: Path | None = None

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await asyncio.to_thread(self.db.migrate)
        signer = await asyncio.to_thread(
            load_signing_key, settings.data_dir / KEY_FILE_NAME, settings.audit_key_file
        )
        self.witnesses.start()
        self.audit.start(signer)
        self.auth.failures.start()
        await self.policy.load()
        await self.auth.bootstrap_admin(settings.data_dir / "admin.token")
        if not settings.dev:
            self.tls = await asyncio.to_thread(
                ServerTls.configure,
                settings.data_dir,
                settings.tls_cert,
                settings.tls_key,
                [
                    *settings.public_addr,
                    split_host_port(settings.grpc_listen)[0],
                    split_host_port(settings.http_listen)[0],
                ],
            )
            # The inner servers' sockets: private to this process's user, short enough for
            # sun_path (a data dir can be deep), gone at stop.
            self._run_dir = Path(tempfile.mkdtemp(prefix="gatehouse-"))
        server = grpc.aio.server(
            interceptors=[SourceInterceptor()],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE),
                ("grpc.max_send_message_length", MAX_MESSAGE),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                *grpc_options(self.limits),
            ],
        )
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(
                self.agents,
                self.policy,
                self.tunnels,
                heartbeat_interval=settings.heartbeat_interval,
            ),
            server,
        )
        client_pb2_grpc.add_ClientServiceServicer_to_server(
            ClientServicer(
                self.auth,
                self.policy,
                self.agents,
                self.tunnels,
                self.audit,
                self.db,
                login=_login_config(self.oidc_settings),
            ),
            server,
        )
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.auth, self.agents, self.policy), server
        )
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.auth, self.db), server
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.auth, self.db, self.audit, min_retention=settings.min_retention),
            server,
        )
        self._grpc = server
        inner = settings.grpc_listen if self._run_dir is None else f"unix:{self._run_dir}/grpc.sock"
        try:
            server.add_insecure_port(inner)
        except RuntimeError:
            raise OSError(f"cannot listen on {settings.grpc_listen} (gRPC): in use?") from None
        await server.start()
        self._http = await self._start_http()
        if self.tls is not None:
            self._start_fronts(self.tls)
        log.info(
            "control plane listening: gRPC %s, HTTP %s (%s), store %s",
            settings.grpc_listen,
            settings.http_listen,
            "plaintext, --dev" if self.tls is None else f"TLS, CA pin {self.tls.ca.pin}",
            "SQLite" if self.db.is_sqlite else "PostgreSQL",
        )

    def _start_fronts(self, tls: ServerTls) -> None:
        assert self._run_dir is not None
        trusted = proxy.parse_networks(self.settings.trusted_proxies)
        # gRPC: a fleet of agents reconnecting at once after a restart must not be turned away
        # (they would only retry later); the timeout still bounds connections that stall.
        grpc_pending = max(self.limits.max_pending, GRPC_PENDING_HANDSHAKES)
        for name, listen, alpn, inner, http, pending in (
            ("gRPC", self.settings.grpc_listen, ALPN_GRPC, "grpc.sock", False, grpc_pending),
            (
                "HTTP",
                self.settings.http_listen,
                ALPN_HTTP,
                "http.sock",
                True,
                self.limits.max_pending,
            ),
        ):
            front = TlsFront(
                name,
                tls,
                alpn,
                self._run_dir / inner,
                self._run_dir,
                trusted_proxies=trusted,
                handshake_timeout=self.limits.timeout,
                max_pending=pending,
                max_connections=MAX_CONNECTIONS,
                http=http,
            )
            host, port = split_host_port(listen)
            try:
                front.listen(host, port)
            except OSError:
                raise OSError(f"cannot listen on {listen} ({name}): in use?") from None
            self._fronts.append(front)
        for front in self._fronts:
            front.start()

    async def _start_http(self) -> web.AppRunner:
        app = build_app(self.auth, self.db, self.health, metrics_registry(self._metric_values))
        app.middlewares.insert(0, source_middleware)
        # keepalive_timeout: an idle connection between requests; the guard: before the first.
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=30.0)
        await runner.setup()
        host, port = split_host_port(self.settings.http_listen)
        loop = asyncio.get_running_loop()
        try:
            assert runner.server is not None  # set up above
            factory = self.http_handshakes.wrap(runner.server)
            if self._run_dir is not None:  # behind the TLS front
                self._http_server = await loop.create_unix_server(
                    factory, str(self._run_dir / "http.sock")
                )
            else:
                self._http_server = await loop.create_server(factory, host, port)
        except OSError:
            await runner.cleanup()
            raise OSError(f"cannot listen on {self.settings.http_listen} (HTTP): in use?") from None
        return runner

    def health(self) -> dict[str, object]:
        return {
            "status": "ok",
            "agents_online": len(self.agents.online()),
            "sessions": len(self.tunnels),
            "events_committed": self.audit.committed,
        }

    def _metric_values(self) -> dict[str, float]:
        return {
            "events_committed": self.audit.committed,
            "commits": self.audit.commits,
            "commit_seconds": self.audit.commit_seconds,
            "queue_depth": self.audit.queue_depth,
            "result_failures": self.audit.result_failures,
            "invalid_events": self.audit.invalid_events,
            "witness_pushes": self.witnesses.pushes,
            "witness_failures": self.witnesses.failures,
            "sessions": len(self.tunnels),
            "sessions_total": self.tunnels.opened,
            "agents": len(self.agents.online()),
        }

    async def stop(self, grace: float = 5.0) -> None:
        self.audit.stop_followers()  # end StreamEvents now; followers resume elsewhere or later
        for front in self._fronts:
            front.stop_accepting()
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._http_server is not None:
            self._http_server.close()
            self._http_server = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        for front in self._fronts:
            await front.close()
        self._fronts.clear()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None
        if self.audit.running:
            await self.auth.failures.stop()  # aggregated auth.fail counts, before the writer ends
            await self.audit.close()
        await self.witnesses.close()
        if self.oidc is not None:
            await self.oidc.close()
        self.db.dispose()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then stop cleanly (queued audit events are committed)."""
    settings.validate()
    plane = ControlPlane(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
    except BaseException:
        await plane.stop(grace=0)
        raise
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await plane.stop()


def _login_config(oidc: OidcSettings | None) -> client_pb2.LoginConfig | None:
    """What the CLI needs to log in, from the same settings the control plane validates with."""
    if oidc is None:
        return None
    return client_pb2.LoginConfig(
        issuer=oidc.issuer,
        client_id=os.environ.get("GATEHOUSE_OIDC_CLIENT_ID", "gatehouse-cli"),
        groups_claim=oidc.groups_claim,
        resource=os.environ.get("GATEHOUSE_OIDC_RESOURCE", ""),
        scopes=os.environ.get("GATEHOUSE_OIDC_SCOPES", "").split(),
    )
