"""Start a throwaway MariaDB server from the installed Debian binaries.

The MySQL tests need a server they fully control (port, users and their password plugins, a
general query log to compare the audit trail against) without touching the machine's own
service on 3306. Everything lives under one ``base_dir``: ``data`` (``mariadb-install-db``),
``sock`` (root logs in there, by unix-socket identity), ``general.log`` (every command the
server received), ``error.log``, and a self-signed certificate so that TLS can be tested.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from devenv.processes import PortTaken, Service, free_port, stop_process, wait_ready

__all__ = ["LogEntry", "MariadbServer", "MariadbStartError", "start_mariadb"]

HOST = "127.0.0.1"
_PORT_ATTEMPTS = 5
# "<yymmdd hh:mm:ss>\t<id> <Command>\t<argument>": the time only on the first of its second.
_ENTRY_RE = re.compile(r"^(?:\d{6}\s+\d{1,2}:\d\d:\d\d)?\t\s*(\d+) ([A-Za-z ]+?)\t(.*)$")


class MariadbStartError(RuntimeError):
    """The throwaway server could not be created or started; the message says what to do."""


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One command the server logged: its connection id, kind (Query, Prepare, Execute,
    Connect, Init DB, Quit, ...) and text."""

    connection: int
    command: str
    text: str


@dataclass
class MariadbServer(Service):
    host: str
    port: int
    base_dir: Path
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.base_dir / "sock"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "general.log"

    @property
    def ca_file(self) -> Path:
        return self.base_dir / "server.pem"

    def admin(self, sql: str) -> str:
        """Run SQL as root over the unix socket, kept out of the general log; its output."""
        done = subprocess.run(
            [
                "mariadb",
                "--no-defaults",
                "-S",
                str(self.socket),
                "-uroot",
                "-N",
                "-B",
                "-e",
                "SET SESSION sql_log_off = 1; " + sql,
            ],
            capture_output=True,
            check=False,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise MariadbStartError(f"{sql!r} failed: {done.stderr.strip()}")
        return done.stdout

    def general_log(self) -> list[LogEntry]:
        """Every command logged so far, oldest first; a query's later lines joined to it."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        entries: list[LogEntry] = []
        for line in text.split("\n")[3:]:
            found = _ENTRY_RE.match(line)
            if found is not None:
                entries.append(LogEntry(int(found[1]), found[2], found[3]))
            elif entries and line:
                last = entries[-1]
                entries[-1] = LogEntry(last.connection, last.command, last.text + "\n" + line)
            elif entries and not line:
                last = entries[-1]
                entries[-1] = LogEntry(last.connection, last.command, last.text + "\n")
        # The split leaves a trailing newline on the last entry of a complete file.
        return [LogEntry(e.connection, e.command, e.text.removesuffix("\n")) for e in entries]

    def queries(self) -> list[str]:
        """The statements clients ran, as logged (Query, Execute), oldest first."""
        return [e.text for e in self.general_log() if e.command in ("Query", "Execute")]

    def stop(self) -> None:
        process = self._process
        if process is not None:
            stop_process(process, "mariadbd", [(signal.SIGTERM, 20), (signal.SIGKILL, 5)])
            self._process = None
        self._untrack()


def _certificate(base: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (base / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (base / "server.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def start_mariadb(
    base_dir: Path,
    *,
    users: Mapping[str, tuple[str, str]] = {},
    databases: tuple[str, ...] = (),
    timeout: float = 60,
) -> MariadbServer:
    """A running server; ``users``: name -> (password, plugin: "native" or "ed25519"), each
    granted everything on every database in ``databases``."""
    for binary in ("mariadb-install-db", "mariadbd", "mariadb"):
        if shutil.which(binary) is None and not Path("/usr/sbin", binary).exists():
            raise MariadbStartError(
                f"{binary} not found: install it with `apt-get install mariadb-server`"
            )
    base_dir.mkdir(parents=True, exist_ok=True)
    data = base_dir / "data"
    install = subprocess.run(
        [
            "mariadb-install-db",
            "--no-defaults",
            f"--datadir={data}",
            "--user=root",
            "--auth-root-authentication-method=socket",
            "--skip-test-db",
        ],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    if install.returncode != 0:
        raise MariadbStartError(f"mariadb-install-db failed: {install.stderr.strip()[-2000:]}")
    _certificate(base_dir)
    for _attempt in range(_PORT_ATTEMPTS):
        server = MariadbServer(HOST, free_port(), base_dir)
        try:
            _run(server, timeout)
        except PortTaken:
            continue
        break
    else:
        raise MariadbStartError(f"no free port after {_PORT_ATTEMPTS} attempts")
    statements = []
    for name in databases:
        statements.append(f"CREATE DATABASE `{name}`")
    for user, (password, plugin) in users.items():
        if plugin == "ed25519":
            how = f"IDENTIFIED VIA ed25519 USING PASSWORD('{password}')"
        else:
            how = f"IDENTIFIED BY '{password}'"
        statements.append(f"CREATE USER '{user}'@'%' {how}")
        statements.append(f"GRANT ALL ON *.* TO '{user}'@'%'")
    if statements:
        server.admin("; ".join(statements))
    return server


def _run(server: MariadbServer, timeout: float) -> None:
    base = server.base_dir
    error_log = base / "error.log"
    offset = error_log.stat().st_size if error_log.exists() else 0
    mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
    process = subprocess.Popen(
        [
            mariadbd,
            "--no-defaults",
            f"--datadir={base / 'data'}",
            "--user=root",
            f"--socket={server.socket}",
            f"--port={server.port}",
            f"--bind-address={HOST}",
            "--general-log=1",
            f"--general-log-file={server.log_file}",
            f"--log-error={error_log}",
            f"--pid-file={base / 'mariadbd.pid'}",
            "--plugin-load-add=auth_ed25519",
            "--skip-name-resolve",
            f"--ssl-cert={base / 'server.pem'}",
            f"--ssl-key={base / 'server.key'}",
            "--innodb-buffer-pool-size=32M",
            "--max-connections=300",
            "--max-allowed-packet=256M",
            "--skip-log-bin",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TZ": "UTC"},
    )
    server._process = process
    server._track()

    def probe() -> str | None:
        done = subprocess.run(
            ["mariadb", "--no-defaults", "-S", str(server.socket), "-uroot", "-e", "SELECT 1"],
            capture_output=True,
            check=False,
            text=True,
            timeout=10,
        )
        return None if done.returncode == 0 else done.stderr.strip() or "not ready"

    try:
        wait_ready(
            process,
            probe,
            name="mariadbd",
            log_file=error_log,
            offset=offset,
            timeout=timeout,
            port_taken="Address already in use",
            error=MariadbStartError,
        )
    except BaseException:
        server.stop()
        raise
