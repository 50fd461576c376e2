"""The agent's end of a `shell` session: one command run on the agent's own host.

It runs as the connection's ``run_as`` account — its uid, primary group and supplementary
groups, with HOME, USER, LOGNAME and SHELL from the password database — never as the agent's
own user, whose process environment (``/proc/<agent>/environ``) and credential file hold the
agent's secrets. Only ``run_as: agent`` runs it as the agent's user, which the policy must
say explicitly (see ``docs/ssh.md``). An account the agent cannot switch to (it does not run
as root; the account does not exist; root or the agent's own uid under another name) fails
closed: nothing runs, status 255 and the reason.

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
import pwd
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO

from agent.engines import Receive, SendFrame
from agent.term.stream import (
    READ_SIZE,
    Refused,
    TermProcess,
    refuse,
    run_session,
    signalled,
)
from wire.term import codec

__all__ = [
    "INHERITED",
    "NO_TERMINAL",
    "RUN_AS_AGENT",
    "Account",
    "ShellTarget",
    "child_env",
    "own_account",
    "run",
    "running_as",
]

INHERITED = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
"""The agent's own variables a command sees (unless the connection's env sets them)."""
NO_TERMINAL = "a shell connection runs commands; use `gatehouse exec NAME -- CMD`"
DEFAULT_TIMEOUT = 300.0
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
_REAP_TIMEOUT = 5.0
RUN_AS_AGENT = "agent"


@dataclass(frozen=True, slots=True)
class Account:
    """Who a command runs as, from the password and group databases."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    @classmethod
    def resolve(cls, run_as: str | None) -> Account | None:
        """The account for ``run_as``; None for ``agent`` (the agent's own user). Raises
        Refused when the command must not run: no run_as, an unknown account, one that is
        root or the agent itself under another name, or an agent that cannot switch users."""
        if run_as is None:
            raise Refused(
                "this shell connection names no run_as account, so its commands would run as "
                "the agent's own user and could read the agent's secrets; set target.run_as "
                "in the policy (an unprivileged account, or `agent` to accept that)"
            )
        if run_as == RUN_AS_AGENT:
            return None
        try:
            entry = pwd.getpwnam(run_as)
        except KeyError:
            raise Refused(
                f"run_as account {run_as!r} does not exist on the agent's host; create it "
                "(e.g. useradd --system) or fix run_as in the policy"
            ) from None
        own = os.geteuid()
        if entry.pw_uid in (0, own):
            raise Refused(
                f"run_as account {run_as!r} has uid {entry.pw_uid}, "
                + ("root" if entry.pw_uid == 0 else "the agent's own")
                + ", which can read the agent's secrets; name an unprivileged account "
                "(or say run_as: agent if that is meant)"
            )
        if own != 0:
            raise Refused(
                f"the agent runs as uid {own}, not root, so it cannot switch to run_as "
                f"account {run_as!r}; run the agent as root, or set run_as: agent in the "
                "policy (which exposes the agent's secrets to the commands)"
            )
        return cls(
            name=entry.pw_name,
            uid=entry.pw_uid,
            gid=entry.pw_gid,
            groups=tuple(os.getgrouplist(entry.pw_name, entry.pw_gid)),
            home=entry.pw_dir,
            shell=entry.pw_shell or "/bin/sh",
        )


@dataclass(frozen=True, slots=True)
class ShellTarget:
    """How commands run: the connection's ``target`` as the control plane pushed it."""

    run_as: str | None = None
    workdir: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT
    shell: tuple[str, ...] = codec.DEFAULT_SHELL
    max_output: int = DEFAULT_MAX_OUTPUT

    @classmethod
    def from_spec(cls, spec: Mapping[str, object]) -> ShellTarget:
        """From the pushed target (a protobuf Struct as a dict, so numbers arrive as floats)."""
        env = spec.get("env") or {}
        shell = spec.get("shell") or codec.DEFAULT_SHELL
        if not isinstance(env, Mapping) or not isinstance(shell, list | tuple):
            raise Refused("the connection's env or shell is malformed; fix it in the policy")
        try:
            return cls(
                run_as=str(spec["run_as"]) if spec.get("run_as") else None,
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


def running_as(target: Mapping[str, object]) -> codec.RunAs:
    """Whose account this connection's commands run as, told to the control plane when the
    session attaches so that its command event records the real uid before anything runs
    (``run_as: agent`` on an agent running as root is root, and says so)."""
    run_as = target.get("run_as")
    name = str(run_as) if run_as else None
    mode = "agent" if name == RUN_AS_AGENT else "account"
    named = None if mode == "agent" else name
    try:
        account = Account.resolve(name)
    except Refused as exc:
        return codec.RunAs(mode, account=named, error=str(exc))
    return _as_reported(account, named)


def _as_reported(account: Account | None, named: str | None) -> codec.RunAs:
    """`account` (None: the agent's own user) as the trail records it."""
    if account is not None:
        return codec.RunAs("account", account.uid, account.name, account=named)
    return own_account()


def own_account() -> codec.RunAs:
    """The account the agent itself runs as (`run_as: agent` commands too)."""
    uid = os.geteuid()
    try:
        user: str | None = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid without a name (a container's): the number says it all
        user = None
    return codec.RunAs("agent", uid, user)


def child_env(
    target_env: Mapping[str, str], term: str | None = None, account: Account | None = None
) -> dict[str, str]:
    """The environment a command runs with: `INHERITED` (whose home and name are the run_as
    account's), then ``TERM``, then the target's."""
    env = {name: os.environ[name] for name in INHERITED if name in os.environ}
    env.setdefault("PATH", os.defpath)
    if account is not None:
        env.update(HOME=account.home, USER=account.name, LOGNAME=account.name, SHELL=account.shell)
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
    account = Account.resolve(target.run_as)
    reported = _as_reported(account, target.run_as if account is not None else None)
    argv = list(start.argv) if start.argv else [*target.shell, start.command_line()]
    env = child_env(target.env, start.env.get("TERM"), account)
    try:
        process = await _LocalProcess.spawn(argv, target.workdir, env, account)
    except OSError as exc:
        raise _not_started(exc, argv[0], target.workdir, env["PATH"]) from None
    process.run_as = reported
    return process


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


def _popen(
    argv: list[str], workdir: str | None, env: dict[str, str], account: Account | None
) -> tuple[subprocess.Popen[bytes], BinaryIO, BinaryIO, BinaryIO]:
    """Start the child (a fork and exec: quick, and Popen reports a failed exec as OSError);
    returns it with our ends of its stdin, stdout and stderr, which the loop will own."""
    if workdir is None and account is not None:
        # Not the agent's own directory (its data directory, perhaps): the account's home.
        workdir = account.home if os.path.isdir(account.home) else "/"
    pipes = [os.pipe() for _ in range(3)]  # close-on-exec: the child gets only its own ends
    (in_read, in_write), (out_read, out_write), (err_read, err_write) = pipes
    try:
        child = subprocess.Popen(
            argv,
            stdin=in_read,
            stdout=out_write,
            stderr=err_write,
            cwd=workdir,
            env=env,
            start_new_session=True,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else list(account.groups),
        )
    except BaseException:
        for fd in (in_write, out_read, err_read):
            os.close(fd)
        raise
    finally:
        for fd in (in_read, out_write, err_write):
            os.close(fd)  # the child's ends: only the child holds them now
    return (
        child,
        os.fdopen(in_write, "wb", 0),
        os.fdopen(out_read, "rb", 0),
        os.fdopen(err_read, "rb", 0),
    )


def _exit_of(
    child: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop
) -> asyncio.Future[None]:
    """Resolved once `child` exited and was reaped: through a pidfd the loop watches (Linux
    5.3 and later), else a thread that waits for it."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except (AttributeError, OSError):
        return loop.run_in_executor(None, _wait_quietly, child)
    exited: asyncio.Future[None] = loop.create_future()

    def on_exit() -> None:
        if child.poll() is None:
            return  # not yet (a spurious wake-up)
        loop.remove_reader(pidfd)
        os.close(pidfd)
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, on_exit)
    return exited


def _wait_quietly(child: subprocess.Popen[bytes]) -> None:
    child.wait()


class _LocalProcess:
    """A child process group on the agent's host, as `stream.TermProcess`.

    Started by `subprocess.Popen`, whose C child code switches the account (setgroups,
    setgid, setuid) with no Python in between — the event loop's own subprocess support
    cannot switch accounts, and a Python `preexec_fn` is unsafe in a threaded process. Its
    pipes are then handed to the loop, and its exit is noticed through a pidfd."""

    def __init__(
        self,
        child: subprocess.Popen[bytes],
        stdout: asyncio.StreamReader,
        stderr: asyncio.StreamReader,
        stdin: asyncio.StreamWriter,
        exited: asyncio.Future[None],
    ) -> None:
        self._child = child
        self._stdout = stdout
        self._stderr = stderr
        self._stdin = stdin
        self._group = child.pid  # start_new_session: the child leads its own group
        self._child_exited = exited
        self._exited = asyncio.create_task(self._reap())
        self.run_as: codec.RunAs | None = None  # who it runs as, reported in its exit

    @classmethod
    async def spawn(
        cls, argv: list[str], workdir: str | None, env: dict[str, str], account: Account | None
    ) -> _LocalProcess:
        """Start `argv`; raises OSError when it cannot start (as Popen reports it)."""
        loop = asyncio.get_running_loop()
        child, to_child, from_stdout, from_stderr = _popen(argv, workdir, env, account)
        stdout = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
        stderr = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
        try:
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stdout, loop=loop), from_stdout
            )
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(stderr, loop=loop), from_stderr
            )
            transport, protocol = await loop.connect_write_pipe(
                lambda: asyncio.streams.FlowControlMixin(loop=loop), to_child
            )
        except BaseException:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)  # nothing runs that nobody watches
            for pipe in (to_child, from_stdout, from_stderr):
                pipe.close()
            raise
        stdin = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(child, stdout, stderr, stdin, _exit_of(child, loop))

    async def _reap(self) -> int:
        """The child's status; what it left behind in its group is stopped with it, which
        also closes the pipes those leftovers held open, so the output reaches its end."""
        await self._child_exited
        self._kill_group(signal.SIGKILL)
        status = self._child.returncode
        assert status is not None
        return status

    def _kill_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._group, sig)

    async def read_stdout(self) -> bytes:
        return await self._stdout.read(READ_SIZE)

    async def read_stderr(self) -> bytes:
        return await self._stderr.read(READ_SIZE)

    async def write(self, data: bytes) -> None:
        with contextlib.suppress(ConnectionError):  # it stopped reading: input dropped
            self._stdin.write(data)
            await self._stdin.drain()

    def write_eof(self) -> None:
        with contextlib.suppress(ConnectionError):
            self._stdin.close()

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
        self._stdin.close()
        self._stdout.feed_eof()
        self._stderr.feed_eof()
