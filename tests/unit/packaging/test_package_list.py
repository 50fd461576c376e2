"""The wheel lists its packages by hand; a new sub-package left off the list installs as
nothing, and the installed control plane fails at its first import of it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
COMPONENTS = ("controlplane", "agent", "cli", "wire", "redact", "trail", "devenv")


def _listed() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(config["tool"]["setuptools"]["packages"])


def _on_disk() -> set[str]:
    found = set()
    for component in COMPONENTS:
        for init in (ROOT / component).rglob("__init__.py"):
            package = init.parent.relative_to(ROOT)
            if "node_modules" not in package.parts:
                found.add(".".join(package.parts))
    return found


def test_every_package_of_the_checkout_is_in_the_wheel() -> None:
    missing = sorted(_on_disk() - _listed())
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
