"""Start a throwaway OpenSSH server: the real target of the SSH tests and the demo.

Tests need an sshd they fully control: its host key (to pin, or to pin wrongly), the one key
allowed to log in, its port, and its log. Nothing of the machine's own sshd is used or
touched: everything lives under one ``base`` folder:

* ``base/ssh_host_ed25519_key``  the host key (its public half is `Sshd.host_key_line`);
* ``base/client_key``            the user key pair; the public half is the only authorized key;
* ``base/sshd_config``           the configuration, written on every start;
* ``base/sshd.log``              the server's log (``-e``: stderr), for failures and assertions.

The server runs as the current user, and so only that user can log in. Tests run as root,
which sshd allows with a key only (``PermitRootLogin prohibit-password``); as root it also
needs its privilege separation directory (``/run/sshd``), which is created when missing.
``deploy/system-deps.sh`` installs ``openssh-server`` (sshd and ssh-keygen).
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devenv.processes import PortTaken, Service, free_port, stop_process, tail, wait_ready

__all__ = ["SSHD", "Sshd", "SshdStartError", "start_sshd"]

SSHD = Path("/usr/sbin/sshd")
SSH_KEYGEN = "ssh-keygen"
HOST = "127.0.0.1"
PRIVSEP_DIR = Path("/run/sshd")
_INSTALL_HINT = "install OpenSSH's server with `apt-get install openssh-server`"
_PORT_ATTEMPTS = 5


class SshdStartError(RuntimeError):
    """The throwaway sshd could not be started; the message says why and what to do."""


@dataclass
class Sshd(Service):
    """A running throwaway sshd; ``stop()`` (or leaving the ``with`` block) shuts it down."""

    host: str
    port: int
    user: str
    #: The private key that may log in as `user` (OpenSSH format, no passphrase).
    client_key: Path
    #: The server's public host key, ``ssh-ed25519 AAAA…``: a bare known_hosts line.
    host_key_line: str
    base: Path
    log_file: Path
    _process: subprocess.Popen[bytes] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def known_hosts_line(self) -> str:
        """The host key as a full known_hosts line: ``[127.0.0.1]:PORT ssh-ed25519 AAAA…``."""
        return f"[{self.host}]:{self.port} {self.host_key_line}"

    @property
    def client_public_key(self) -> Path:
        return self.client_key.with_name(self.client_key.name + ".pub")

    @property
    def pid(self) -> int | None:
        """The listening sshd's pid while it runs, else None."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def log(self) -> str:
        """What the server logged so far."""
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Stop listening and end the sessions it serves; idempotent, removes nothing."""
        process, self._process = self._process, None
        self._untrack()
        if process is not None:
            stop_process(process, "sshd", ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)))


def start_sshd(base: Path, *, ready_timeout: float = 15.0, login: str | None = None) -> Sshd:
    """Generate keys under ``base``, start sshd on a free loopback port and wait until it
    answers with its SSH banner. ``base`` is created if needed; its keys are made anew.

    ``login`` names another account to log in as (created when missing, which needs root):
    OpenSSH treats root logins differently (no privilege separation, so signal requests are
    ignored), and a test of what other users get needs one of them."""
    if not (SSHD.is_file() and os.access(SSHD, os.X_OK)):
        raise SshdStartError(f"{SSHD} not found: {_INSTALL_HINT}")
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    host_key, client_key = base / "ssh_host_ed25519_key", base / "client_key"
    _keygen(host_key, "gatehouse-test-host")
    _keygen(client_key, "gatehouse-test-client")
    authorized = base / "authorized_keys"
    authorized.write_text(client_key.with_name("client_key.pub").read_text())
    host_key_line = " ".join(host_key.with_name(host_key.name + ".pub").read_text().split()[:2])
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    if login is not None and login != user:
        _authorize_in_home(login, authorized.read_text())
        user = login
    log_file = base / "sshd.log"
    for _ in range(_PORT_ATTEMPTS):
        server = Sshd(HOST, free_port(), user, client_key, host_key_line, base, log_file)
        (base / "sshd_config").write_text(_config(server, host_key, authorized))
        try:
            if _launch(server, ready_timeout):
                return server
        except BaseException:
            server.stop()
            raise
        server.stop()
    raise SshdStartError(
        f"no free port found after {_PORT_ATTEMPTS} attempts; sshd's log ({log_file}) ends "
        f"with:\n{tail(log_file)}"
    )


def _authorize_in_home(name: str, keys: str) -> None:
    """Make sure account `name` exists and accepts `keys` from its own ~/.ssh: sshd reads a
    user's authorized keys as that user, who cannot read a root-only temporary folder."""
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        if os.geteuid() != 0:
            raise SshdStartError(
                f"account {name!r} does not exist; only root can create it"
            ) from None
        # Password "*": no password works, but the account is not locked ("!"), which sshd
        # would refuse even for a key login.
        command = ["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*", name]
        created = subprocess.run(command, capture_output=True, text=True, check=False)
        if created.returncode != 0:
            raise SshdStartError(f"useradd {name} failed: {created.stderr.strip()}") from None
        account = pwd.getpwnam(name)
    ssh_dir = Path(account.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(keys)
    for path in (ssh_dir.parent, ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, account.pw_uid, account.pw_gid)


def _keygen(path: Path, comment: str) -> None:
    for stale in (path, path.with_name(path.name + ".pub")):
        stale.unlink(missing_ok=True)
    command = [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]
    try:
        subprocess.run(command, capture_output=True, check=True, timeout=30)
    except FileNotFoundError:
        raise SshdStartError(f"{SSH_KEYGEN} not found: {_INSTALL_HINT}") from None
    except subprocess.CalledProcessError as exc:
        output = exc.stderr.decode(errors="replace").strip()
        raise SshdStartError(f"ssh-keygen failed for {path}: {output}") from None


def _config(server: Sshd, host_key: Path, authorized: Path) -> str:
    """Key logins for the current user only; everything else a test does not need is off."""
    settings = {
        "ListenAddress": f"{server.host}:{server.port}",
        "HostKey": str(host_key),
        "PidFile": str(server.base / "sshd.pid"),
        # The test's own file for the current user; ~/.ssh for an account made by `login`.
        "AuthorizedKeysFile": f"{authorized} .ssh/authorized_keys",
        "PermitRootLogin": "prohibit-password",
        "PubkeyAuthentication": "yes",
        # Password logins are offered (tests check that a wrong one is refused clearly), but
        # root may log in with a key only, and nobody else can log in to this server.
        "PasswordAuthentication": "yes",
        "KbdInteractiveAuthentication": "no",
        "UsePAM": "no",
        # The keys live in a test's temporary folder, whatever its owner and mode.
        "StrictModes": "no",
        "Subsystem": "sftp internal-sftp",
        "PrintMotd": "no",
        "PrintLastLog": "no",
        "UseDNS": "no",
        "X11Forwarding": "no",
        "AcceptEnv": "LANG LC_* GATEHOUSE_*",
        "MaxStartups": "100",
        "MaxSessions": "100",
        "LogLevel": "VERBOSE",
    }
    body = "".join(f"{key} {value}\n" for key, value in settings.items())
    return "# Written by devenv.sshd on every start.\n" + body


def _launch(server: Sshd, timeout: float) -> bool:
    """Start sshd and wait for its banner; False when the port was taken meanwhile."""
    offset = server.log_file.stat().st_size if server.log_file.exists() else 0
    command = [str(SSHD), "-D", "-e", "-f", str(server.base / "sshd_config")]
    with server.log_file.open("ab") as log_fh:
        server._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop it cleanly
        )
    server._track()

    def banner() -> str | None:
        try:
            with socket.create_connection((server.host, server.port), timeout=1) as sock:
                return None if sock.recv(64).startswith(b"SSH-") else "no SSH banner"
        except OSError as exc:
            return str(exc)

    try:
        wait_ready(
            server._process,
            banner,
            name="sshd",
            log_file=server.log_file,
            offset=offset,
            timeout=timeout,
            port_taken="Address already in use",
            error=SshdStartError,
        )
    except PortTaken:
        return False
    return True
