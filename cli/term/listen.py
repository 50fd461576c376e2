"""`gatehouse connect NAME` for an ssh connection: a local SSH server for native clients.

`ssh`, `scp` and `sftp` talk to 127.0.0.1:PORT as to any server. Every SSH channel (a
command, a shell with a terminal, the sftp subsystem; scp runs `scp -t`/`scp -f` or sftp)
becomes one Gatehouse session in `connect` mode, driven by cli.term.stream like `exec`:
the control plane decides and records it, the agent logs in to the target with a key the
caller never sees, and the exit status comes back to the client.

The local leg proves only that the person at this machine holds a key they already use
(public-key authentication against ~/.ssh/authorized_keys and ~/.ssh/id_*.pub, or
--authorized-keys): anyone on a shared host could otherwise ride the caller's gateway token.
Any user name is accepted: the target user is the connection's. The listener's host key is
made once and kept in the CLI's config directory, so clients can pin it.

Only session channels exist here: port forwarding, agent forwarding and X11 are refused,
since a tunnel through the listener would reach the target without a recorded session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import grpc

from cli import __version__
from cli.errors import USAGE, CliError
from cli.output import echo
from cli.protocols import Listening, ListenRequest
from cli.session import open_session, review_log
from cli.term.stream import HIGH_WATER, SAID_TAIL, SessionClosed, TermSession, relay
from wire.term import codec

log = logging.getLogger("gatehouse.connect")

HOST_KEY_FILE = "ssh_host_ed25519_key"
GATEWAY_FAILURE = 255
"""Exit status of a channel the gateway could not run, as ssh reports its own failures."""
FORWARDED_ENV = ("LANG", "LC_")
"""Environment a client sends that is passed on: the locale only, as sshd's AcceptEnv, and
only a UTF-8 (or C) one (`codec.env_problem`); another is left out."""


def listen(request: ListenRequest) -> Listening:
    """`gatehouse connect` on an ssh connection: an SSH server on 2222 unless told otherwise;
    with no client key to accept it refuses before anything listens."""
    port = 2222 if request.port is None else request.port
    files = request.authorized_keys or default_key_files()
    load_authorized_keys(files)  # refuse before anything listens
    serving = serve(
        request.address, request.metadata, request.connection, request.host, port, files
    )
    return Listening(port, serving)


def default_key_files() -> list[Path]:
    """~/.ssh/authorized_keys (when there is one) and every ~/.ssh/id_*.pub."""
    ssh_dir = Path.home() / ".ssh"
    files = [ssh_dir / "authorized_keys"] if (ssh_dir / "authorized_keys").is_file() else []
    return files + sorted(ssh_dir.glob("id_*.pub"))


def load_authorized_keys(files: Sequence[Path]) -> tuple[asyncssh.SSHAuthorizedKeys, int]:
    """The keys that may log in to the listener and how many there are; a line that is not a
    key is an error naming its file and line, and no key at all is refused."""
    lines: list[str] = []
    for path in files:
        try:
            text = path.read_text()
        except OSError as exc:
            raise CliError(f"cannot read {path}: {exc.strerror}", USAGE) from None
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                asyncssh.import_authorized_keys(line)
            except (ValueError, asyncssh.KeyImportError) as exc:
                raise CliError(f"{path}:{number}: not a public key: {exc}", USAGE) from None
            lines.append(line)
    if not lines:
        where = ", ".join(str(p) for p in files) or "~/.ssh/authorized_keys, ~/.ssh/id_*.pub"
        raise CliError(
            f"no public key to accept clients with (looked in {where}): create one with "
            "`ssh-keygen -t ed25519`, or name a file with --authorized-keys",
            USAGE,
        )
    return asyncssh.import_authorized_keys("\n".join(lines) + "\n"), len(lines)


def host_key(directory: Path) -> tuple[asyncssh.SSHKey, Path]:
    """The listener's host key, made on first use (mode 0600); two first starts at once
    agree on one key, because only the first link into place wins."""
    path = directory / HOST_KEY_FILE
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment="gatehouse connect")
        fd, temporary = tempfile.mkstemp(prefix=f".{HOST_KEY_FILE}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(key.export_private_key())
            with contextlib.suppress(FileExistsError):
                os.link(temporary, path)
        finally:
            os.unlink(temporary)
    try:
        return asyncssh.read_private_key(path), path
    except (OSError, ValueError, asyncssh.KeyImportError) as exc:
        raise CliError(
            f"cannot read the listener's host key {path}: {exc}; remove it to "
            "make a new one (clients that pinned it will warn)"
        ) from None


def config_dir() -> Path:
    """Where the CLI keeps its files (beside the login's tokens)."""
    from cli.login import default_token_path

    return default_token_path().parent


@dataclass
class Listener:
    """What every channel needs: the control plane and the connection it opens."""

    connection: str
    channel: grpc.aio.Channel
    metadata: tuple[tuple[str, str], ...]


class _Server(asyncssh.SSHServer):
    """One client connection: public-key login for any name, session channels only."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        return True  # a key is always needed

    def session_requested(self) -> asyncssh.SSHServerSession[bytes]:
        assert self._conn is not None
        return ChannelSession(self._listener, self._conn)

    def connection_requested(self, dest_host: str, dest_port: int, *_: Any) -> bool:
        log.warning(
            "refused port forwarding to %s:%s: only sessions are relayed", dest_host, dest_port
        )
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        log.warning("refused remote port forwarding from %s:%s", listen_host, listen_port)
        return False


class ChannelSession(asyncssh.SSHServerSession[bytes]):
    """One SSH channel as one Gatehouse session: requests collected until the channel starts,
    then cli.term.stream.relay with this object as input and output."""

    def __init__(self, listener: Listener, conn: asyncssh.SSHServerConnection) -> None:
        self._listener = listener
        self._conn = conn
        self._chan: asyncssh.SSHServerChannel[bytes] | None = None
        self._pty: codec.Pty | None = None
        self._command: str | None = None
        self._subsystem: str | None = None
        self._inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._inbox_bytes = 0
        self._paused = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._term: TermSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._said = b""  # the end of what went to stderr, so an error is not said twice

    # requests from the client, before the channel starts

    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self._chan = chan

    def pty_requested(
        self, term_type: str, term_size: tuple[int, int, int, int], term_modes: Any
    ) -> bool:
        cols, rows = term_size[0] or 80, term_size[1] or 24
        self._pty = codec.Pty(term_type or "xterm", cols, rows)
        return True

    def shell_requested(self) -> bool:
        return True

    def exec_requested(self, command: str) -> bool:
        self._command = command
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self._subsystem = subsystem
        return True

    def session_started(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ssh-channel")

    # while it runs

    def data_received(self, data: bytes, datatype: int | None) -> None:
        if datatype is not None:
            return  # extended data from a client: nothing on the target side reads it
        self._inbox.put_nowait(data)
        self._inbox_bytes += len(data)
        if self._inbox_bytes >= HIGH_WATER and not self._paused and self._chan is not None:
            self._paused = True
            self._chan.pause_reading()

    def eof_received(self) -> bool:
        self._inbox.put_nowait(None)
        return True  # stay half open: output and the exit status still come

    def terminal_size_changed(self, width: int, height: int, pixwidth: int, pixheight: int) -> None:
        if self._term is not None:
            with contextlib.suppress(SessionClosed):
                self._term.window(width, height)
        elif self._pty is not None:
            self._pty = codec.Pty(self._pty.term, width or 80, height or 24)

    def signal_received(self, signal: str) -> None:
        if self._term is not None:
            with contextlib.suppress(SessionClosed):
                self._term.signal(signal)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._task is not None:
            self._task.cancel()

    # cli.term.stream.Output

    async def stdout(self, data: bytes) -> None:
        await self._writable.wait()
        assert self._chan is not None
        self._chan.write(data)

    async def stderr(self, data: bytes) -> None:
        await self._writable.wait()
        assert self._chan is not None
        self._chan.write_stderr(data)
        self._said = (self._said + data)[-SAID_TAIL:]

    async def _input(self) -> AsyncIterator[bytes]:
        while (data := await self._inbox.get()) is not None:
            self._inbox_bytes -= len(data)
            if self._paused and self._inbox_bytes < HIGH_WATER // 2 and self._chan is not None:
                self._paused = False
                self._chan.resume_reading()
            yield data

    def _start(self) -> codec.Start:
        assert self._chan is not None
        env = {}
        for name, value in self._chan.get_environment().items():
            if name != FORWARDED_ENV[0] and not name.startswith(FORWARDED_ENV[1]):
                continue
            if (problem := codec.env_problem({name: value})) is not None:
                # The gateway would refuse the command: the target's own locale serves.
                log.warning("not passed on: %s", problem)
                continue
            env[name] = value
        return codec.Start(command=self._command, subsystem=self._subsystem, pty=self._pty, env=env)

    async def _run(self) -> None:
        start = self._start()
        who = (
            f"{self._conn.get_extra_info('username')} from "
            f"{':'.join(str(p) for p in self._conn.get_extra_info('peername')[:2])}"
        )
        what = _describe(start)
        if start.interactive and start.pty is None:
            log.warning("%s: %s refused: no terminal", who, what)
            self._end(1, "a login shell needs a terminal: use ssh -t, or give a command")
            return
        listener = self._listener
        version = str(self._conn.get_extra_info("client_version") or "ssh")
        client = f"{version.removeprefix('SSH-2.0-')} via gatehouse-cli/{__version__} connect"
        try:
            opened = await open_session(
                listener.channel,
                listener.metadata,
                listener.connection,
                "connect",
                client,
                review=review_log,
            )
        except (grpc.aio.AioRpcError, CliError) as exc:
            reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc.message
            log.warning("%s: %s refused: %s", who, what, reason)
            self._end(1, str(reason))
            return
        log.info("%s: %s → session %s", who, what, opened.session_id)
        try:
            async with TermSession(opened) as session:
                self._term = session
                exit_ = await relay(session, start, self._input(), self)
        except (grpc.aio.AioRpcError, CliError) as exc:
            reason = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else exc.message
            log.warning("session %s ended: %s", opened.session_id, reason)
            self._end(GATEWAY_FAILURE, str(reason))
            return
        finally:
            self._term = None
        if exit_.error and not self._said.rstrip().endswith(exit_.error.encode()):
            self._say(exit_.error)
        assert self._chan is not None
        if exit_.signal:
            self._chan.exit_with_signal(exit_.signal)
        else:
            self._chan.exit(exit_.status)

    def _end(self, status: int, reason: str) -> None:
        self._say(reason)
        assert self._chan is not None
        self._chan.exit(status)

    def _say(self, reason: str) -> None:
        assert self._chan is not None
        newline = "\r\n" if self._pty is not None else "\n"
        self._chan.write_stderr(
            f"gatehouse: {reason.removeprefix('gatehouse: ')}{newline}".encode()
        )


def _describe(start: codec.Start) -> str:
    if start.subsystem is not None:
        return f"subsystem {start.subsystem}"
    if start.command is not None:
        return f"exec {start.command!r}" + (" with a terminal" if start.pty else "")
    return "shell" + (" with a terminal" if start.pty else "")


async def serve(
    address: str,
    metadata: tuple[tuple[str, str], ...],
    connection: str,
    host: str,
    port: int,
    key_files: Sequence[Path],
) -> None:
    """Listen until cancelled; the banner says how to pin the host key and connect."""
    from cli import rpc
    from cli.protocols import handshake_limits

    authorized, count = load_authorized_keys(key_files)
    key, key_path = host_key(config_dir())
    async with rpc.channel(address) as channel:
        listener = Listener(connection, channel, metadata)
        server = await asyncssh.create_server(
            lambda: _Server(listener),
            host,
            port,
            server_host_keys=[key],
            authorized_client_keys=authorized,
            encoding=None,
            line_editor=False,
            allow_pty=True,
            agent_forwarding=False,
            x11_forwarding=False,
            password_auth=False,
            kbdint_auth=False,
            gss_host=None,
            login_timeout=handshake_limits()[0],  # an unauthenticated connection's deadline
        )
        bound = server.get_port()
        alias = f"gatehouse-{connection}"
        echo(
            f"Listening on {host}:{bound} for ssh connection {connection!r}; every session is "
            f"recorded.\n"
            f"  host key {key.get_fingerprint()} ({key_path})\n"
            f"  {count} client key{'s' if count != 1 else ''} accepted, from "
            f"{', '.join(str(f) for f in key_files)}\n"
            f"  ssh -p {bound} -o HostKeyAlias={alias} localhost\n"
            f"  scp -P {bound} -o HostKeyAlias={alias} FILE localhost:/tmp/\n"
            "Press Ctrl-C to stop.",
            err=True,
        )
        async with server:
            await server.serve_forever()
