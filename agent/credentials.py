"""The agent's own credential, kept in its data directory (0700) in a file of mode 0600.

After enrollment the agent keeps what it got in exchange for its join token, so restarting it
with the same command line just reconnects: in production its own private key, its short-lived
client certificate and the CA it trusts for the control plane (key and certificate in one file,
so a renewal replaces both at once); with --dev a bearer credential. Anyone who reads the file can
act as the agent, so the modes are enforced every time it is loaded or saved (a directory
made by hand, an old file, a umask), not only when it is created: shell commands run as
other accounts on the same host (``run_as``) and must not be able to read it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from wire.atomicfile import write_atomic


@dataclass(frozen=True)
class StoredCredential:
    controlplane: str
    name: str
    agent_id: str
    credential: str  # --dev: bearer credential; empty in production
    roots: str = ""  # PEM CA(s) the control plane is verified against; empty: system trust
    certificate: str = ""  # PEM client certificate
    key: str = ""  # PEM private key of the certificate
    obtained: float = 0.0  # when the certificate was received (epoch seconds)
    instance_id: str = ""  # this process's instance of the agent name (a pool has several)

    @property
    def mtls(self) -> bool:
        return bool(self.certificate and self.key)


def credential_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"agent-{name}.json"


def secure(data_dir: Path) -> None:
    """Make the data directory 0700 and every credential file in it 0600."""
    if not data_dir.is_dir():
        return
    os.chmod(data_dir, 0o700)
    for path in data_dir.glob("agent-*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o600)


def load(data_dir: Path, name: str, controlplane: str) -> StoredCredential | None:
    path = credential_path(data_dir, name)
    secure(data_dir)
    try:
        stored = StoredCredential(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return stored if stored.controlplane == controlplane else None


def save(data_dir: Path, stored: StoredCredential) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secure(data_dir)
    path = credential_path(data_dir, stored.name)
    write_atomic(path, json.dumps(asdict(stored)).encode(), 0o600)
    return path


def forget(data_dir: Path, name: str) -> None:
    credential_path(data_dir, name).unlink(missing_ok=True)
