"""Atomic writes: all or nothing, with the permissions of an ordinary file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from thrombus.io import atomic_path, write_text


def test_written_files_follow_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o027)
    try:
        target = write_text(tmp_path / "table.md", "x")
    finally:
        os.umask(previous)
    assert target.stat().st_mode & 0o777 == 0o640


@pytest.mark.fault
def test_a_failed_write_leaves_neither_target_nor_temporary(tmp_path: Path) -> None:
    target = tmp_path / "stack.nii.gz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
