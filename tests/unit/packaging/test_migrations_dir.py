"""The migrations are found where an install puts them, and a broken install says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.store import migrations

ROOT = Path(__file__).resolve().parents[3]


def test_the_checkout_finds_its_alembic_folder_through_the_package() -> None:
    assert migrations.migrations_dir() == ROOT / "alembic"
    # The editable install maps gatehouse_migrations to the same folder the wheel ships.
    assert ROOT / "alembic" in migrations._installed()


def test_the_installed_package_comes_before_a_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "site-packages" / "gatehouse_migrations"
    (shipped / "versions").mkdir(parents=True)
    (shipped / "env.py").write_text("")
    monkeypatch.setattr(migrations, "_installed", lambda: [shipped])
    assert migrations.migrations_dir() == shipped


def test_no_migrations_anywhere_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a wheel without them looked like: parents[2] is site-packages, whose alembic/ is
    # the library, not the migrations.
    (tmp_path / "alembic").mkdir()
    monkeypatch.setattr(migrations, "_installed", lambda: [])
    monkeypatch.setattr(migrations, "_CHECKOUT", tmp_path / "alembic")
    with pytest.raises(migrations.MigrationsMissing, match="reinstall gatehouse"):
        migrations.migrations_dir()
