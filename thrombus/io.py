"""File I/O shared by every step: atomic writes, checksums, JSON.

Every output is written under a temporary name in its final folder and renamed into place, so a
killed job or a full disk never leaves a truncated file that Snakemake (or a person) would trust.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

PathLike = str | os.PathLike[str]


def current_umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.

    The suffix of the temporary file matches the target's (``.nii.gz`` included), so writers that pick
    a format from the file name behave as they would on the real name. The file gets the permissions
    of an ordinary new file (0666 less the umask), not mkstemp's private 0600, so that a group sharing
    a cluster project can read the results.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(target.suffixes) or ".tmp"
    remove_stale_temporaries(target, suffix)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def staging_folder(target: Path) -> Path:
    """The hidden sibling a folder output is written in first. A fixed name: only one job writes a
    given output at a time (Snakemake's locks), so one found when a write starts is a killed writer's."""
    return target.with_name(f".{target.name}.partial")


@contextlib.contextmanager
def atomic_folder(target: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; it replaces `target` only if the block succeeds,
    so the folder holds everything its writer made or does not exist."""
    target = Path(target)
    staging = staging_folder(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def remove_stale_temporaries(target: Path, suffix: str) -> list[Path]:
    """Delete temporaries of `target` left by a writer that was killed (SIGKILL, a lost node): no
    `finally` ran for them. Only one job writes a given output at a time (Snakemake's locks), so any
    temporary of it that exists when the next write starts is stale."""
    stale = [p for p in target.parent.glob(f".{glob.escape(target.name)}.*{glob.escape(suffix)}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def write_text(target: PathLike, text: str) -> Path:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def _json_default(value: Any) -> Any:
    """Make numpy scalars/arrays and paths JSON-serialisable."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def dumps_json(data: Any) -> str:
    """Stable JSON text: sorted keys and a final newline, so reruns give byte-identical files."""
    return json.dumps(data, indent=2, sort_keys=True, default=_json_default, ensure_ascii=False) + "\n"


def write_json(target: PathLike, data: Any) -> Path:
    """Write JSON atomically with stable formatting."""
    return write_text(target, dumps_json(data))


def read_json(path: PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of one file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_files(paths: Iterable[PathLike], root: PathLike | None = None) -> str:
    """One checksum over several files (names relative to `root`, then contents), order-independent.

    Used for a DICOM series: the checksum changes when a file is added, removed, renamed or edited.
    """
    digest = hashlib.sha256()
    root_path = Path(root) if root is not None else None
    entries = []
    for path in paths:
        path = Path(path)
        name = path.relative_to(root_path).as_posix() if root_path else path.name
        entries.append((name, path))
    for name, path in sorted(entries):
        digest.update(name.encode("utf-8") + b"\0")
        digest.update(sha256_file(path).encode("ascii") + b"\n")
    return digest.hexdigest()
