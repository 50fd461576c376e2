"""The agent's own credential, kept in its data directory (mode 0600).

A join token works once; after enrollment the agent keeps the credential it got in exchange,
so restarting it with the same command line just reconnects.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredCredential:
    controlplane: str
    name: str
    agent_id: str
    credential: str


def credential_path(data_dir: Path, name: str) -> Path:
    return data_dir / f"agent-{name}.json"


def load(data_dir: Path, name: str, controlplane: str) -> StoredCredential | None:
    path = credential_path(data_dir, name)
    try:
        stored = StoredCredential(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    return stored if stored.controlplane == controlplane else None


def save(data_dir: Path, stored: StoredCredential) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = credential_path(data_dir, stored.name)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(asdict(stored), handle)
    tmp.replace(path)
    return path


def forget(data_dir: Path, name: str) -> None:
    credential_path(data_dir, name).unlink(missing_ok=True)
