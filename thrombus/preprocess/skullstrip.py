"""Skull stripping, the stage: a brain mask of one head on its own grid, its QC and its provenance.

The network that draws the mask is a backend (`thrombus.preprocess.extractors`, one module each, chosen
by `skullstrip.backend`); this module reorients the image to RAS, hands the array to the backend, checks
that the mask is of plausible size and writes the mask, the brain image and the step record. HD-BET's
options (folds, mirroring, precision) are shared by its two backends, so they live here.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from thrombus.device import PRECISIONS, cpu_has_native_bf16, resolve_device, resolve_precision
from thrombus.io import PathLike, sha256_file
from thrombus.nifti import VolumeError, load_volume, save_array
from thrombus.preprocess import extractors
from thrombus.provenance import StepRecord, package_versions

logger = logging.getLogger(__name__)

N_FOLDS = 5
#: A mask outside [min_brain_ml x 0.5, max_brain_ml x 1.5] is refused whatever its shape: under 425 ml no
#: adult brain is whole; over 3150 ml the mask holds more than any skull does.
HARD_LIMITS: tuple[float, float] = (0.5, 1.5)
#: The brain's share of the head (Otsu foreground) in a plausible mask; the synthetic and real heads of
#: the tests lie at 0.60-0.71 (a field of view with the neck lowers it, a tight one raises it).
BRAIN_FRACTION_OF_HEAD: tuple[float, float] = (0.25, 0.9)


class BrainMaskError(VolumeError):
    """The brain mask is empty or of implausible size: a wrong series, a bad orientation, a cut head."""


@dataclass(frozen=True)
class HDBetOptions:
    """How to run HD-BET; every field is recorded in the step's provenance JSON.

    mirror: test-time mirroring: "none", "all", or a list of axes of the array given to `brain_mask`
    (with `skullstrip_file`, RAS axes: 0 left-right, 1 front-back, 2 bottom-top); every combination of
    the listed axes is run (2**k passes per fold), as HD-BET does.
    threads: CPU threads for torch; the Snakemake rule passes its `threads`.
    min_brain_ml / max_brain_ml: the published range of adult intracranial volume, which HD-BET's mask
    follows: men 1469 +- 102 ml, women 1289 +- 111 ml (Matsumae et al., J Neurosurg 1996, MRI of 49
    adults; 1496 +- 100 and 1311 +- 90 ml in a second MRI series, Ahmad et al., JBCS). 850 ml is the
    women's mean - 4 SD; 2100 ml the men's mean + 6 SD, wider above because a mask drawn on SWI or T2*
    keeps some extra-cerebral CSF (a real SWI mask of 2243 ml was right). Outside it a mask of brain
    shape is flagged, not refused (`_check_plausible`).
    weights_dir: folder of the official hd-bet 2.x weights (holding `fold_all/`), for that backend only.
    """

    backend: str = "hdbet_minimal"
    folds: tuple[int, ...] = (0,)
    mirror: str | tuple[int, ...] = "none"
    precision: str = "auto"
    device: str = "auto"
    threads: int = 1
    largest_component: bool = True
    fill_holes: bool = True
    min_brain_ml: float = 850.0
    max_brain_ml: float = 2100.0
    weights_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in extractors.names():
            raise ValueError(f"HD-BET backend {self.backend!r} unknown; expected one of {extractors.names()}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} unknown; expected one of {PRECISIONS}")
        folds = tuple(int(f) for f in self.folds)
        if not folds or len(set(folds)) != len(folds) or not all(0 <= f < N_FOLDS for f in folds):
            raise ValueError(f"folds {self.folds!r}: expected distinct fold indices in 0..{N_FOLDS - 1}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if not 0 <= self.min_brain_ml < self.max_brain_ml:
            raise ValueError(f"brain volume bounds [{self.min_brain_ml}, {self.max_brain_ml}] ml are not a range")
        object.__setattr__(self, "folds", folds)
        object.__setattr__(self, "mirror", _parse_mirror(self.mirror))
        if self.weights_dir is not None:
            object.__setattr__(self, "weights_dir", Path(self.weights_dir))

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the provenance record."""
        return dataclasses.asdict(self)


def _parse_mirror(mirror: str | Sequence[int]) -> tuple[int, ...]:
    """'none' -> (), 'all' -> (0, 1, 2), a list of axes -> sorted tuple, anything else refused."""
    if isinstance(mirror, str):
        named = {"none": (), "all": (0, 1, 2)}
        if mirror not in named:
            raise ValueError(f"mirror {mirror!r}: expected 'none', 'all' or a list of axes among 0, 1, 2")
        return named[mirror]
    axes = tuple(sorted({int(a) for a in mirror}))
    if not all(0 <= a <= 2 for a in axes):
        raise ValueError(f"mirror axes {mirror!r}: expected axes among 0, 1, 2")
    return axes


def brain_mask(
    volume: np.ndarray, spacing: Sequence[float], options: HDBetOptions | None = None
) -> np.ndarray:
    """Boolean brain mask of a 3-D head volume, on the volume's own grid.

    The array's axes must run roughly left-right, front-back, bottom-top in that order (any direction:
    flips do not matter to the network, axis swaps do); `skullstrip_file` reorients to RAS first.
    `spacing` is the voxel size in mm along the same axes.
    """
    options = options or HDBetOptions()
    if volume.ndim != 3 or len(spacing) != 3:
        raise VolumeError(f"brain_mask needs a 3-D volume and 3 spacings, got shape {volume.shape}, spacing {spacing}")
    return extractors.load(options.backend).extract(volume, spacing, options)


# ---------------------------------------------------------------------------------------------------
# files, QC and provenance


def _to_ras(volume: np.ndarray, image: nib.Nifti1Image) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """The volume with axes permuted and flipped to the closest RAS order (a view, no resampling),
    its spacing in that order, and the orientation transform to undo it."""
    ornt = nib.orientations.io_orientation(image.affine)
    ras = nib.orientations.apply_orientation(volume, ornt)
    zooms = np.asarray(image.header.get_zooms()[:3], dtype=float)
    spacing = [0.0, 0.0, 0.0]
    for axis, (new_axis, _) in enumerate(ornt):
        spacing[int(new_axis)] = float(zooms[axis])
    undo = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt)
    return ras, tuple(spacing), undo


def _head_mask(volume: np.ndarray) -> np.ndarray:
    """Head = Otsu foreground with enclosed holes filled; only a reference for the QC fraction."""
    from skimage.filters import threshold_otsu

    return ndi.binary_fill_holes(volume > threshold_otsu(volume))


def mask_qc(mask: np.ndarray, volume: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """Brain volume (ml), head volume (ml) and the brain's fraction of the head."""
    brain_ml = float(np.count_nonzero(mask)) * voxel_ml
    head_ml = float(np.count_nonzero(_head_mask(volume) | mask)) * voxel_ml
    return {
        "brain_volume_ml": round(brain_ml, 2),
        "head_volume_ml": round(head_ml, 2),
        "brain_fraction_of_head": round(brain_ml / head_ml, 4) if head_ml else 0.0,
    }


def _check_plausible(qc: dict[str, Any], options: HDBetOptions, what: str, path: Path) -> list[str]:
    """Refuse an empty or impossible mask; flag one of unusual volume but plausible shape (returns the flags).

    Outside the published range (`min_brain_ml`, `max_brain_ml`) a mask is kept with a flag for a person
    to look at when its shape is plausible (between `BRAIN_FRACTION_OF_HEAD` of the head: a mask that
    swallowed the head or kept a fragment of the brain is not) and its volume within `HARD_LIMITS`
    times the range; otherwise it is refused before anyone registers or trains on it.
    """
    ml, fraction = qc["brain_volume_ml"], qc["brain_fraction_of_head"]
    if options.min_brain_ml <= ml <= options.max_brain_ml:
        return []
    low, high = options.min_brain_ml * HARD_LIMITS[0], options.max_brain_ml * HARD_LIMITS[1]
    shaped = BRAIN_FRACTION_OF_HEAD[0] <= fraction <= BRAIN_FRACTION_OF_HEAD[1]
    if ml > 0 and low <= ml <= high and shaped:
        flag = (f"brain mask of {ml:.0f} ml outside the published adult range [{options.min_brain_ml:.0f}, "
                f"{options.max_brain_ml:.0f}] ml ({100 * fraction:.0f}% of the head): look at its QC picture")
        logger.warning("%s: %s", what, flag)
        return [flag]
    problem = "is empty" if ml == 0 else f"holds {ml:.0f} ml, {100 * fraction:.0f}% of the head"
    raise BrainMaskError(
        f"{what}: the brain mask of {path} {problem}: outside the published adult range "
        f"[{options.min_brain_ml:.0f}, {options.max_brain_ml:.0f}] ml"
        + ("" if shaped else f" and not brain-shaped ({BRAIN_FRACTION_OF_HEAD[0]:.0%}-{BRAIN_FRACTION_OF_HEAD[1]:.0%} of the head expected)")
        + ". Check that the series is a head covering the whole brain, with a correct orientation in its header; "
        "for an unusual cohort (children, say) set min_brain_ml / max_brain_ml."
    )


def _describe(subject: str, sequence: str) -> str:
    """'subject sub-01, sequence swi' (or what is known) for messages."""
    parts = [f"subject {subject}" if subject else "", f"sequence {sequence}" if sequence else ""]
    return ", ".join(p for p in parts if p) or "volume"


def _versions(options: HDBetOptions) -> dict[str, str]:
    """Versions of the packages whose code or weights shape the mask."""
    return package_versions(extractors.load(options.backend).VERSIONS + ("numpy", "scipy", "nibabel"))


def _run_params(options: HDBetOptions) -> dict[str, Any]:
    """The options plus what 'auto' resolved to on this machine."""
    import torch

    device = resolve_device(options.device, "skullstrip.device")
    return {
        **options.as_dict(),
        "resolved_device": str(device),
        "resolved_precision": resolve_precision(options.precision, device),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cuda_available": torch.cuda.is_available(),
    }


def skullstrip_file(
    image: PathLike,
    out_mask: PathLike,
    out_brain: PathLike | None,
    options: HDBetOptions | None = None,
    record: PathLike | None = None,
    subject: str = "",
    sequence: str = "",
) -> dict[str, Any]:
    """Skull-strip one NIfTI: uint8 mask (and optionally the brain-extracted image) on the input grid,
    plus a provenance JSON. Returns the QC values; raises `BrainMaskError` for an implausible mask."""
    options = options or HDBetOptions()
    image = Path(image)
    what = _describe(subject, sequence)
    step = StepRecord(step="skullstrip", subject=subject or None)
    volume, nifti = load_volume(image, what)
    ras, spacing, undo = _to_ras(volume, nifti)
    try:
        ras_mask = brain_mask(ras, spacing, options)
    except VolumeError as err:
        raise VolumeError(f"{what}: {image}: {err}") from err
    mask = nib.orientations.apply_orientation(ras_mask, undo)
    voxel_ml = float(np.prod(nifti.header.get_zooms()[:3])) / 1000.0
    qc: dict[str, Any] = mask_qc(mask, volume, voxel_ml)
    qc["flags"] = _check_plausible(qc, options, what, image)

    save_array(mask, nifti.affine, out_mask, dtype=np.uint8)
    outputs = {"mask": str(out_mask)}
    if out_brain is not None:
        save_array(np.where(mask, volume, np.float32(0)), nifti.affine, out_brain, dtype=np.float32)
        outputs["brain"] = str(out_brain)
    if record is not None:
        step.inputs = {"image": {"path": str(image), "sha256": sha256_file(image)}, **extractors.load(options.backend).weights_record(options)}
        step.params = _run_params(options)
        step.outputs = outputs
        step.qc = qc
        step.versions = _versions(options)
        step.write(record)
    logger.info(
        "%s: brain mask %.0f ml, %.0f%% of the head", what, qc["brain_volume_ml"], 100 * qc["brain_fraction_of_head"]
    )
    return qc
