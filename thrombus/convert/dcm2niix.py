"""Running dcm2niix on exactly one series and collecting what it wrote.

The series' files are linked into a private staging folder first, so dcm2niix converts what the
checks in `series.py` approved and nothing else that shares the folder.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import dcm2niix
import nibabel as nib

from thrombus.convert.series import Series
from thrombus.errors import UserError


class ConversionError(UserError, RuntimeError):
    """dcm2niix failed or wrote nothing usable; the message carries its output."""


@dataclass(frozen=True)
class Dcm2niixOutput:
    """One NIfTI file dcm2niix wrote, with its sidecar and diffusion tables when present."""

    nifti: Path
    sidecar: dict
    bvals: tuple[float, ...] | None
    shape: tuple[int, ...]

    @property
    def name(self) -> str:
        return self.nifti.name.removesuffix(".nii.gz").removesuffix(".nii")

    @property
    def volumes(self) -> int:
        return self.shape[3] if len(self.shape) == 4 else 1

    @property
    def image_type(self) -> tuple[str, ...]:
        return tuple(str(v).upper() for v in self.sidecar.get("ImageType", ()))

    @property
    def echo(self) -> int | None:
        match = re.search(r"_e(\d+)(?:_|$)", self.name)
        return int(match.group(1)) if match else None


def binary() -> str:
    """Path of the dcm2niix binary that the PyPI package ships."""
    return dcm2niix.bin


@functools.cache
def version() -> str:
    """dcm2niix's own version string (e.g. 'v1.0.20240202'), recorded in every conversion log."""
    done = subprocess.run([binary(), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"v\d+\.\d+\.\d+\S*", done.stdout + done.stderr)
    return match.group(0) if match else "unknown"


def stage_series(series: Series, staging: Path) -> Path:
    """Link (or copy where links are refused) the series' files into `staging/in`."""
    target = staging / "in"
    target.mkdir(parents=True)
    for index, record in enumerate(sorted(series.files, key=lambda f: str(f.path))):
        link = target / f"{index:06d}.dcm"
        try:
            os.symlink(record.path.resolve(), link)
        except OSError:
            shutil.copy2(record.path, link)
    return target


def run(series: Series, staging: Path, compress: bool = True, what: str = "") -> tuple[list[Dcm2niixOutput], str]:
    """Convert one series; returns the outputs and dcm2niix's console text.

    `what` (center, subject, sequence) heads the error, which is all a failed job's log shows.
    """
    source = stage_series(series, staging)
    out = staging / "out"
    out.mkdir()
    command = [
        binary(), "-b", "y", "-ba", "y", "-z", "y" if compress else "n",
        "-f", "%s_%d", "-o", str(out), str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    console = (done.stdout + done.stderr).strip()
    outputs = collect(out)
    if done.returncode != 0 or not outputs:
        tail = "\n".join(console.splitlines()[-15:])
        raise ConversionError(
            f"{what + ': ' if what else ''}dcm2niix {_exit_reason(done.returncode)} with {len(outputs)} NIfTI "
            f"file(s) for series '{series.description}' in {series.folder}:\n{tail}"
        )
    return outputs, console


def _exit_reason(code: int) -> str:
    """A negative code is a signal; named, it tells a full disk (SIGXFSZ) or the OOM killer (SIGKILL) apart."""
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    hint = {"SIGXFSZ": " (file size limit: the disk or quota of the staging folder is full)",
            "SIGKILL": " (killed, often for memory)"}.get(name, "")
    return f"killed by {name}{hint}"


def _read_table(path: Path) -> tuple[float, ...] | None:
    if not path.exists():
        return None
    return tuple(float(v) for v in path.read_text().split())


def collect(folder: Path) -> list[Dcm2niixOutput]:
    """Every NIfTI in a dcm2niix output folder, with its JSON sidecar and .bval."""
    outputs = []
    for nifti in sorted(folder.glob("*.nii*")):
        stem = nifti.name.removesuffix(".nii.gz").removesuffix(".nii")
        sidecar_path = folder / f"{stem}.json"
        sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.exists() else {}
        shape = tuple(int(n) for n in nib.load(str(nifti)).shape)
        outputs.append(Dcm2niixOutput(nifti, sidecar, _read_table(folder / f"{stem}.bval"), shape))
    return outputs
