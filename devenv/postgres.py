"""Start a throwaway PostgreSQL cluster from the installed server binaries.

Tests, ``make demo`` and benchmarks need a real server they fully control (port, roles, a
statement log to compare the audit trail against) without assuming that a system service is
running, and without touching one that is. Everything lives under one ``base_dir``:

* ``base_dir/data``          the cluster (initdb), owned by the user the server runs as;
* ``base_dir/sock``          the unix socket directory (the superuser logs in here, trusted);
* ``base_dir/postgres.log``  the server's stderr: every statement when ``log_statements``.

PostgreSQL refuses to run as root, so when the effective uid is 0 the binaries run as the
``postgres`` system user (``subprocess.Popen(user=...)``: no PAM, no ``runuser`` binary, no
``preexec_fn``), and ``base_dir`` and its ancestors are given search permission (``o+x``) where
that user could not reach them otherwise (pytest's ``tmp_path`` is ``0700 root``).
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

__all__ = [
    "BINDIR_ENV",
    "PostgresNotFound",
    "PostgresServer",
    "PostgresStartError",
    "find_pg_bindir",
    "parse_statement_log",
    "start_postgres",
]

from devenv.processes import PortTaken, Service, free_port, stop_process, tail, wait_ready

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
SUPERUSER = "postgres"
#: The unprivileged system user the server runs as when we are root.
SYSTEM_USER = "postgres"
#: Overrides the binary search (for non-Debian machines): a directory holding initdb and postgres.
BINDIR_ENV = "GATEHOUSE_PG_BINDIR"

_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_INSTALL_HINT = (
    "install the server binaries with `apt-get install postgresql` "
    f"(or point {BINDIR_ENV} at a directory holding initdb and postgres)"
)
_ENCRYPTIONS = ("scram-sha-256", "md5")
_SOCKET_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_PORT_ATTEMPTS = 5
_EMPTY: Mapping[str, str] = MappingProxyType({})

# log_line_prefix is pinned so the parser never has to guess where a message starts.
_LOG_LINE_PREFIX = "%m [%p] "
_ENTRY_RE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \S+ \[\d+\] "  # %m [%p]
    r"(?P<severity>[A-Z][A-Z0-9]*):  (?P<msg>.*)$"
)
# "statement: ..." (simple protocol) or "execute <name>: ..." (extended protocol). Repeated
# portal fetches ("execute fetch from ...") are the same statement again, so they are skipped.
_STATEMENT_RE = re.compile(r"(?:statement|execute (?!fetch from )[^:\n]*): (?P<text>.*)", re.DOTALL)


class PostgresStartError(RuntimeError):
    """The throwaway cluster could not be created or started; the message says what to do."""


class PostgresNotFound(PostgresStartError):
    """No PostgreSQL server binaries on this machine."""


@dataclass
class PostgresServer(Service):
    """A running throwaway cluster; ``stop()`` (or leaving the ``with`` block) shuts it down."""

    host: str
    port: int
    data_dir: Path
    log_file: Path
    superuser: str = SUPERUSER
    #: Where the unix socket lives; the superuser can only log in there (see ``admin_dsn``).
    socket_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def dsn(
        self, user: str | None = None, password: str | None = None, database: str = "postgres"
    ) -> str:
        """A libpq URI over TCP, the way clients (and the gateway) reach the server."""
        userinfo = quote(self.superuser if user is None else user, safe="")
        if password is not None:
            userinfo += ":" + quote(password, safe="")
        return f"postgresql://{userinfo}@{self.host}:{self.port}/{quote(database, safe='')}"

    def admin_dsn(self, database: str = "postgres", *, logged: bool = False) -> str:
        """A libpq URI for the superuser over the unix socket (it has no password, TCP fails).

        Its statements stay out of ``statement_log()`` unless ``logged``, so test setup does not
        disturb assertions about what clients ran.
        """
        if self.socket_dir is None:
            raise PostgresStartError("this server has no known unix socket directory")
        uri = (
            f"postgresql://{quote(self.superuser, safe='')}@/{quote(database, safe='')}"
            f"?host={quote(str(self.socket_dir), safe='')}&port={self.port}"
        )
        return uri if logged else uri + "&options=" + quote("-c log_statement=none", safe="")

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while running, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def statement_log(self) -> list[str]:
        """Statements the server logged so far, oldest first (needs ``log_statements=True``)."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        return parse_statement_log(text)

    def wait_for_statement(self, text: str, timeout: float = 5.0) -> int:
        """How often ``text`` was logged, polling until it shows up at least once or ``timeout``.

        Statements compare equal after stripping surrounding whitespace. PostgreSQL writes the
        log line before running the statement, so this normally returns on the first read.
        """
        wanted = text.strip()
        deadline = time.monotonic() + timeout
        while True:
            count = sum(1 for statement in self.statement_log() if statement.strip() == wanted)
            if count or time.monotonic() >= deadline:
                return count
            time.sleep(0.02)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), escalating if the server hangs; idempotent, removes nothing."""
        process, self._process = self._process, None
        self._untrack()
        if process is None:
            return
        stop_process(
            process,
            "postgres",
            ((signal.SIGINT, 30.0), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)),
        )

    def _admin_params(self) -> dict[str, Any]:
        """Connection keywords for setup: socket, trusted superuser, and kept out of the log."""
        return {
            "host": str(self.socket_dir),
            "port": self.port,
            "user": self.superuser,
            "dbname": "postgres",
            "sslmode": "disable",
            "connect_timeout": 5,
            # Setup statements would otherwise pollute statement_log() (and log passwords).
            "options": "-c log_statement=none",
        }


def parse_statement_log(text: str) -> list[str]:
    """Statements in a server log, in order: ``LOG:  statement:`` and ``LOG:  execute ...:``.

    Multi-line statements come back joined with newlines (the server continues them on lines
    starting with a tab); lines that are not part of a log entry are ignored.
    """
    statements = []
    for severity, message in _log_entries(text):
        if severity == "LOG" and (match := _STATEMENT_RE.fullmatch(message)):
            statements.append(match["text"])
    return statements


def _log_entries(text: str) -> Iterator[tuple[str, str]]:
    """(severity, message) for each entry; continuation lines are tab-prefixed by the server."""
    severity: str | None = None
    lines: list[str] = []
    for line in text.split("\n"):
        if severity is not None and line.startswith("\t"):
            lines.append(line[1:])
            continue
        if severity is not None:
            yield severity, "\n".join(lines)
            severity = None
        if match := _ENTRY_RE.match(line):
            severity, lines = match["severity"], [match["msg"]]
    if severity is not None:
        yield severity, "\n".join(lines)


def find_pg_bindir() -> Path:
    """The newest installed server bindir: Debian's layout, then pg_config, then PATH."""
    override = os.environ.get(BINDIR_ENV)
    if override:
        if _is_server_bindir(Path(override)):
            return Path(override)
        raise PostgresNotFound(
            f"{BINDIR_ENV}={override} holds no initdb and postgres; {_INSTALL_HINT}"
        )
    debian = [d for d in _DEBIAN_ROOT.glob("*/bin") if _is_server_bindir(d)]
    if debian:
        return max(debian, key=_version_key)
    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            pass
        else:
            # libpq-dev ships pg_config without the server, so the answer must be checked.
            bindir = Path(result.stdout.strip())
            if result.stdout.strip() and _is_server_bindir(bindir):
                return bindir
    initdb = shutil.which("initdb")
    if initdb:
        bindir = Path(initdb).resolve().parent
        if _is_server_bindir(bindir):
            return bindir
    raise PostgresNotFound(
        f"PostgreSQL server binaries (initdb, postgres) not found in {_DEBIAN_ROOT}/*/bin, "
        f"`pg_config --bindir` or PATH; {_INSTALL_HINT}"
    )


def _is_server_bindir(path: Path) -> bool:
    return all(
        (path / name).is_file() and os.access(path / name, os.X_OK)
        for name in ("initdb", "postgres")
    )


def _version_key(bindir: Path) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin -> (15,); 9.6 -> (9, 6); unparsable sorts first."""
    parts = bindir.parent.name.split(".")
    return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else (-1,)


@dataclass(frozen=True)
class ServerAccount:
    """The unprivileged user the server runs as when we are root."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str


def server_account() -> ServerAccount | None:
    """None when we can run the server as ourselves; the ``postgres`` user when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresStartError(
            f"running as root, which PostgreSQL refuses, and there is no {SYSTEM_USER!r} system "
            f"user to run it as: create it (`adduser --system --group {SYSTEM_USER}`, which "
            "`apt-get install postgresql` does) or run as a non-root user"
        ) from None
    groups = tuple(os.getgrouplist(SYSTEM_USER, entry.pw_gid))
    return ServerAccount(SYSTEM_USER, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def _can_search(st: os.stat_result, account: ServerAccount) -> bool:
    """POSIX permission check for another user: only the matching class's bits count."""
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in account.groups:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def grant_search(path: Path, account: ServerAccount) -> None:
    """Let ``account`` reach ``path`` (search only, no listing): the server chdirs into it."""
    for directory in [*reversed(path.parents), path]:
        st = directory.stat()
        if not _can_search(st, account):
            log.info("granting o+x on %s so %s can reach %s", directory, account.name, path)
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def chown_to(path: Path, account: ServerAccount | None) -> None:
    if account is not None:
        os.chown(path, account.uid, account.gid)


def _write(path: Path, text: str, account: ServerAccount | None) -> None:
    path.write_text(text, encoding="utf-8")
    chown_to(path, account)


def _child_env(account: ServerAccount | None) -> dict[str, str]:
    """The caller's PG* variables must not redirect initdb/postgres; messages stay English."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name)
    return env


def popen_identity(account: ServerAccount | None) -> dict[str, Any]:
    """Popen keywords that drop to ``account``, supplementary groups included (not root's)."""
    if account is None:
        return {}
    return {"user": account.uid, "group": account.gid, "extra_groups": list(account.groups)}


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _server_config(
    port: int, socket_dir: Path, encryption: str, log_statements: bool, listen: Sequence[str] = ()
) -> str:
    settings: dict[str, str | int] = {
        "listen_addresses": ",".join([HOST, *listen]),
        "port": port,
        "unix_socket_directories": str(socket_dir),
        "max_connections": 200,
        "password_encryption": encryption,
        # Throwaway data: durability only costs time.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        # stderr goes straight to log_file, written before each statement runs: immediate.
        "logging_collector": "off",
        "log_destination": "stderr",
        "log_statement": "all" if log_statements else "none",
        "log_line_prefix": _LOG_LINE_PREFIX,
        "log_timezone": "UTC",
        "lc_messages": "C",
    }
    body = "".join(f"{key} = {_conf_value(value)}\n" for key, value in settings.items())
    return "# Written by devenv.postgres on every start.\n" + body


def _pg_hba(encryption: str, samenet: bool = False) -> str:
    return (
        "# Written by devenv.postgres: the superuser is trusted on the private unix socket only;\n"
        "# everyone else, and every TCP connection, needs a password.\n"
        f"local  all  {SUPERUSER}                 trust\n"
        f"local  all  all                       {encryption}\n"
        f"host   all  all       127.0.0.1/32    {encryption}\n"
        f"host   all  all       ::1/128         {encryption}\n"
        + (f"host   all  all       samenet         {encryption}\n" if samenet else "")
    )


def start_postgres(
    base_dir: Path,
    *,
    port: int | None = None,
    roles: Mapping[str, str] = _EMPTY,
    databases: Mapping[str, str] = _EMPTY,
    password_encryption: str = "scram-sha-256",
    auth_method: str | None = None,
    tls: tuple[Path, Path] | None = None,
    log_statements: bool = True,
    ready_timeout: float = 30.0,
    listen: Sequence[str] = (),
) -> PostgresServer:
    """initdb a fresh cluster under ``base_dir``, start it, and create ``roles`` and ``databases``.

    ``roles`` maps role name to password (LOGIN, stored with ``password_encryption``);
    ``databases`` maps database name to owner role. ``port=None`` picks a free port (and retries
    with another if it is taken meanwhile). ``base_dir`` must not already hold a cluster.
    ``auth_method`` is what pg_hba asks TCP clients for (default: ``password_encryption``;
    ``password`` for cleartext); ``tls`` is (certificate, key) to serve TLS with. ``listen``
    adds addresses to listen on besides loopback (a store other network namespaces reach);
    clients from the networks of those addresses (``samenet``) log in with a password too.
    """
    if password_encryption not in _ENCRYPTIONS:
        raise ValueError(
            f"password_encryption must be one of {_ENCRYPTIONS}, not {password_encryption!r}"
        )
    bindir = find_pg_bindir()
    account = server_account()
    base_dir = Path(base_dir).resolve()
    data_dir, socket_dir, log_file = base_dir / "data", base_dir / "sock", base_dir / "postgres.log"
    socket_len = len(os.fsencode(socket_dir / ".s.PGSQL.65535"))
    if socket_len > _SOCKET_PATH_MAX:
        raise PostgresStartError(
            f"the unix socket path under {socket_dir} would be {socket_len} bytes, over the "
            f"{_SOCKET_PATH_MAX}-byte limit: use a shorter base_dir"
        )
    _prepare_dirs(base_dir, data_dir, socket_dir, log_file, account)
    _initdb(bindir, data_dir, base_dir, account)
    _write(
        data_dir / "pg_hba.conf", _pg_hba(auth_method or password_encryption, bool(listen)), account
    )
    tls_settings: dict[str, str | int] = {}
    if tls is not None:
        for source, name in zip(tls, ("server.crt", "server.key"), strict=True):
            _write(data_dir / name, Path(source).read_text(), account)
        (data_dir / "server.key").chmod(0o600)
        tls_settings = {"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"}
    with (data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
        conf.write("\ninclude 'devenv.conf'\n")

    attempts = 1 if port is not None else _PORT_ATTEMPTS
    for _ in range(attempts):
        chosen = port if port is not None else free_port()
        config = _server_config(chosen, socket_dir, password_encryption, log_statements, listen)
        config += "".join(f"{k} = {_conf_value(v)}\n" for k, v in tls_settings.items())
        _write(data_dir / "devenv.conf", config, account)
        server = PostgresServer(HOST, chosen, data_dir, log_file, SUPERUSER, socket_dir)
        try:
            if _launch(server, bindir, account, ready_timeout, may_retry=port is None):
                _provision(server, roles, databases)
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()
        log.info("port %d was taken before postgres could bind it; trying another", chosen)
    raise PostgresStartError(
        f"no free port found after {attempts} attempts; pass port= explicitly\n"
        f"--- {log_file} ---\n{tail(log_file)}"
    )


def _prepare_dirs(
    base_dir: Path, data_dir: Path, socket_dir: Path, log_file: Path, account: ServerAccount | None
) -> None:
    try:
        base_dir.mkdir(parents=True, exist_ok=True)
        if data_dir.exists() and any(data_dir.iterdir()):
            raise PostgresStartError(
                f"{data_dir} is not empty: start_postgres needs a fresh base_dir "
                "(remove the old one or pass another)"
            )
        for directory in (data_dir, socket_dir):
            directory.mkdir(mode=0o700, exist_ok=True)
            chown_to(directory, account)
        log_file.touch()
        chown_to(log_file, account)
        if account is not None:
            grant_search(base_dir, account)
    except OSError as exc:
        raise PostgresStartError(f"cannot prepare {base_dir}: {exc}") from exc


def _initdb(bindir: Path, data_dir: Path, base_dir: Path, account: ServerAccount | None) -> None:
    command = [
        str(bindir / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        SUPERUSER,
        "--auth-local=trust",
        "--auth-host=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]
    try:
        result = subprocess.run(
            command,
            cwd=base_dir,
            env=_child_env(account),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
            **popen_identity(account),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresStartError(f"could not run {command[0]}: {exc}") from exc
    if result.returncode != 0:
        output = result.stdout.decode("utf-8", errors="replace").strip()
        who = account.name if account is not None else "the current user"
        raise PostgresStartError(
            f"initdb failed with status {result.returncode} (is {data_dir} writable by {who}?):\n"
            f"{output}"
        )


def _launch(
    server: PostgresServer,
    bindir: Path,
    account: ServerAccount | None,
    timeout: float,
    *,
    may_retry: bool,
) -> bool:
    """Start the postmaster and wait until it accepts connections.

    Returns False when the (auto-picked) port turned out to be taken, so the caller can retry.
    """
    offset = server.log_file.stat().st_size
    command = [str(bindir / "postgres"), "-D", str(server.data_dir)]
    try:
        with server.log_file.open("ab") as log_fh:  # O_APPEND: backends never clobber each other
            server._process = subprocess.Popen(
                command,
                cwd=server.data_dir,
                env=_child_env(account),
                stdin=subprocess.DEVNULL,
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it cleanly
                **popen_identity(account),
            )
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresStartError(f"could not run {command[0]}: {exc}") from exc
    server._track()

    def accepts() -> str | None:
        try:
            with psycopg.connect(**server._admin_params(), autocommit=True):
                return None
        except psycopg.OperationalError as exc:
            return str(exc).strip()

    try:
        wait_ready(
            server._process,
            accepts,
            name="postgres",
            log_file=server.log_file,
            offset=offset,
            timeout=timeout,
            port_taken="could not bind",
            error=PostgresStartError,
        )
    except PortTaken as exc:
        if may_retry:
            return False
        raise PostgresStartError(
            f"postgres could not bind: port {server.port} is taken: pass another port, or "
            f"port=None; its log ({server.log_file}) ends with:\n{exc}"
        ) from None
    return True


def _provision(
    server: PostgresServer, roles: Mapping[str, str], databases: Mapping[str, str]
) -> None:
    """Create roles and databases as the superuser over the socket (it has no password)."""
    try:
        conn = psycopg.connect(**server._admin_params(), autocommit=True)
    except psycopg.Error as exc:
        raise PostgresStartError(f"cannot connect as {server.superuser} to set up: {exc}") from exc
    with conn:
        for name, password in roles.items():
            # The server hashes the password with password_encryption from devenv.conf.
            verb = "ALTER" if name == server.superuser else "CREATE"
            query = sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
                sql.SQL(verb), sql.Identifier(name), sql.Literal(password)
            )
            try:
                conn.execute(query)
            except psycopg.Error as exc:
                raise PostgresStartError(f"cannot create role {name!r}: {exc}") from exc
        for database, owner in databases.items():
            query = sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(owner)
            )
            try:
                conn.execute(query)
            except psycopg.Error as exc:
                known = owner in roles or owner == server.superuser
                hint = "" if known else " (list the owner in roles= too)"
                raise PostgresStartError(
                    f"cannot create database {database!r} owned by {owner!r}: {exc}{hint}"
                ) from exc
