"""Keys and credentials are written whole, with their mode from the first byte, and a file
that must be new is never replaced."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from wire.atomicfile import write_atomic


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that narrows nothing, and one that narrows everything, are both overridden."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_file_has_its_mode_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    write_atomic(tmp_path / "secret", b"s", 0o600)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    os.umask(0o077)
    write_atomic(tmp_path / "public", b"p", 0o644)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644


def test_a_replaced_secret_is_never_readable_by_others_nor_seen_in_part(tmp_path: Path) -> None:
    path = tmp_path / "credential.json"
    path.write_bytes(b"old")
    path.chmod(0o644)  # an old file made by hand: its mode does not carry over
    seen: set[tuple[bytes, int]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            try:
                with path.open("rb") as handle:
                    seen.add((handle.read(), stat.S_IMODE(os.fstat(handle.fileno()).st_mode)))
            except FileNotFoundError:
                seen.add((b"<missing>", 0))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(200):
            write_atomic(path, b"new" * 1000, 0o600)
    finally:
        stop.set()
        watcher.join()
    assert seen <= {(b"old", 0o644), (b"new" * 1000, 0o600)}
    assert path.read_bytes() == b"new" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["credential.json"]  # no temporary left


def test_an_exclusive_write_leaves_an_existing_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    write_atomic(path, b"first", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", 0o600, exclusive=True)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["ca.key"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_bytes(b"old")
    with pytest.raises(TypeError):
        write_atomic(path, "not bytes", 0o600)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["tokens.json"]
