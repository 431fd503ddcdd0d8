"""Atomic, durable file replacement."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from drgn_hvdump.fsutil import fsync_dir, write_atomic


def test_write_atomic_replaces_whole_file_0600(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old contents that are longer than the new ones")
    os.chmod(target, 0o644)
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp left


def test_write_atomic_large_data(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    write_atomic(tmp_path / "big", data)
    assert (tmp_path / "big").read_bytes() == data


def test_write_atomic_into_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "absent" / "x", b"data")
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(plain)
