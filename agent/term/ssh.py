"""The agent's end of an `ssh` session: asyncssh to the target with the agent's own credentials.

The target's host key must be pinned in the connection's ``known_hosts`` (full known_hosts
lines, or bare ``ssh-ed25519 AAAA…`` key lines that then apply to this target): there is no
trust on first use, and nothing of the agent's own ``~/.ssh`` (config, keys, known hosts,
ssh-agent) is consulted, so the policy alone decides where the agent logs in and how.
Credentials are the connection's secrets (``private_key`` with an optional ``passphrase``,
or ``password``), resolved here and never sent anywhere; error messages name references and
fingerprints, never values. What runs is the client's `Start`: its command line, a subsystem
(``sftp``), or a login shell on a pseudo-terminal; `stream.run_session` does the rest.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial

import asyncssh

from agent.engines import Receive, SendFrame
from agent.secrets import SecretError, resolve
from agent.term.stream import READ_SIZE, Refused, TargetLost, TermProcess, run_session, signalled
from wire.term import codec

__all__ = ["CONNECT_TIMEOUT", "SshTarget", "known_hosts_for", "run"]

CONNECT_TIMEOUT = 15.0
"""Seconds to reach the target and finish the SSH handshake and login."""
_CLOSE_TIMEOUT = 5.0
_KEEPALIVE = 30.0


@dataclass(frozen=True, slots=True)
class SshTarget:
    """Where the agent logs in: the connection's ``target`` as the control plane pushed it."""

    host: str
    port: int
    user: str
    known_hosts: str

    @classmethod
    def from_spec(cls, spec: Mapping[str, object]) -> SshTarget:
        """From the pushed target (a protobuf Struct as a dict, so numbers arrive as floats)."""
        try:
            return cls(
                host=str(spec["host"]),
                port=int(float(str(spec.get("port", 22)))),
                user=str(spec["user"]),
                known_hosts=str(spec.get("known_hosts") or ""),
            )
        except KeyError as exc:
            raise Refused(f"the connection's target has no {exc}; fix it in the policy") from None
        except ValueError as exc:
            raise Refused(
                f"the connection's target is malformed ({exc}); fix it in the policy"
            ) from None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


async def run(
    target: Mapping[str, object], secrets: Mapping[str, str], receive: Receive, send: SendFrame
) -> str:
    """Serve one session on the target's sshd; returns why it ended."""
    return await run_session(receive, send, partial(_launch, target, secrets))


def known_hosts_for(text: str, host: str, port: int) -> asyncssh.SSHKnownHosts:
    """The connection's pinned keys. A bare key line is given this target's host pattern
    (``host``, or ``[host]:port`` off port 22); full lines, markers (``@cert-authority``,
    ``@revoked``) and hashed names stay as written. Raises ValueError if nothing is usable."""
    pattern = host if port == 22 else f"[{host}]:{port}"
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lines.append(f"{pattern} {line}" if _is_bare_key(line) else line)
    if not lines:
        raise ValueError("it holds no host key")
    return asyncssh.import_known_hosts("\n".join(lines) + "\n")


def _is_bare_key(line: str) -> bool:
    """``ssh-ed25519 AAAA… [comment]``: the key blob starts with the key type's own name."""
    words = line.split()
    if len(words) < 2:
        return False
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        return False
    name = words[0].encode()
    return blob[:4] == struct.pack("!I", len(name)) and blob[4 : 4 + len(name)] == name


@dataclass(frozen=True, slots=True)
class _Credentials:
    key: asyncssh.SSHKey | None
    password: str | None

    @property
    def described(self) -> str:
        if self.key is not None and self.password is not None:
            return "private key and password"
        if self.key is not None:
            return "private key"
        if self.password is not None:
            return "password"
        return "nothing (the connection has no private_key or password secret)"


def _credentials(secrets: Mapping[str, str]) -> _Credentials:
    try:
        password = resolve(secrets["password"]) if "password" in secrets else None
        if "private_key" not in secrets:
            return _Credentials(None, password)
        reference = secrets["private_key"]
        text = resolve(reference)
        passphrase = resolve(secrets["passphrase"]) if "passphrase" in secrets else None
    except SecretError as exc:
        raise Refused(f"gatehouse agent: {exc}") from None
    try:
        key = asyncssh.import_private_key(text, passphrase)
    except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
        raise Refused(_unusable_key(reference, str(exc), passphrase is not None)) from None
    return _Credentials(key, password)


def _unusable_key(reference: str, problem: str, has_passphrase: bool) -> str:
    """What to do about a private key asyncssh could not import (it says why in words only)."""
    if "bcrypt" in problem:
        hint = "the agent needs the bcrypt package (`pip install bcrypt`) to open it"
    elif has_passphrase and ("decrypt" in problem or "passphrase" in problem.lower()):
        return (
            f"the private key ({reference}) does not open with the connection's passphrase; "
            "fix the passphrase secret"
        )
    elif "assphrase" in problem:
        hint = "add a passphrase secret"
    else:
        hint = "check the secret"
    return f"the private key ({reference}) cannot be used: {problem}; {hint}"


class _Client(asyncssh.SSHClient):
    """Remembers the host key the target offered when it matched none of the pinned ones."""

    offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key
        return False  # only pinned keys are trusted


async def _launch(
    spec: Mapping[str, object], secrets: Mapping[str, str], start: codec.Start
) -> TermProcess:
    target = SshTarget.from_spec(spec)
    if (problem := codec.env_problem(start.env)) is not None:
        raise Refused(f"gatehouse agent: not run: {problem}")
    try:
        known_hosts = known_hosts_for(target.known_hosts, target.host, target.port)
    except ValueError as exc:
        raise Refused(
            f"the connection's known_hosts is unusable ({exc}); pin the host key of "
            f"{target.address} in the policy (`ssh-keyscan -p {target.port} {target.host}`)"
        ) from None
    credentials = _credentials(secrets)
    connection = await _connect(target, credentials, known_hosts)
    if start.subsystem is not None:
        what = f"the {start.subsystem} subsystem"
    elif start.interactive:
        what = "a login shell"
    else:
        what = "the command"
    try:
        process: asyncssh.SSHClientProcess[bytes] = await connection.create_process(
            None if start.interactive or start.subsystem else start.command_line(),
            subsystem=start.subsystem,
            env=start.env,
            request_pty="force" if start.pty is not None else False,
            term_type=start.pty.term if start.pty is not None else None,
            term_size=(start.pty.cols, start.pty.rows) if start.pty is not None else None,
            encoding=None,
        )
    except (asyncssh.Error, OSError) as exc:
        connection.close()
        raise Refused(f"{target.address} refused to start {what}: {_reason(exc)}") from None
    return _SshProcess(target, connection, process, start.pty is not None)


async def _connect(
    target: SshTarget, credentials: _Credentials, known_hosts: asyncssh.SSHKnownHosts
) -> asyncssh.SSHClientConnection:
    client = _Client()
    try:
        connection, _ = await asyncssh.create_connection(
            lambda: client,
            target.host,
            target.port,
            username=target.user,
            known_hosts=known_hosts,
            client_keys=[credentials.key] if credentials.key is not None else None,
            password=credentials.password,
            # Nothing of the agent's own ~/.ssh, ssh-agent or Kerberos: the policy decides.
            config=None,
            agent_path=None,
            gss_auth=False,
            gss_kex=False,
            x509_trusted_certs=None,
            x509_trusted_cert_paths=None,
            connect_timeout=CONNECT_TIMEOUT,
            login_timeout=CONNECT_TIMEOUT,
            keepalive_interval=_KEEPALIVE,
        )
    except asyncssh.HostKeyNotVerifiable as exc:
        if client.offered is None:
            raise Refused(
                f"the host key of {target.address} was refused ({exc.reason}); "
                "check known_hosts in the policy"
            ) from None
        raise Refused(
            f"host key of {target.address} ({client.offered.get_fingerprint()}) does not match "
            "the connection's known_hosts; if the host was re-keyed, update known_hosts in "
            "the policy"
        ) from None
    except asyncssh.PermissionDenied:
        raise Refused(
            f"{target.user}@{target.address} refused the agent's {credentials.described}; "
            f"check that the connection's credentials are authorized for {target.user} there"
        ) from None
    except (ConnectionResetError, asyncssh.ConnectionLost):
        # sshd hangs up without a word when no host key type is common to both sides.
        raise Refused(
            f"{target.address} closed the connection during the SSH handshake; check that "
            "known_hosts pins a key of a type the host has (`ssh-keyscan` lists them)"
        ) from None
    except asyncssh.Error as exc:
        raise Refused(f"SSH to {target.address} failed: {_reason(exc)}") from None
    except TimeoutError:
        raise Refused(
            f"no SSH login at {target.address} within {CONNECT_TIMEOUT:g} s; "
            "is the host up and the port right?"
        ) from None
    except OSError as exc:
        raise Refused(f"cannot reach {target.address}: {exc.strerror or exc}") from None
    return connection


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.Error):
        return exc.reason or type(exc).__name__
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


class _SshProcess:
    """One session channel on the target, as `stream.TermProcess`."""

    def __init__(
        self,
        target: SshTarget,
        connection: asyncssh.SSHClientConnection,
        process: asyncssh.SSHClientProcess[bytes],
        pty: bool,
    ) -> None:
        self._target = target
        self._connection = connection
        self._process = process
        self._pty = pty

    async def read_stdout(self) -> bytes:
        return await self._read(self._process.stdout)

    async def read_stderr(self) -> bytes:
        return await self._read(self._process.stderr)

    async def _read(self, reader: asyncssh.SSHReader[bytes]) -> bytes:
        try:
            return await reader.read(READ_SIZE)
        except (asyncssh.Error, OSError) as exc:
            raise TargetLost(
                f"the SSH connection to {self._target.address} failed: {_reason(exc)}"
            ) from None

    async def write(self, data: bytes) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):  # the channel closed: input dropped
            self._process.stdin.write(data)
            await self._process.stdin.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.stdin.write_eof()

    def resize(self, cols: int, rows: int) -> None:
        if self._pty:
            with contextlib.suppress(asyncssh.Error, OSError):
                self._process.change_terminal_size(cols, rows)

    def signal(self, name: str) -> None:
        with contextlib.suppress(asyncssh.Error, OSError):
            self._process.send_signal(name)

    async def wait(self) -> codec.Exit:
        await self._process.wait_closed()
        if (exit_signal := self._process.exit_signal) is not None:
            return signalled(exit_signal[0])
        status = self._process.exit_status
        if status is None:
            return codec.Exit(
                255, error=f"{self._target.address} closed the session without an exit status"
            )
        return codec.Exit(status)

    async def close(self) -> None:
        self._process.close()
        self._connection.close()
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(self._connection.wait_closed(), _CLOSE_TIMEOUT)
