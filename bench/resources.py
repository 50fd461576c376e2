"""What several sections share, started once and only when a section asks for it: the scratch
directory, the target PostgreSQL cluster (with pgbench's tables) and the Gatehouse stack.

Everything started here is stopped by `close()`, also after a failure, so a run leaves no
processes behind.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from pathlib import Path

from bench.common import Endpoint, progress
from bench.gateway import Gateway, start_gateway
from bench.pgbench import find_pgbench, initialize
from devenv.postgres import PostgresServer, start_postgres

TARGET_USER = "app"
TARGET_DB = "app"


class Resources:
    def __init__(self, keep: bool = False) -> None:
        # Short and under /tmp: PostgreSQL's socket path must stay under 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="gh-bench-"))
        self.keep = keep
        self._password = secrets.token_urlsafe(16)
        self._pg: PostgresServer | None = None
        self._gateway: Gateway | None = None
        self._gateway_error: Exception | None = None
        self._scale: int | None = None

    def postgres(self) -> PostgresServer:
        """The target cluster (fsync off: read-only benchmarks need no durability)."""
        if self._pg is None:
            progress("starting the target PostgreSQL cluster")
            self._pg = start_postgres(
                self.base / "pg",
                roles={TARGET_USER: self._password},
                databases={TARGET_DB: TARGET_USER},
                log_statements=False,
            )
        return self._pg

    def target(self) -> Endpoint:
        pg = self.postgres()
        return Endpoint(pg.host, pg.port, TARGET_USER, TARGET_DB, self._password)

    def pgbench_tables(self, scale: int) -> None:
        """pgbench's tables at `scale`, made once per run."""
        if self._scale == scale:
            return
        progress(f"pgbench -i -s {scale}")
        initialize(find_pgbench(), self.target(), scale, self.base / "pgbench")
        self._scale = scale

    def gateway(self) -> Gateway:
        """The Gatehouse stack on the target; a failure to start is remembered, not retried."""
        if self._gateway_error is not None:
            raise self._gateway_error
        if self._gateway is None:
            progress("starting Gatehouse: control plane, agent, connect listeners")
            try:
                self._gateway = start_gateway(self.base / "gatehouse", self.target())
            except Exception as exc:
                self._gateway_error = exc
                raise
        return self._gateway

    def scratch(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        if self._gateway is not None:
            with contextlib.suppress(Exception):
                self._gateway.stop()
            self._gateway = None
        if self._pg is not None:
            with contextlib.suppress(Exception):
                self._pg.stop()
            self._pg = None
        if self.keep:
            progress(f"kept the scratch directory {self.base}")
        else:
            shutil.rmtree(self.base, ignore_errors=True)
