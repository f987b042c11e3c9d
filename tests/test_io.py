"""Atomic writes: all or nothing, with the permissions of an ordinary file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from thrombus.io import atomic_folder, atomic_path, staging_folder, write_text


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


def test_atomic_folder_is_all_or_nothing(tmp_path: Path) -> None:
    """A folder output (predictions of a fold, a subject's conversions) replaces its target whole, or
    leaves neither it nor its staging folder; a killed writer's staging folder is swept first."""
    target = tmp_path / "out" / "fold0"
    stale = staging_folder(target)
    stale.mkdir(parents=True)
    (stale / "half.nii.gz").write_bytes(b"killed writer")
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as staging:
            assert not any(staging.iterdir())
            (staging / "a.txt").write_text("a")
            raise RuntimeError("writer failed")
    assert not target.exists() and not stale.exists()
    target.mkdir()
    (target / "old.txt").write_text("old")
    with atomic_folder(target) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"] and not stale.exists()
