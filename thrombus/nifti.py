"""Reading and writing NIfTI volumes with the checks every step needs.

A step never trusts a volume blindly: a 4-D image where a 3-D one is expected, NaNs, or an all-zero
volume are reported with the subject and file named, instead of flowing on as garbage.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from thrombus.errors import UserError
from thrombus.io import PathLike, atomic_path


class VolumeError(UserError, ValueError):
    """A volume that cannot be used as it is; the message names the file and what to do."""


def save_nifti(image: nib.Nifti1Image, target: PathLike) -> Path:
    """Save atomically; clears free-text header fields so nothing identifying can ride along."""
    header = image.header
    header["descrip"] = b""
    header["aux_file"] = b""
    header["db_name"] = b""
    with atomic_path(target) as tmp:
        nib.save(image, tmp)
    return Path(target)


def save_array(data: np.ndarray, affine: np.ndarray, target: PathLike, dtype: type | None = None) -> Path:
    """Save an array on a grid, with qform and sform both set to `affine` (code 1, scanner)."""
    array = np.asarray(data if dtype is None else data.astype(dtype))
    image = nib.Nifti1Image(array, affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return save_nifti(image, target)


def image_like(data: np.ndarray, source: nib.Nifti1Image) -> nib.Nifti1Image:
    """A float32 image on the grid of `source` (qform and sform kept with their codes): a derived image
    (DWI trace, ADC) keeps the scanner geometry of the series it came from."""
    header = source.header.copy()
    header.set_data_dtype(np.float32)
    image = nib.Nifti1Image(data.astype(np.float32), source.affine, header)
    image.set_qform(source.get_qform(), code=int(source.header["qform_code"]))
    image.set_sform(source.get_sform(), code=int(source.header["sform_code"]))
    return image


def check_volume(data: np.ndarray, path: PathLike, what: str = "volume", allow_4d: bool = False) -> None:
    """Raise VolumeError for data no step can use; `what` names the subject and sequence."""
    if data.size == 0:
        raise VolumeError(f"{what}: {path} is empty (shape {data.shape}); re-export the series")
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]  # a trailing singleton axis is a 3-D volume; it gets the same checks
    if data.ndim == 4 and not allow_4d:
        raise VolumeError(
            f"{what}: {path} is 4-D {data.shape}, a 3-D volume was expected; "
            "point the sample sheet at a single-volume series or select one volume"
        )
    if data.ndim not in (3, 4):
        raise VolumeError(f"{what}: {path} has {data.ndim} dimensions {data.shape}, expected 3")
    if not np.all(np.isfinite(data)):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise VolumeError(f"{what}: {path} holds {bad} NaN/inf voxels; fix or re-export the series")
    if not np.any(data):
        raise VolumeError(f"{what}: {path} is all zeros; the series is blank or was exported wrongly")


def load_volume(path: PathLike, what: str = "volume", allow_4d: bool = False) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Load float32 data (a trailing singleton 4th axis squeezed) and the image, after `check_volume`."""
    path = Path(path)
    if not path.exists():
        raise VolumeError(f"{what}: {path} does not exist")
    try:
        image = nib.load(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, ValueError, zlib.error) as err:
        raise VolumeError(
            f"{what}: {path} is not a readable NIfTI file ({err}); it is truncated or damaged: "
            "rerun the step that wrote it (delete the file first) or re-export the series"
        ) from err
    check_volume(data, path, what, allow_4d=allow_4d)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return data, image


def orientation(affine: np.ndarray) -> str:
    """Axis codes such as 'LAS' for an affine."""
    return "".join(nib.aff2axcodes(affine))


#: The opposite end of each anatomical axis code.
_OPPOSITE = {"L": "R", "R": "L", "A": "P", "P": "A", "S": "I", "I": "S"}


def screen_sides(affine: np.ndarray) -> tuple[str, str, str, str]:
    """(left, right, bottom, top) of an axial panel drawn as `imshow(slice.T, origin="lower")`: the
    patient directions that array axes 0 and 1 run from and to. Figures print them, since a grid's
    orientation decides on which side of the screen the patient's left lands."""
    codes = nib.aff2axcodes(affine)
    return _OPPOSITE[codes[0]], codes[0], _OPPOSITE[codes[1]], codes[1]


#: How every picture lays out a grid whose affine is known: radiological convention (the patient's right on
#: the screen's left), anterior up, axial slices along the last axis. Without it each panel followed its own
#: grid's axes, so one center's scans came out mirrored against another's beside them.
DISPLAY_AXES: tuple[str, str, str] = ("L", "A", "S")


def for_display(arrays: Sequence[np.ndarray | None], affine: np.ndarray) -> tuple[list[np.ndarray | None], np.ndarray]:
    """The arrays (one grid, extra trailing axes allowed) turned to `DISPLAY_AXES` by axis flips and swaps
    only, no resampling, with the turned grid's affine; arrays already in that layout come back as they are."""
    from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

    turn = ornt_transform(io_orientation(affine), axcodes2ornt(DISPLAY_AXES))
    if np.array_equal(turn, [[0, 1], [1, 1], [2, 1]]):
        return list(arrays), affine
    shape = next(array.shape[:3] for array in arrays if array is not None)
    turned = [None if array is None else np.ascontiguousarray(apply_orientation(array, turn)) for array in arrays]
    return turned, affine @ inv_ornt_aff(turn, shape)


def mark_sides(ax: Any, affine: np.ndarray, colour: str = "yellow") -> None:
    """The patient directions at the four edges of an axial panel (see `screen_sides`)."""
    left, right, bottom, top = screen_sides(affine)
    style = {"transform": ax.transAxes, "color": colour, "fontsize": 8, "fontweight": "bold"}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
