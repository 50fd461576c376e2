"""Wiring and lifecycle of one control-plane process: store, audit writer, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import logging
import shutil
import signal
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from controlplane.addresses import split_host_port
from controlplane.admin import AdminServicer
from controlplane.agents.certificates import AgentCertificates
from controlplane.agents.leg import LegListener, LegServer
from controlplane.agents.registry import AgentRegistry
from controlplane.agents.service import AgentServicer
from controlplane.audit.checkpoints import KEY_FILE_NAME, load_signing_key
from controlplane.audit.resume import witnessed_floor
from controlplane.audit.service import AuditServicer
from controlplane.audit.witness import WitnessPublisher
from controlplane.audit.writer import AuditWriter
from controlplane.auth.failures import AuthFailures
from controlplane.auth.oidc import OidcSettings, OidcValidator
from controlplane.auth.sources import SourceInterceptor, source_middleware
from controlplane.auth.tokens import TokenAuthenticator
from controlplane.handshakes import (
    MAX_CONNECTIONS,
    HandshakeGuard,
    HandshakeLimits,
    grpc_options,
)
from controlplane.http.api import build_app
from controlplane.http.metrics import Metrics
from controlplane.policy.store import PolicyStore
from controlplane.relay.mysql.listen import MysqlListener
from controlplane.relay.native import NativeListener
from controlplane.relay.pg.listen import PgListener
from controlplane.relay.service import ClientServicer
from controlplane.relay.tunnel import Tunnels
from controlplane.replicas import Replicas, SqliteReplicaLock, default_advertise
from controlplane.sessions import SessionServicer
from controlplane.settings import Settings
from controlplane.store.database import Database, default_url
from controlplane.tls import proxy
from controlplane.tls.front import TlsFront
from controlplane.tls.peers import peer_certificate
from controlplane.tls.server import ALPN_GRPC, ALPN_HTTP, ServerTls
from gatehouse.v1 import (
    admin_pb2_grpc,
    agent_pb2_grpc,
    audit_pb2_grpc,
    client_pb2,
    client_pb2_grpc,
    sessions_pb2_grpc,
)
from wire.frames import ALPN as LEG_ALPN

log = logging.getLogger(__name__)

MAX_MESSAGE = 16 * 1024 * 1024
READY_TIMEOUT = 3.0  # a store that takes longer to answer `SELECT` is not ready
READY_CACHE = 1.0  # seconds a finished store probe answers readiness checks
HEALTH_INTERVAL = 5.0  # how often the gRPC health status follows readiness
GRPC_PENDING_HANDSHAKES = 4096  # TLS handshakes at once on the gRPC listener, at least


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
        oidc = _oidc_settings(settings)
        self.oidc_settings = oidc
        self.oidc = OidcValidator(oidc) if oidc is not None else None
        self.auth = TokenAuthenticator(
            self.db,
            self.audit,
            self.oidc,
            admin_groups=frozenset(settings.admin_groups),
            failures=AuthFailures(
                self.audit,
                window=settings.auth_fail_window,
                limit=settings.auth_fail_limit,
                max_sources=settings.auth_fail_sources,
            ),
            login_max_age=timedelta(seconds=settings.delegation_login_max_age),
        )
        self.agents = AgentRegistry(self.db, self.audit)
        # PostgreSQL: one of several replicas (ADR 0023); SQLite: the only one, enforced.
        self.replicas: Replicas | None = None
        self.sqlite_lock = SqliteReplicaLock(self.db) if self.db.is_sqlite else None
        self.policy = PolicyStore(self.db, self.audit)
        self.tunnels = Tunnels()
        self.limits = HandshakeLimits(settings.handshake_timeout, settings.max_pending_handshakes)
        self.http_handshakes = HandshakeGuard(self.limits)
        self.metrics = Metrics(self._metric_values)
        self.audit.on_commit = self.metrics.commit_latency.observe
        self.tunnels.on_close = self.metrics.session_duration.observe
        # grpc-stubs 1.53 predates `health.aio`, the asyncio servicer the package ships.
        self.grpc_health: Any = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self._health_task: asyncio.Task[None] | None = None
        self._store_probe: asyncio.Future[tuple[str | None, str | None]] | None = None
        self._store_probe_at = 0.0
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None
        self._http_server: asyncio.Server | None = None
        self.tls: ServerTls | None = None
        self._fronts: list[TlsFront] = []
        self.listeners: list[NativeListener] = []  # --pg-listen, --mysql-listen
        # The agents' session legs (decision 0035): on the gRPC port's TLS front, or with
        # --dev on a plaintext loopback listener of their own.
        self.legs = LegServer(self.agents, self.tunnels, self.auth.failures)
        self._leg_listener: LegListener | None = None
        self._run_dir: Path | None = None

    async def start(self) -> None:
        settings = self.settings
        settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.sqlite_lock is not None:
            self.sqlite_lock.acquire()
        await asyncio.to_thread(self.db.migrate)
        signer = await asyncio.to_thread(
            load_signing_key, settings.data_dir / KEY_FILE_NAME, settings.audit_key_file
        )
        floor = await witnessed_floor(self.db, settings.witnesses, signer)
        if floor is not None:
            self.audit.resume_above(floor)
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
                    *([split_host_port(settings.pg_listen)[0]] if settings.pg_listen else []),
                    *([split_host_port(settings.mysql_listen)[0]] if settings.mysql_listen else []),
                    *([split_host_port(settings.advertise)[0]] if settings.advertise else []),
                ],
            )
            self.agents.certificates = AgentCertificates(
                self.tls.ca,
                settings.agent_cert_lifetime,
                # Tokens pin our CA only when it signs what the listeners serve; with an
                # operator certificate agents use the system's CAs or their --ca-file.
                pin=self.tls.ca.pin if self.tls.self_issued else None,
                peer_certificate=peer_certificate,
            )
            # The inner servers' sockets: private to this process's user, short enough for
            # sun_path (a data dir can be deep), gone at stop.
            self._run_dir = Path(tempfile.mkdtemp(prefix="gatehouse-"))
        if not self.db.is_sqlite:
            advertise = settings.advertise or default_advertise(
                settings.grpc_listen, settings.public_addr
            )
            self.replicas = Replicas(self.db, self.agents, self.policy, self.audit, advertise)
            await self.replicas.start()
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
                heartbeat_interval=settings.heartbeat_interval,
                failures=self.auth.failures,
            ),
            server,
        )
        sessions = ClientServicer(
            self.auth,
            self.policy,
            self.agents,
            self.tunnels,
            self.audit,
            self.db,
            login=_login_config(self.oidc_settings, settings),
        )
        client_pb2_grpc.add_ClientServiceServicer_to_server(sessions, server)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.auth, self.agents, self.policy, self.replicas), server
        )
        sessions_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.auth, self.db), server
        )
        audit_pb2_grpc.add_AuditServiceServicer_to_server(
            AuditServicer(self.auth, self.db, self.audit, min_retention=settings.min_retention),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.grpc_health, server)
        self._grpc = server
        inner = settings.grpc_listen if self._run_dir is None else f"unix:{self._run_dir}/grpc.sock"
        try:
            server.add_insecure_port(inner)
        except RuntimeError:
            raise OSError(f"cannot listen on {settings.grpc_listen} (gRPC): in use?") from None
        await server.start()
        self._http = await self._start_http(sessions)
        if self.tls is not None:
            self._start_fronts(self.tls)
        else:
            self._start_leg_listener()
        for kind, listen, limit, name in (
            (PgListener, settings.pg_listen, settings.pg_listen_max_connections, "PostgreSQL"),
            (MysqlListener, settings.mysql_listen, settings.mysql_listen_max_connections, "MySQL"),
        ):
            if listen:
                self._start_listener(kind, sessions, listen, limit, name)
        await self._follow_readiness()
        self._health_task = asyncio.create_task(self._health_loop(), name="grpc-health")
        log.info(
            "control plane listening: gRPC %s, HTTP %s%s%s (%s), store %s",
            settings.grpc_listen,
            settings.http_listen,
            f", PostgreSQL {settings.pg_listen}" if settings.pg_listen else "",
            f", MySQL {settings.mysql_listen}" if settings.mysql_listen else "",
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
                leg=None if http else (LEG_ALPN, self.legs.serve),
            )
            host, port = split_host_port(listen)
            try:
                front.listen(host, port)
            except OSError:
                raise OSError(f"cannot listen on {listen} ({name}): in use?") from None
            self._fronts.append(front)
        for front in self._fronts:
            front.start()

    def _start_leg_listener(self) -> None:
        """--dev: session legs on the gRPC listener's loopback host, any free port; every
        session order for this replica's clients names it (OpenSession.leg)."""
        host = split_host_port(self.settings.grpc_listen)[0]
        listener = LegListener(self.legs)
        try:
            listener.listen(host, 0)
        except OSError as exc:
            raise OSError(f"cannot listen on {host} (session legs): {exc}") from None
        listener.start()
        self._leg_listener = listener
        self.agents.leg_address = (
            f"[{host}]:{listener.port}" if ":" in host else (f"{host}:{listener.port}")
        )

    def _start_listener(
        self,
        kind: type[NativeListener],
        sessions: ClientServicer,
        listen: str,
        max_connections: int,
        name: str,
    ) -> None:
        """Native database clients, on the same session path as the gRPC ClientService."""
        listener = kind(
            sessions,
            self.auth,
            self.tls,
            trusted_proxies=proxy.parse_networks(self.settings.trusted_proxies),
            handshake_timeout=self.limits.timeout,
            max_pending=self.limits.max_pending,
            max_connections=max_connections,
        )
        host, port = split_host_port(listen)
        try:
            listener.listen(host, port)
        except OSError:
            raise OSError(f"cannot listen on {listen} ({name}): in use?") from None
        listener.start()
        self.listeners.append(listener)

    async def _start_http(self, sessions: ClientServicer) -> web.AppRunner:
        from controlplane.http.mcp import McpEndpoint
        from gatehouse import __version__

        app = build_app(
            self.auth, self.db, self.health, self.metrics.exposition, ready=self.readiness
        )
        app.middlewares.insert(0, source_middleware)
        issuer = self.oidc_settings.issuer if self.oidc_settings is not None else None
        McpEndpoint(sessions, self.auth, issuer, not self.settings.dev, __version__).mount(app)
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
            "replica": self.agents.replica_id,
            "agents_online": len(self.agents.online()),
            "sessions": len(self.tunnels),
            "events_committed": self.audit.committed,
        }

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether this process can serve now, and each check's finding (never a secret)."""
        checks: dict[str, str] = {}
        # One probe of the store at a time, and at most one a second: a hung store must not
        # pile up blocked threads, and /readyz (no token needed) must not become a way to
        # load the store. Probes come from /readyz callers and the gRPC health loop alike.
        now = asyncio.get_running_loop().time()
        probe = self._store_probe
        if probe is None or (probe.done() and now - self._store_probe_at >= READY_CACHE):
            self._store_probe_at = now
            probe = asyncio.ensure_future(asyncio.to_thread(self.db.schema_revisions))
            # Its error is read here when awaited, or dropped once nobody waits for it.
            probe.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._store_probe = probe
        try:
            current, head = await asyncio.wait_for(asyncio.shield(probe), READY_TIMEOUT)
        except TimeoutError:
            checks["store"] = f"no answer within {READY_TIMEOUT:g} s"
        except Exception as exc:  # the driver's error: unreachable, refused, gone
            checks["store"] = f"unreachable: {type(exc).__name__}"
        else:
            checks["store"] = "ok"
            checks["migrations"] = (
                "ok" if current == head else f"store at {current}, this code needs {head}"
            )
        checks["audit_writer"] = "ok" if self.audit.alive else "not running"
        return all(v == "ok" for v in checks.values()), checks

    async def _follow_readiness(self) -> None:
        """The gRPC health status (overall and per service) follows `readiness`."""
        ok, _ = await self.readiness()
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ok
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for service in ("", *_services()):
            await self.grpc_health.set(service, status)

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            try:
                await self._follow_readiness()
            except Exception:  # a health probe must never stop the process
                log.exception("readiness check failed")

    def _metric_values(self) -> dict[str, float]:
        return {
            "events_committed": self.audit.committed,
            "commits": self.audit.commits,
            "durable_commits": self.audit.durable_commits,
            "syncs": self.audit.syncs,
            "recovered_events": self.audit.recovered,
            "commit_seconds": self.audit.commit_seconds,
            "queue_depth": self.audit.queue_depth,
            "result_failures": self.audit.result_failures,
            "invalid_events": self.audit.invalid_events,
            "witness_pushes": self.witnesses.pushes,
            "witness_failures": self.witnesses.failures,
            "sessions": len(self.tunnels),
            "sessions_total": self.tunnels.opened,
            "agents": len(self.agents.online()),
            **{k: v for listener in self.listeners for k, v in listener.counters().items()},
        }

    async def stop(self, grace: float = 5.0) -> None:
        self.audit.stop_followers()  # end StreamEvents now; followers resume elsewhere or later
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)
            self._health_task = None
        await self.grpc_health.enter_graceful_shutdown()  # NOT_SERVING while draining
        if self.replicas is not None:  # the others stop routing sessions through us
            await self.replicas.stop()
            self.replicas = None
        for front in self._fronts:
            front.stop_accepting()
        if self._leg_listener is not None:
            self._leg_listener.stop_accepting()
        for listener in self.listeners:
            listener.stop_accepting()
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
        if self._leg_listener is not None:
            await self._leg_listener.close()  # the agents' sessions end as agent_lost
            self._leg_listener = None
        for listener in self.listeners:
            await listener.close()  # each session records its end
        self.listeners.clear()
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
        if self.sqlite_lock is not None:
            self.sqlite_lock.release()


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


def _services() -> list[str]:
    """The full names of the gRPC services this process serves, for the health service."""
    from gatehouse.v1 import admin_pb2, agent_pb2, audit_pb2, sessions_pb2

    modules = (agent_pb2, client_pb2, admin_pb2, sessions_pb2, audit_pb2)
    return [s.full_name for m in modules for s in m.DESCRIPTOR.services_by_name.values()]


def _oidc_settings(settings: Settings) -> OidcSettings | None:
    """None when no issuer is configured: the control plane then accepts only its own tokens."""
    if not settings.oidc_issuer.strip():
        return None
    return OidcSettings(
        issuer=settings.oidc_issuer.strip(),
        audience=settings.oidc_audience,
        groups_claim=settings.oidc_groups_claim.strip() or "groups",
        leeway=settings.oidc_leeway,
    )


def _login_config(oidc: OidcSettings | None, settings: Settings) -> client_pb2.LoginConfig | None:
    """What the CLI needs to log in, from the same settings the control plane validates with."""
    if oidc is None:
        return None
    return client_pb2.LoginConfig(
        issuer=oidc.issuer,
        client_id=settings.oidc_client_id,
        groups_claim=oidc.groups_claim,
        resource=settings.oidc_resource,
        scopes=settings.oidc_scopes.split(),
    )
