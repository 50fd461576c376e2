"""Where the Alembic environment and revisions are, in a checkout and in an installed wheel.

The repository keeps them in the top-level `alembic/` folder; the wheel ships that folder as
the package `gatehouse_migrations` (pyproject.toml maps it), a name that cannot shadow the
`alembic` library. Both have no `__init__.py`: Alembic loads `env.py` and the revisions by
path, never as modules of a package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "gatehouse_migrations"
_CHECKOUT = Path(__file__).resolve().parents[2] / "alembic"


class MigrationsMissing(RuntimeError):
    """Neither the installed package nor a checkout holds the migrations: a broken install."""


def migrations_dir() -> Path:
    """The folder holding `env.py`, `script.py.mako` and `versions/`.

    The installed package comes first (a wheel, or an editable install mapping it to the
    checkout); a checkout's own folder serves a tree used without installing it.
    """
    for candidate in (*_installed(), _CHECKOUT):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise MigrationsMissing(
        f"the database migrations are missing: no {PACKAGE} package with env.py and versions/ "
        f"is installed and {_CHECKOUT} is not a checkout's alembic/ folder; reinstall gatehouse"
    )


def _installed() -> list[Path]:
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return []
    if spec is None or spec.submodule_search_locations is None:
        return []
    return [Path(location) for location in spec.submodule_search_locations]
