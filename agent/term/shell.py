"""The agent's end of a `shell` session: one command run on the agent's own host.

An argv runs as given, with no shell in between; a command given as one text (what a native
ssh client sends) runs through the connection's ``shell`` (default ``/bin/sh -c``). The child
gets its own session (process group) so that a signal, the timeout or the output limit
reaches everything it started, and whatever it leaves running is stopped when it exits:
nothing keeps running on the agent's host once its audited command has ended.

The environment is the connection's ``env`` over a few variables of the agent's own
(`INHERITED`: where commands are found, whose home, the locale), plus the client's ``TERM``.
Nothing else of the agent's environment passes, so its secrets (``env:`` references) never
reach a command, and nothing else of the client's either, so a caller cannot steer a command
with ``LD_PRELOAD`` or ``PATH``. Commands run without a terminal: a login shell, a
pseudo-terminal or a subsystem is refused (see `NO_TERMINAL`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial

from agent.pg.relay import Receive, SendFrame
from agent.term.stream import (
    READ_SIZE,
    Refused,
    TermProcess,
    refuse,
    run_session,
    signalled,
)
from wire.term import codec

__all__ = ["INHERITED", "NO_TERMINAL", "ShellTarget", "child_env", "run"]

INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The agent's own variables a command sees (unless the connection's env sets them)."""
NO_TERMINAL = "a shell connection runs commands; use `gatehouse exec NAME -- CMD`"
DEFAULT_SHELL = ("/bin/sh", "-c")
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
_REAP_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class ShellTarget:
    """How commands run: the connection's ``target`` as the control plane pushed it."""

    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    shell: tuple[str, ...] = DEFAULT_SHELL
    max_output: int = DEFAULT_MAX_OUTPUT

    @classmethod
    def from_spec(cls, spec: Mapping[str, object]) -> ShellTarget:
        """From the pushed target (a protobuf Struct as a dict, so numbers arrive as floats)."""
        env = spec.get("env") or {}
        shell = spec.get("shell") or DEFAULT_SHELL
        if not isinstance(env, Mapping) or not isinstance(shell, list | tuple):
            raise Refused("the connection's env or shell is malformed; fix it in the policy")
        try:
            return cls(
                workdir=str(spec["workdir"]) if spec.get("workdir") else None,
                env={str(k): str(v) for k, v in env.items()},
                timeout=float(str(spec.get("timeout") or DEFAULT_TIMEOUT)),
                shell=tuple(str(word) for word in shell),
                max_output=int(float(str(spec.get("max_output") or DEFAULT_MAX_OUTPUT))),
            )
        except ValueError as exc:
            raise Refused(
                f"the connection's target is malformed ({exc}); fix it in the policy"
            ) from None


def child_env(target_env: Mapping[str, str], term: str | None = None) -> dict[str, str]:
    """The environment a command runs with: `INHERITED`, then ``TERM``, then the target's."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.setdefault("PATH", os.defpath)
    if term:
        env["TERM"] = term
    env.update(target_env)
    return env


async def run(
    target: Mapping[str, object], secrets: Mapping[str, str], receive: Receive, send: SendFrame
) -> str:
    """Serve one command on the agent's host; returns why the session ended. A shell
    connection has no secrets: ``secrets`` is accepted for the common engine signature."""
    try:
        settings = ShellTarget.from_spec(target)
    except Refused as exc:
        return await refuse(send, str(exc))
    return await run_session(
        receive,
        send,
        partial(_launch, settings),
        timeout=settings.timeout,
        max_output=settings.max_output,
    )


async def _launch(target: ShellTarget, start: codec.Start) -> TermProcess:
    if start.pty is not None or start.subsystem is not None or start.interactive:
        raise Refused(NO_TERMINAL)
    argv = list(start.argv) if start.argv else [*target.shell, start.command_line()]
    env = child_env(target.env, start.env.get("TERM"))
    loop = asyncio.get_running_loop()
    try:
        transport, protocol = await loop.subprocess_exec(
            partial(_ChildProtocol, loop),
            *argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=target.workdir,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise _not_started(exc, argv[0], target.workdir, env["PATH"]) from None
    return _LocalProcess(transport, protocol)


def _not_started(exc: OSError, command: str, workdir: str | None, path: str) -> Refused:
    """Why the command could not start, with the status a shell would report."""
    if workdir is not None and exc.filename == workdir:
        return Refused(
            f"the connection's workdir {workdir} is unusable on the agent's host "
            f"({exc.strerror}); create it or fix workdir in the policy"
        )
    if isinstance(exc, FileNotFoundError):
        return Refused(f"{command}: command not found on the agent's host (PATH={path})", 127)
    if isinstance(exc, PermissionError):
        return Refused(f"{command}: permission denied on the agent's host", 126)
    return Refused(f"{command}: cannot run: {exc.strerror or exc}", 126)


class _ChildProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """asyncio's child streams, plus the moment the child exits: `Process.wait()` also waits
    for the pipes to close, which something the child left running may hold open for ever."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=READ_SIZE, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


class _LocalProcess:
    """A child process group on the agent's host, as `stream.TermProcess`."""

    def __init__(self, transport: asyncio.SubprocessTransport, protocol: _ChildProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._group = transport.get_pid()  # start_new_session: the child leads its own group
        self._exited = asyncio.create_task(self._reap())

    async def _reap(self) -> int:
        """The child's status; what it left behind in its group is stopped with it, which
        also closes the pipes those leftovers held open, so the output reaches its end."""
        await self._protocol.exited
        self._kill_group(signal.SIGKILL)
        status = self._transport.get_returncode()
        assert status is not None
        return status

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._group, sig)

    async def read_stdout(self) -> bytes:
        assert self._protocol.stdout is not None
        return await self._protocol.stdout.read(READ_SIZE)

    async def read_stderr(self) -> bytes:
        assert self._protocol.stderr is not None
        return await self._protocol.stderr.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        stdin = self._protocol.stdin
        assert stdin is not None
        with contextlib.suppress(ConnectionError):  # it stopped reading: input dropped
            stdin.write(data)
            await stdin.drain()

    def write_eof(self) -> None:
        stdin = self._protocol.stdin
        assert stdin is not None
        with contextlib.suppress(ConnectionError):
            stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        """No terminal, nothing to resize."""

    def signal(self, name: str) -> None:
        self._kill_group(signal.Signals[f"SIG{name}"])

    async def wait(self) -> codec.Exit:
        status = await asyncio.shield(self._exited)
        if status >= 0:
            return codec.Exit(status)
        try:
            return signalled(signal.Signals(-status).name.removeprefix("SIG"))
        except ValueError:  # a real-time signal has no name
            return codec.Exit(128 - status)

    async def close(self) -> None:
        if not self._exited.done():
            self._kill_group(signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), _REAP_TIMEOUT)
        self._transport.close()
