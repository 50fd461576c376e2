"""PgBouncer, the pooling baseline: started from its binary with a throwaway ini, never as a
system service, so the run controls it fully and leaves nothing behind.

Session pooling is the mode comparable to Gatehouse (one server connection per client
session). PgBouncer refuses to run as root, so as root it runs as the same unprivileged user
as the throwaway PostgreSQL cluster (devenv.postgres decides which).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import Endpoint, tail
from devenv.postgres import chown_to, grant_search, popen_identity, server_account
from devenv.processes import free_port, stop_process

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


class PgBouncerError(RuntimeError):
    """PgBouncer is missing or did not start; the message carries its log."""


@dataclass
class PgBouncer:
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path
    upstream: Endpoint

    @property
    def pid(self) -> int:
        return self.process.pid

    def endpoint(self) -> Endpoint:
        """Clients log in to PgBouncer with the same name, database and password."""
        return Endpoint(
            "127.0.0.1", self.port, self.upstream.user, self.upstream.dbname, self.upstream.password
        )

    def stop(self) -> None:
        stop_process(self.process, "pgbouncer", ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)))


def find_pgbouncer() -> Path:
    found = shutil.which("pgbouncer") or next((c for c in CANDIDATES if Path(c).is_file()), None)
    if found is None:
        raise PgBouncerError("pgbouncer not found: install it with `make system-deps`")
    return Path(found)


def _quote(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def config(base_dir: Path, upstream: Endpoint, port: int, pool_size: int = 20) -> str:
    """The ini: one database, session pooling, SCRAM with the plaintext password in the
    auth file (so PgBouncer can also log in to the server with SCRAM)."""
    return (
        "[databases]\n"
        f"{upstream.dbname} = host={upstream.host} port={upstream.port} "
        f"dbname={upstream.dbname}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = scram-sha-256\n"
        f"auth_file = {base_dir / 'userlist.txt'}\n"
        "pool_mode = session\n"
        "max_client_conn = 200\n"
        f"default_pool_size = {pool_size}\n"
        f"logfile = {base_dir / 'pgbouncer.log'}\n"
        f"pidfile = {base_dir / 'pgbouncer.pid'}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        # pgbench sends none, but psql and drivers do: they must not fail the login.
        "ignore_startup_parameters = extra_float_digits,options\n"
    )


def start_pgbouncer(base_dir: Path, upstream: Endpoint, timeout: float = 20) -> PgBouncer:
    """Write the ini and auth file under `base_dir`, start PgBouncer, wait until it listens."""
    if upstream.password is None:
        raise PgBouncerError("PgBouncer needs the upstream user's password")
    binary = find_pgbouncer()
    account = server_account()
    base_dir.mkdir(parents=True, exist_ok=True)
    chown_to(base_dir, account)
    if account is not None:
        grant_search(base_dir, account)
    port = free_port()
    ini, users = base_dir / "pgbouncer.ini", base_dir / "userlist.txt"
    ini.write_text(config(base_dir, upstream, port))
    users.write_text(f"{_quote(upstream.user)} {_quote(upstream.password)}\n")
    users.chmod(0o600)
    for path in (ini, users):
        chown_to(path, account)
    log_file = base_dir / "pgbouncer.log"
    with (base_dir / "stdout.log").open("ab") as out:
        process = subprocess.Popen(
            [str(binary), str(ini)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=base_dir,
            start_new_session=True,
            **popen_identity(account),
        )
    bouncer = PgBouncer(port, process, log_file, upstream)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return bouncer
        time.sleep(0.05)
    bouncer.stop()
    logs = "".join(
        p.read_text(errors="replace") for p in (log_file, base_dir / "stdout.log") if p.exists()
    )
    raise PgBouncerError(f"pgbouncer did not start:\n{tail(logs)}")
