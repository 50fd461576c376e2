"""Secret references (`env:NAME`, `file:/path`), resolved only here, inside the agent's network.

The control plane stores and pushes references, never values; a value lives in this process
only while it logs in to a target and is never logged or sent anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path


class SecretError(Exception):
    """A reference could not be resolved; the message names the reference, never a value."""


def resolve(reference: str) -> str:
    kind, _, name = reference.partition(":")
    if kind == "env":
        value = os.environ.get(name)
        if value is None:
            raise SecretError(f"environment variable {name} is not set on the agent")
        return value
    if kind == "file":
        try:
            return Path(name).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretError(f"cannot read secret file {name}: {exc.strerror}") from None
    raise SecretError(f"unsupported secret reference {reference.split(':', maxsplit=1)[0]!r}:…")
