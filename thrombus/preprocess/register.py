"""Co-registration of a subject's sequences to its reference sequence.

The optimisation is a backend (`thrombus.preprocess.registrators`, one module each, chosen by
`register.backend`: greedy by default, ANTs as before); everything around it lives here and is the
same for every backend: the overlap check, the starts tried, the fallback schedule, mutual information
and QC flags, resampling through antspyx, and the files.

Same-session scans already share scanner coordinates, so registration starts from the identity (not
from the centres of mass, which move when two sequences cover different parts of the head) and only
has to remove head motion between series: Rigid, with mutual information restricted to the brain.
Affine is an option for EPI sequences (DWI/ADC) whose distortion a rigid model cannot follow.

When the two heads' centres lie further apart than a head moves in one session (a series from another
session, or a header that lost its table position), an identity start lands in a local optimum that
still raises the metric a little: two real heads 32 mm apart ended "usable" with MI 0.056 -> 0.057.
Such pairs also get a start from the centres of mass, the better of the two is kept by MI, and a result
whose metric barely moved although the heads were far apart, whose heads' centres are still far apart
after it, or whose brain masks (where both are known) overlap poorly, is flagged and marked unusable.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import numpy as np

from thrombus.io import PathLike, atomic_path
from thrombus.preprocess import registrators

log = logging.getLogger(__name__)

#: Fraction of the reference brain the moving image must cover before registration is attempted.
MIN_OVERLAP = 0.3


class RegistrationError(ValueError):
    """A registration that cannot be trusted; the message names subject, sequence and reason."""


@dataclass(frozen=True)
class RegistrationOptions:
    """What the config says about registration; recorded in every step record."""

    #: The module of `thrombus.preprocess.registrators` that finds the transform (QC and I/O are shared).
    #: greedy: on 11 demo and 3 real pairs, 0.70x ANTs' optimisation time, residual against the
    #: generator's motion 0.240 mm against 0.275, same brain-mask Dice, byte-identical reruns.
    backend: str = "greedy"
    transform: Literal["Rigid", "Affine"] = "Rigid"
    threads: int = 1
    deterministic: bool = True  # the config's default too: reruns reproduce the tables
    seed: int = 0
    # no 8x shrink level: with 5-6 mm slices it leaves 3-4 slices and sends the optimiser astray
    iterations: tuple[int, ...] = (1000, 500, 100)
    shrink_factors: tuple[int, ...] = (4, 2, 1)
    smoothing_sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    #: 0.1 halves the time of 0.25 for a residual within 0.06 mm of it on the demo cohort (BENCHMARKS.md)
    sampling_rate: float = 0.1
    #: The finest level's metric is computed on the reference resampled to no finer than this (mm per
    #: axis; None: its own grid). Sequences registered to a 1 mm reference have 1.8-6 mm voxels, so that
    #: level oversampled them: on nine pairs of the demo cohort 2 mm took 0.70x the time, residual
    #: against the generator's motion 0.241 mm on average against 0.234 mm (CHANGELOG.md).
    metric_spacing_mm: float | None = 2.0
    histogram_bins: int = 32
    #: Retried when the first attempt looks failed: no coarse level, which thick-slice EPI (30 slices
    #: of 5 mm) sometimes cannot cross without the optimiser running off by centimetres.
    fallback_iterations: tuple[int, ...] = (500, 100)
    fallback_shrink_factors: tuple[int, ...] = (2, 1)
    fallback_smoothing_sigmas: tuple[float, ...] = (1.0, 0.0)
    #: Rotations (degrees) and translations (mm) beyond these are flagged in QC: heads move less in one session.
    max_rotation_deg: float = 15.0
    max_translation_mm: float = 20.0
    #: Heads whose centres (of their intensity masks) are further apart than this also get a start from the
    #: centres of mass. Sequences of one synthetic session lie <= 10 mm apart by this measure, since a
    #: thick-slice or partial-coverage series shifts its centre; the real 32 mm case lies at 34 mm.
    centre_start_mm: float = 15.0
    #: Centres further apart than this after registration flag it as failed: aligned pairs of the synthetic
    #: cohort end <= 12.3 mm apart (coverage differs between series), real ones 0.8-8.7 mm; the 32 mm pair
    #: left at its identity start ends 30 mm apart. Such a sequence is dropped (the model has GMD for that).
    max_centre_gap_after_mm: float = 20.0
    #: Relative MI gain below which a far-apart pair is flagged: it stayed near its start. Aligned real
    #: pairs that started far apart gain 10x (TCGA T2 to T1c: 0.025 -> 0.246).
    min_mi_gain: float = 0.1
    #: Brain-mask Dice below which a registration with both masks known is flagged (aligned real pairs:
    #: >= 0.9 in tests/test_register.py).
    min_mask_dice: float = 0.8

    def __post_init__(self) -> None:
        registrators.load(self.backend)  # an unknown name fails here, with the known ones


#: antspyx subpackages that `import ants` executes and the workflow never calls: plotting (matplotlib),
#: learn (statsmodels, scipy.stats) and deeplearn (scikit-learn); about half of the import's time, paid
#: by every register and brainmask job (four a subject). Empty modules stand in for them in a process
#: that has not imported ants yet, so `ants.plot` and its kin do not exist there.
UNUSED_ANTS_PARTS: tuple[str, ...] = ("ants.learn", "ants.plotting", "ants.deeplearn")


#: Modules that `ants.math.quantile` imports with ants, for regressions and CompCor the workflow never
#: calls: 0.5-0.6 s of every register and brainmask job (statsmodels' model zoo). While ants is imported
#: they are stand-ins that import the real module when first used, so `ants.regress_poly` still works.
DEFERRED_FOR_ANTS: tuple[str, ...] = ("statsmodels.api", "statsmodels.formula", "statsmodels.formula.api")


class _ImportedOnFirstUse(ModuleType):
    """Stands in for a module until one of its attributes is read, then hands over to the real one.

    A deferred submodule of a deferred package is handed out as its stand-in: that lookup is how
    `import a.b.c as x` binds `x`, and it must not load `a.b`.
    """

    def __getattr__(self, attribute: str) -> Any:
        child = sys.modules.get(f"{self.__name__}.{attribute}")
        if isinstance(child, _ImportedOnFirstUse):
            return child
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def _skip_unused_ants_parts() -> list[str]:
    """Put the stand-ins in place before `import ants`; returns the deferred names to take out after it."""
    if "ants" in sys.modules:
        return []
    for name in UNUSED_ANTS_PARTS:
        sys.modules.setdefault(name, ModuleType(name, "left out by thrombus: the workflow does not use it"))
    deferred = [name for name in DEFERRED_FOR_ANTS if name not in sys.modules]
    for name in deferred:
        sys.modules[name] = _ImportedOnFirstUse(name, "imported by thrombus when first used")
    return deferred


def _end_deferral(names: list[str]) -> None:
    """Take the stand-ins out of `sys.modules`, so that an import elsewhere loads the real module."""
    for name in names:
        if isinstance(sys.modules.get(name), _ImportedOnFirstUse):
            del sys.modules[name]


def import_ants(threads: int, deterministic: bool = False, seed: int = 1) -> ModuleType:
    """Import antspyx with ITK's thread count set first, which ITK reads only once, at import.

    A seed is always passed to ANTs: without one (or with 0, which ANTs takes as "none") it seeds the
    metric's random sampling from the clock, and a hard pair (5 mm slices, a large initial offset) then
    lands in a wrong optimum in some runs and not in others. Deterministic mode also forces one thread,
    since the partition of samples across threads changes the sums in the last bits.
    """
    count = 1 if deterministic else max(1, int(threads))
    if "ants" in sys.modules and os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS") != str(count):
        log.warning("ants was imported before its thread count was set; ITK may not use %d thread(s)", count)
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(count)
    deferred = _skip_unused_ants_parts()
    try:
        import ants
    finally:
        _end_deferral(deferred)

    ants.config.set_ants_deterministic(deterministic, max(1, int(seed)))
    return ants


@dataclass
class Registration:
    """The result: the forward transform file, the moving image on the fixed grid, and the metric values."""

    transform: Path
    warped: Any  # on the QC grid while attempts are judged; the chosen one is then resampled onto the reference
    mi_before: float
    mi_after: float
    rotation_deg: float
    translation_mm: float
    matrix: list[list[float]]
    attempts: int = 1
    start: str = "identity"
    centre_gap_mm: float = 0.0
    centre_gap_after_mm: float = 0.0
    mask_dice: float | None = None


def _mutual_information(ants: ModuleType, fixed: Any, moving_on_fixed: Any, mask: Any | None) -> float:
    """Mattes mutual information inside the fixed mask, as a positive number (higher is better).

    0 when the moving image is constant there (a transform that moved the head out of the reference
    brain): ITK's histogram cannot be built then, and such an attempt is the worst there is anyway.
    """
    values = moving_on_fixed.numpy()
    if mask is not None:
        values = values[mask.numpy() > 0]
    if values.size == 0 or values.min() == values.max():
        return 0.0
    value = ants.image_similarity(
        fixed, moving_on_fixed, metric_type="MattesMutualInformation", fixed_mask=mask, moving_mask=mask,
    )
    return float(-value)


def metric_grid(ants: ModuleType, fixed: Any, mask: Any | None, spacing_mm: float | None) -> tuple[Any, Any | None]:
    """The reference and its mask on the grid the metric is computed on: no axis finer than `spacing_mm`.

    Only the optimisation sees this grid; the registered image is resampled onto the reference's own.
    """
    if spacing_mm is None:
        return fixed, mask
    target = tuple(max(float(spacing_mm), float(s)) for s in fixed.spacing)
    if np.allclose(target, fixed.spacing):
        return fixed, mask
    coarse = ants.resample_image(fixed, target, use_voxels=False, interp_type=0)
    coarse_mask = None if mask is None else ants.resample_image(mask, target, use_voxels=False, interp_type=1)
    return coarse, coarse_mask


def qc_grid(ants: ModuleType, fixed: Any, reference_mask: Any, metric_fixed: Any, metric_mask: Any | None) -> tuple[Any, Any]:
    """The reference and its brain mask on the grid mutual information is judged on: the metric grid.

    On the reference's own 1 x 1 x 2 mm grid, ITK's Mattes metric took 3.9 s of a DWI register step's
    12 (before and after, 3 million voxels); the coarser grid is the one the optimiser compared the
    images on anyway, and a judgement of before against after, or of one start against another, needs
    no finer one.
    """
    if metric_fixed is fixed:
        return fixed, reference_mask
    if metric_mask is not None:
        return metric_fixed, metric_mask
    return metric_fixed, ants.resample_image_to_target(reference_mask, metric_fixed, interp_type="nearestNeighbor")


def overlap_fraction(ants: ModuleType, fixed_mask: Any, moving: Any) -> float:
    """Share of the fixed brain where the moving image, in scanner coordinates, has signal."""
    on_fixed = ants.resample_image_to_target(moving, fixed_mask, interp_type="linear")
    brain = fixed_mask.numpy() > 0
    if not brain.any():
        return 0.0
    return float(np.count_nonzero(on_fixed.numpy()[brain] > 0) / np.count_nonzero(brain))


#: Head centres are found on the image resampled to no finer than this (mm per axis).
CENTRE_SPACING_MM = 3.0


def head_centre(ants: ModuleType, image: Any, spacing_mm: float = CENTRE_SPACING_MM) -> np.ndarray:
    """Centre (mm, scanner space) of an image's intensity mask: where its head lies.

    The mask (`ants.get_mask`: above the mean, cleaned up) is computed on the image resampled to
    `spacing_mm`, the same grid for the reference, the moving image and the result: on a 1 x 1 x 2 mm
    SWI it took 2.0 s of a register step's 10 and 0.35 s at 3 mm, and a centre decides only whether
    the heads lie more than 15 mm apart (and flags them 20 mm apart afterwards): on demo images the
    centre moved by 0.1-2 mm.
    """
    spacing = [max(float(spacing_mm), float(s)) for s in image.spacing]
    coarse = ants.resample_image(image, spacing, use_voxels=False, interp_type=0)
    return np.asarray(ants.get_center_of_mass(ants.get_mask(coarse)), dtype=float)


def mask_dice(ants: ModuleType, fixed_mask: Any, moving_mask: Any, transform: PathLike) -> float:
    """Dice of the fixed brain mask and the moving one carried through `transform`."""
    carried = apply(ants, fixed_mask, moving_mask, transform, label=True).numpy() > 0
    reference = fixed_mask.numpy() > 0
    total = np.count_nonzero(carried) + np.count_nonzero(reference)
    return float(2 * np.count_nonzero(carried & reference) / total) if total else 0.0


def _motion(ants: ModuleType, transform: Path) -> tuple[float, float, list[list[float]]]:
    """Rotation angle (degrees) and translation (mm) of an ANTs affine file, for QC."""
    tx = ants.read_transform(str(transform))
    params = np.asarray(tx.parameters, dtype=float)
    matrix = params[:9].reshape(3, 3)
    translation = params[9:12]
    u, _, vt = np.linalg.svd(matrix)
    rotation = u @ vt
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0))))
    full = np.eye(4)
    full[:3, :3], full[:3, 3] = matrix, translation
    return angle, float(np.linalg.norm(translation)), full.round(6).tolist()


def register(
    ants: ModuleType,
    fixed: Any,
    moving: Any,
    options: RegistrationOptions,
    fixed_mask: Any | None = None,
    moving_mask: Any | None = None,
    what: str = "registration",
    transform_out: PathLike | None = None,
) -> Registration:
    """Register `moving` to `fixed` (identity start) and judge the result by mutual information.

    The forward transform is saved atomically at `transform_out` (a temporary file when not given).
    Mutual information, the verdict on each attempt, and the heads' centres are measured on the metric
    grid (`qc_grid`); the image is resampled onto the reference's own grid once, through the chosen
    transform.
    """
    reference_mask = fixed_mask if fixed_mask is not None else ants.get_mask(fixed)
    coverage = overlap_fraction(ants, reference_mask, moving)
    if coverage < MIN_OVERLAP:
        raise RegistrationError(
            f"{what}: the image covers {coverage:.0%} of the reference brain in scanner coordinates; "
            "its field of view does not overlap the reference (another session or a wrong series?)"
        )
    schedules: list[registrators.Schedule] = [
        (options.iterations, options.shrink_factors, options.smoothing_sigmas),
        (options.fallback_iterations, options.fallback_shrink_factors, options.fallback_smoothing_sigmas),
    ]
    metric_fixed, metric_mask = metric_grid(ants, fixed, fixed_mask, options.metric_spacing_mm)
    qc_fixed, qc_mask = qc_grid(ants, fixed, reference_mask, metric_fixed, metric_mask)
    before = ants.resample_image_to_target(moving, qc_fixed, interp_type="linear")
    mi_before = _mutual_information(ants, qc_fixed, before, qc_mask)
    fixed_centre = head_centre(ants, qc_fixed)
    gap = float(np.linalg.norm(fixed_centre - head_centre(ants, moving)))
    starts = ["identity", "centres"] if gap > options.centre_start_mm else ["identity"]
    backend = registrators.load(options.backend)
    pair = registrators.Pair(ants, fixed, moving, fixed_mask, moving_mask, metric_fixed, metric_mask)
    best: Registration | None = None
    attempt = 0
    with tempfile.TemporaryDirectory(prefix=f"thrombus-{options.backend}-") as work:
        for schedule in schedules:
            for start in starts:
                attempt += 1
                transform = backend.optimise(pair, options, schedule, start, Path(work) / f"attempt{attempt}_")
                angle, shift, matrix = _motion(ants, transform)
                on_qc_grid = apply(ants, qc_fixed, moving, transform)
                mi_after = _mutual_information(ants, qc_fixed, on_qc_grid, qc_mask)
                candidate = Registration(transform, on_qc_grid, mi_before, mi_after, angle, shift, matrix, attempt, start, gap)
                if best is None or candidate.mi_after > best.mi_after:
                    best = candidate
            best.attempts = attempt
            if not _looks_failed(best, options):
                break
        best.centre_gap_after_mm = float(np.linalg.norm(fixed_centre - head_centre(ants, best.warped)))
        best.warped = apply(ants, fixed, moving, best.transform)
        if fixed_mask is not None and moving_mask is not None:
            best.mask_dice = mask_dice(ants, fixed_mask, moving_mask, best.transform)
        if transform_out is None:
            transform_out = Path(tempfile.mkdtemp(prefix="thrombus-tx-")) / "forward.mat"
        best.transform = save_transform(best.transform, transform_out)
    return best


def _looks_failed(result: Registration, options: RegistrationOptions) -> bool:
    """Worth another attempt: MI no better than before, or a motion no head makes within one session
    (beyond the centres' gap when the result started from the centres: that part was expected)."""
    allowance = result.centre_gap_mm if result.start == "centres" else 0.0
    return (
        result.mi_after <= result.mi_before
        or result.rotation_deg > options.max_rotation_deg
        or result.translation_mm > options.max_translation_mm + allowance
    )


def apply(ants: ModuleType, fixed: Any, moving: Any, transform: PathLike, label: bool = False) -> Any:
    """Resample `moving` onto the fixed grid through `transform` (linear, or genericLabel for masks)."""
    return ants.apply_transforms(
        fixed=fixed, moving=moving, transformlist=[str(transform)],
        interpolator="genericLabel" if label else "linear",
    )


def save_transform(transform: Path, target: PathLike) -> Path:
    """Move a transform file into place atomically."""
    with atomic_path(target, suffix=".mat") as tmp:
        shutil.copyfile(transform, tmp)
    return Path(target)


def save_image(ants: ModuleType, image: Any, target: PathLike) -> Path:
    """Write an ANTs image atomically (ITK picks the format from the temporary name's suffix)."""
    with atomic_path(target) as tmp:
        ants.image_write(image, str(tmp))
    return Path(target)


def qc_values(result: Registration, options: RegistrationOptions) -> dict[str, Any]:
    """Metric and motion values for the step record, with the flags a reviewer should look at."""
    flags = []
    if result.mi_after < result.mi_before:
        flags.append("mutual information decreased: registration likely failed")
    if result.rotation_deg > options.max_rotation_deg:
        flags.append(f"rotation {result.rotation_deg:.1f} deg above {options.max_rotation_deg} deg")
    if result.translation_mm > options.max_translation_mm:
        flags.append(f"translation {result.translation_mm:.1f} mm above {options.max_translation_mm} mm")
    failures = failure_flags(result, options)
    return {
        "mi_before": round(result.mi_before, 5),
        "mi_after": round(result.mi_after, 5),
        "rotation_deg": round(result.rotation_deg, 3),
        "translation_mm": round(result.translation_mm, 3),
        "matrix": result.matrix,
        "attempts": result.attempts,
        "start": result.start,
        "centre_gap_mm": round(result.centre_gap_mm, 2),
        "centre_gap_after_mm": round(result.centre_gap_after_mm, 2),
        "mask_dice": None if result.mask_dice is None else round(result.mask_dice, 4),
        "flags": flags + failures,
        "usable": result.mi_after >= result.mi_before and not failures,
        "options": asdict(options),
    }


def failure_flags(result: Registration, options: RegistrationOptions) -> list[str]:
    """Signs of a registration that did not reach the right optimum although its metric rose a little."""
    flags = []
    far = result.centre_gap_mm > options.centre_start_mm
    if far and result.mi_after < result.mi_before * (1.0 + options.min_mi_gain):
        flags.append(
            f"the heads' centres were {result.centre_gap_mm:.0f} mm apart but mutual information barely moved "
            f"({result.mi_before:.4f} -> {result.mi_after:.4f}): registration likely stayed near its start"
        )
    if result.centre_gap_after_mm > options.max_centre_gap_after_mm:
        flags.append(
            f"the heads' centres are still {result.centre_gap_after_mm:.0f} mm apart after registration "
            f"({result.centre_gap_mm:.0f} mm before)"
        )
    if result.mask_dice is not None and result.mask_dice < options.min_mask_dice:
        flags.append(f"brain masks overlap with Dice {result.mask_dice:.2f} after registration (< {options.min_mask_dice})")
    return flags


def _read(ants: ModuleType, path: PathLike, what: str) -> Any:
    """Check a volume the way every step does (3-D, finite, not blank), then read it with ANTs."""
    from thrombus.nifti import load_volume

    load_volume(path, what)
    image = ants.image_read(str(path))
    if image.dimension == 4:  # a trailing singleton axis, accepted by load_volume
        image = ants.slice_image(image, axis=3, idx=0)
    return image


def register_file(
    reference: PathLike,
    moving: PathLike,
    out_image: PathLike,
    out_transform: PathLike,
    options: RegistrationOptions,
    subject: str,
    center: str,
    sequence: str,
    fixed_mask: PathLike | None = None,
    moving_mask: PathLike | None = None,
    reuse_transform: PathLike | None = None,
    record_path: PathLike | None = None,
    reuse_record: PathLike | None = None,
) -> dict[str, Any]:
    """The `register` step for one sequence: transform, image on the reference grid, step record.

    `reuse_transform` applies another sequence's transform instead of estimating one: the ADC map is
    computed from the DWI acquisition, so it must move exactly as the DWI did, and it inherits the
    verdict of that registration (`reuse_record`): a failed DWI registration fails the ADC too. A registration that
    QC flags as failed is kept but marked unusable, and harmonisation then treats the sequence as
    missing rather than feeding a misaligned image to the model.
    """
    from thrombus.io import read_json, sha256_file
    from thrombus.provenance import StepRecord, package_versions

    what = f"center {center}, subject {subject}, {sequence}"
    record = StepRecord("register", subject=subject, center=center)
    record.inputs = {"reference": str(reference), "moving": str(moving), "sha256_moving": sha256_file(moving)}
    record.params = {"sequence": sequence, **asdict(options)}
    record.versions = package_versions(tuple(dict.fromkeys(("antspyx", *registrators.load(options.backend).VERSIONS))))
    ants = import_ants(options.threads, options.deterministic, options.seed)
    fixed = _read(ants, reference, f"{what} (reference {Path(reference).name})")
    image = _read(ants, moving, what)
    if reuse_transform is not None:
        save_transform(Path(reuse_transform), out_transform)
        warped = apply(ants, fixed, image, out_transform)
        partner = read_json(reuse_record).get("qc", {}) if reuse_record else {}
        inherited = [f"reused transform: {flag}" for flag in partner.get("flags", [])]
        record.qc = {"reused_transform": str(reuse_transform), "flags": inherited, "usable": partner.get("usable", True)}
    else:
        masks = {
            "fixed_mask": ants.image_read(str(fixed_mask)) if fixed_mask else None,
            "moving_mask": ants.image_read(str(moving_mask)) if moving_mask else None,
        }
        result = register(ants, fixed, image, options, what=what, transform_out=out_transform, **masks)
        warped = result.warped
        record.qc = qc_values(result, options)
        for flag in record.qc["flags"]:
            log.warning("%s: %s", what, flag)
    save_image(ants, warped, out_image)
    record.outputs = {"image": str(out_image), "transform": str(out_transform)}
    if record_path is not None:
        record.write(record_path)
    return record.as_dict()


def carry_mask(
    native_mask: PathLike, reference: PathLike, out_mask: PathLike, transform: PathLike | None, threads: int = 1
) -> Path:
    """Bring the brain mask from the sequence it was computed on onto the reference grid (genericLabel)."""
    ants = import_ants(threads)
    fixed = ants.image_read(str(reference))
    mask = ants.image_read(str(native_mask))
    if transform is None:
        moved = ants.resample_image_to_target(mask, fixed, interp_type="genericLabel")
    else:
        moved = apply(ants, fixed, mask, transform, label=True)
    return save_image(ants, moved.astype("uint8"), out_mask)


def same_grid(a: PathLike, b: PathLike, tolerance: float = 1e-3) -> bool:
    """Whether two images share shape and affine: then they come from one acquisition's reconstruction."""
    import nibabel as nib

    first, second = nib.load(str(a)), nib.load(str(b))
    return first.shape[:3] == second.shape[:3] and bool(np.allclose(first.affine, second.affine, atol=tolerance))
