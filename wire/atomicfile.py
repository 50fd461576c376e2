"""Files holding keys, certificates and credentials, written so that no one sees half of one.

The control plane's CA, server certificate and admin token, the agent's credential and the
CLI's login and profiles are all written the same way: the bytes go to a new file beside the
real one, created with its final mode (never briefly readable by others, whatever the umask)
and flushed to disk, which then takes the real name in one rename. A reader sees the old file
or the new one; a crash leaves the old one. Shared by the control plane, the agent and the CLI,
so it lives here, with the standard library only (an agent host installs no more than it
needs).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Put `data` at `path` with `mode`, atomically (see the module text); the directory must
    exist. `exclusive`: `path` must not exist yet, else FileExistsError and it is left as it
    is (of two processes making the same file, the first one wins and the second can load it)."""
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have narrowed it
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if `path` exists, unlike a rename
        else:
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make the new name itself durable (the rename is a change of the directory)."""
    with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
