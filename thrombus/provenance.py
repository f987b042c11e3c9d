"""The JSON record every step leaves beside its outputs: inputs' checksums, parameters, versions,
timing and QC values, so a reviewer can audit a run without re-running it (as nnU-Net's plain JSON
artefacts allow)."""

from __future__ import annotations

import platform
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from thrombus import __version__
from thrombus.io import PathLike, write_json


def package_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of the named distributions ('absent' when not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@dataclass
class StepRecord:
    """Collects what a step did; `write` stores it as JSON (atomically, keys sorted)."""

    step: str
    subject: str | None = None
    center: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    qc: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self, seconds: float | None = None) -> dict[str, Any]:
        """The record as plain data; timing kept apart so it can be left out of reproducibility checks."""
        return {
            "step": self.step,
            "subject": self.subject,
            "center": self.center,
            "inputs": self.inputs,
            "params": self.params,
            "outputs": self.outputs,
            "qc": self.qc,
            "versions": {"thrombus": __version__, "python": platform.python_version(), **self.versions},
            "timing": {"seconds": round(seconds if seconds is not None else time.perf_counter() - self.started, 3)},
        }

    def write(self, target: PathLike) -> Path:
        """Write the record; call last, once the outputs exist."""
        return write_json(target, self.as_dict())


def machine_description() -> str:
    """CPU model and the cores this process may use (RESULTS.md names the machine its figures come from)."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {len(os.sched_getaffinity(0))} cores, {platform.system()} {platform.release()}"


def checkout_commit() -> str:
    """The commit of the checkout this package runs from, and whether it has uncommitted changes (what a row of
    RESULTS.md was computed with)."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=here).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=here).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" with uncommitted changes" if dirty else "")
