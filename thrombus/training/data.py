"""Training data: each subject's harmonised stack and thrombus mask loaded once, and slabs drawn from them.

A training sample is a slab of D adjacent axial slices (C, D, H, W), its label (1, D, H, W) and the
subject's availability vector (C,). Thrombi are a few hundred voxels in a brain of a million, so a
uniform slab almost never shows one: with probability `foreground_probability` (nnU-Net's 0.33) the slab
is centred on a random thrombus voxel of a thrombus-positive subject, with jitter so the thrombus does not
always sit in the middle; otherwise it is centred on a random brain voxel of any subject.

Augmentation is MONAI's (flips, a small in-plane affine, Gaussian noise, gamma contrast), wrapped where
our data differ, plus one of our own, thick slices: centers acquire their reference at 2 to 6 mm, and a
2.5D model that only ever saw 2 mm slabs reads a 6 mm center's D slices as a much taller, blurrier
context. With `thick_slice_probability` a slab of a thin-slice subject is drawn k times as deep and each
group of k slices averaged into one (the slice profile of a thicker acquisition; the label is kept where
any of the k is thrombus, as the truth of thick slices keeps every voxel the clot passes through). In the
other transforms: the spatial transforms see the slab as C*D in-plane images, so every slice and sequence
moves together, the intensity transforms run per sequence, and the zero background of the skull-stripped
stack (and a missing sequence's zeros) stays zero.

Reproducibility does not depend on a stream of random numbers carried from sample to sample: sample k of
a run is drawn from a generator seeded with (seed, k), MONAI's transforms included. The data of a run is
therefore fixed by the seed and the position alone, whatever the number of loader workers, and resuming
at iteration N needs only N (`IterationSampler`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from thrombus.device import torch_threads
from thrombus.io import PathLike, read_json
from thrombus.model.sliding import crop_padded, network_depth, resample_slices
from thrombus.nifti import VolumeError, load_volume
from thrombus.samples import Subject

if TYPE_CHECKING:
    from thrombus.training.clots import Clot

log = logging.getLogger(__name__)

#: Upper bound of the per-sample seeds handed to MONAI (its own limit).
_MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class SlabOptions:
    """Shape of the training samples and how often they show a thrombus.

    Attributes:
        slab_depth: D, adjacent axial slices per slab (odd, so a slab has a centre slice).
        patch_size: in-plane size (H, W) of a slab; the volume is cropped or zero-padded to it.
        foreground_probability: share of slabs centred on a thrombus voxel.
        hard_negative_probability: share of slabs centred on one of the darkest voxels of the
            susceptibility channel that is not thrombus (veins, microbleeds, calcifications: what a
            clot is mistaken for), so the model sees the look-alikes as often as the clots.
        hard_negative_quantile: "darkest" means below this quantile of the brain's susceptibility
            values, per subject (so it adapts to each center's contrast without a fixed z).
    """

    slab_depth: int = 5
    patch_size: tuple[int, int] = (64, 64)
    foreground_probability: float = 0.33
    hard_negative_probability: float = 0.0
    hard_negative_quantile: float = 0.005

    def __post_init__(self) -> None:
        if self.slab_depth < 1 or self.slab_depth % 2 == 0:
            raise ValueError(f"train.slab_depth must be a positive odd number, got {self.slab_depth}")
        if len(self.patch_size) != 2 or min(self.patch_size) < 8:
            raise ValueError(f"train.patch_size must be two sizes of at least 8 voxels, got {list(self.patch_size)}")
        if not 0.0 <= self.foreground_probability <= 1.0:
            raise ValueError(f"train.foreground_probability must be in [0, 1], got {self.foreground_probability}")
        if not 0.0 <= self.hard_negative_probability <= 1.0 - self.foreground_probability:
            raise ValueError(
                "train.hard_negative_probability must be in [0, 1 - foreground_probability], got "
                f"{self.hard_negative_probability} with foreground_probability {self.foreground_probability}"
            )
        if not 0.0 < self.hard_negative_quantile < 0.5:
            raise ValueError(f"train.hard_negative_quantile must be in (0, 0.5), got {self.hard_negative_quantile}")


@dataclass(frozen=True)
class AugmentOptions:
    """Probabilities and ranges of the MONAI augmentations (nnU-Net-like, milder for 2.5D).

    Attributes:
        enabled: False gives the raw slabs (validation-like; useful to measure their cost).
        flip_probability: of mirroring along each in-plane axis (independently).
        affine_probability: of an in-plane rotation plus scaling.
        rotate_deg: largest in-plane rotation, either way.
        scale: largest relative change of size along each in-plane axis.
        noise_probability: of additive Gaussian noise, per sequence.
        noise_std: largest standard deviation of that noise (z-score units; each draw picks its own).
        contrast_probability: of a gamma change of contrast, per sequence.
        gamma: range of the gamma.
        thick_slice_probability: of simulating a thicker acquisition (module docstring).
        thick_slice_mm: thickest slice simulated; a subject's slices are merged k at a time, k >= 2
            with k times its slice spacing at most this.
    """

    enabled: bool = True
    flip_probability: float = 0.5
    affine_probability: float = 0.2
    rotate_deg: float = 15.0
    scale: float = 0.15
    noise_probability: float = 0.15
    noise_std: float = 0.1
    contrast_probability: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    thick_slice_probability: float = 0.3
    thick_slice_mm: float = 6.5

    def __post_init__(self) -> None:
        for name in ("flip_probability", "affine_probability", "noise_probability", "contrast_probability",
                     "thick_slice_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"train.augmentation.{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.scale < 0.5 or not 0.0 <= self.rotate_deg <= 45.0:
            raise ValueError(
                f"train.augmentation: scale must be in [0, 0.5) and rotate_deg in [0, 45], got {self.scale}, {self.rotate_deg}"
            )

    def slice_factor(self, slice_mm: float, rng: np.random.Generator) -> int:
        """How many of a subject's slices one training slice merges (1: the slab as acquired).

        Drawn only when the augmentation can apply, so that a run without it keeps its random stream.
        """
        largest = int(self.thick_slice_mm // slice_mm) if slice_mm > 0 else 1
        if not self.enabled or self.thick_slice_probability == 0.0 or largest < 2:
            return 1
        if rng.random() >= self.thick_slice_probability:
            return 1
        return int(rng.integers(2, largest + 1))

    def margin(self, patch: int) -> int:
        """Extra in-plane context each side, so that a rotated and shrunk patch is filled with real data.

        A patch rotated by up to `rotate_deg` and scaled down by `scale` reads a square of side
        patch * (cos + sin) / (1 - scale); the crop is taken that large and MONAI's affine crops back.
        """
        if not self.enabled or self.affine_probability == 0.0:
            return 0
        angle = math.radians(self.rotate_deg)
        return math.ceil((patch * (math.cos(angle) + math.sin(angle)) / (1.0 - self.scale) - patch) / 2)


@dataclass(frozen=True)
class CaseSource:
    """Where a subject's training data lives."""

    subject: str
    center: str
    stack: Path
    summary: Path
    mask: Path | None
    positive: bool


@dataclass
class Case:
    """A subject's data in memory, cropped to the brain's bounding box, slice axis first.

    Attributes:
        image: (C, Z, X, Y) float32, zero outside the brain.
        label: (Z, X, Y) uint8 thrombus mask.
        brain: (Z, X, Y) bool, where any sequence is non-zero.
        availability: (C,) float32, 0 for a missing sequence.
        foreground: (n, 3) int64 coordinates (z, x, y) of the thrombus voxels.
        label_outside: thrombus voxels outside the brain's bounding box (missed by any prediction made
            inside it; validation counts them).
        slice_mm: spacing of the slices (the thick-slice augmentation's unit).
        voxel_mm3: volume of a voxel (the postprocessing's minimum size is a volume).
    """

    subject: str
    center: str
    image: Tensor
    label: Tensor
    brain: Tensor
    availability: Tensor
    foreground: np.ndarray
    label_outside: int
    slice_mm: float = 0.0
    voxel_mm3: float = 1.0

    @property
    def positive(self) -> bool:
        return len(self.foreground) > 0


def case_sources(subjects: Iterable[Subject], stacks_root: PathLike) -> list[CaseSource]:
    """The stack, its summary and the mask of each subject; a positive subject without a mask is an error."""
    root = Path(stacks_root)
    sources = []
    for s in subjects:
        folder = root / "results" / "harmonise" / s.center / s.subject
        mask = Path(s.thrombus_mask) if s.thrombus_mask else None
        positive = s.thrombus == "1"
        if positive and (mask is None or not mask.exists()):
            raise VolumeError(
                f"subject {s.subject} (center {s.center}) is thrombus-positive in the sample sheet but its thrombus "
                f"mask {mask if mask else '(column thrombus_mask empty)'} does not exist: give the mask's path, or set "
                "thrombus to empty if the subject is for inference only"
            )
        sources.append(CaseSource(s.subject, s.center, folder / "stack.nii.gz", folder / "stack.json", mask, positive))
    return sources


def _channel_order(source: CaseSource, channels: Sequence[str]) -> tuple[list[int], list[float]]:
    """Indices of the expected channels in the stack, and their availability, from the stack's summary."""
    summary = read_json(source.summary)
    have = list(summary["channels"])
    missing = [name for name in channels if name not in have]
    if missing:
        raise VolumeError(
            f"subject {source.subject}: stack {source.stack} has channels {have}, the model expects {list(channels)} "
            f"({missing} absent); harmonise with the same `harmonise.channels` as the model"
        )
    order = [have.index(name) for name in channels]
    return order, [float(summary["availability"][index]) for index in order]


def _load_label(source: CaseSource, image: nib.Nifti1Image, shape: tuple[int, ...]) -> np.ndarray:
    """The thrombus mask on the stack's grid (zeros for a negative subject without a mask file)."""
    if source.mask is None or not source.mask.exists():
        return np.zeros(shape, dtype=np.uint8)
    mask_image = nib.load(str(source.mask))
    if mask_image.shape[:3] != shape or not np.allclose(mask_image.affine, image.affine, atol=1e-3):
        raise VolumeError(
            f"subject {source.subject}: thrombus mask {source.mask} (shape {mask_image.shape}) is not on the grid of "
            f"its stack {source.stack} (shape {shape}); the mask must be in the reference sequence's space"
        )
    label = (np.asarray(mask_image.dataobj).reshape(shape) > 0).astype(np.uint8)
    if source.positive and not label.any():
        raise VolumeError(f"subject {source.subject} is thrombus-positive but its mask {source.mask} is empty")
    if not source.positive and label.any():
        raise VolumeError(
            f"subject {source.subject} has thrombus 0 in the sample sheet but its mask {source.mask} holds "
            f"{int(label.sum())} voxels: correct the sheet or the mask"
        )
    return label


def _brain_box(brain: np.ndarray, what: str) -> tuple[slice, ...]:
    """Bounding box of the non-zero voxels."""
    if not brain.any():
        raise VolumeError(f"{what} is zero everywhere: rerun harmonisation for this subject")
    coords = np.argwhere(brain)
    return tuple(slice(int(low), int(high) + 1) for low, high in zip(coords.min(axis=0), coords.max(axis=0)))


def load_case(source: CaseSource, channels: Sequence[str]) -> Case:
    """Read one subject's stack and mask, check them against each other, crop to the brain box."""
    what = f"subject {source.subject} (center {source.center}) stack"
    data, image = load_volume(source.stack, what, allow_4d=True)
    if data.ndim != 4:
        raise VolumeError(f"{what} {source.stack} has shape {data.shape}, a 4-D (X, Y, Z, C) stack was expected")
    order, availability = _channel_order(source, channels)
    data = data[..., order]
    label = _load_label(source, image, data.shape[:3])
    box = _brain_box(np.any(data != 0, axis=3), f"{what} {source.stack}")
    cropped = np.ascontiguousarray(np.transpose(data[box], (3, 2, 0, 1)))
    cropped_label = np.ascontiguousarray(np.transpose(label[box], (2, 0, 1)))
    foreground = np.argwhere(cropped_label > 0).astype(np.int64)
    return Case(
        subject=source.subject,
        center=source.center,
        image=torch.from_numpy(cropped),
        label=torch.from_numpy(cropped_label),
        brain=torch.from_numpy(np.any(cropped != 0, axis=0)),
        availability=torch.tensor(availability, dtype=torch.float32),
        foreground=foreground,
        label_outside=int(label.sum()) - len(foreground),
        slice_mm=float(image.header.get_zooms()[2]),
        voxel_mm3=float(np.prod(image.header.get_zooms()[:3])),
    )


def at_slice_spacing(case: Case, slice_mm: float | None) -> Case:
    """`case` resampled along its slices to about `slice_mm` (`sliding.resample_slices`), as the network reads it.

    The label is interpolated like the image and kept where it is at least one half, so a clot on one
    6 mm slice covers the three 2 mm slices around that slice's centre. The case itself when its
    spacing already gives the same number of slices, or `slice_mm` is None.
    """
    native = case.image.shape[1]
    depth = network_depth(native, case.slice_mm, slice_mm)
    if depth == native:
        return case
    image = resample_slices(case.image, depth)
    label = (resample_slices(case.label.float(), depth) >= 0.5).to(torch.uint8)
    spacing = case.slice_mm * (native - 1) / (depth - 1)
    return dataclasses.replace(
        case, image=image, label=label, brain=torch.any(image != 0, dim=0),
        foreground=np.argwhere(label.numpy() > 0).astype(np.int64), slice_mm=spacing,
        voxel_mm3=case.voxel_mm3 * spacing / case.slice_mm,
    )


def load_cases(sources: Sequence[CaseSource], channels: Sequence[str]) -> list[Case]:
    """Load every subject once (the training keeps them in memory: the demo cohort is small)."""
    cases = [load_case(source, channels) for source in sources]
    megabytes = sum(case.image.numel() * 4 + case.label.numel() * 2 for case in cases) / 1e6
    log.info("loaded %d subjects (%d with a thrombus), %.0f MB in memory", len(cases), sum(c.positive for c in cases), megabytes)
    return cases


def _build_spatial(options: AugmentOptions, patch: tuple[int, int]) -> Any:
    """MONAI's small in-plane affine on the enlarged crop, a centre crop to the patch, then flips.

    The affine keeps the enlarged size, so when it is not drawn (most samples) nothing is resampled
    and the crop is a plain slice; asking it for the patch size instead would resample every sample.
    """
    from monai.transforms import CenterSpatialCropd, Compose, RandAffined, RandFlipd

    keys = ["image", "label"]
    return Compose(
        [
            RandAffined(
                keys,
                prob=options.affine_probability,
                rotate_range=(math.radians(options.rotate_deg),),
                scale_range=(options.scale, options.scale),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            CenterSpatialCropd(keys, roi_size=patch),
            RandFlipd(keys, prob=options.flip_probability, spatial_axis=0),
            RandFlipd(keys, prob=options.flip_probability, spatial_axis=1),
        ]
    )


def _build_intensity(options: AugmentOptions, channels: int) -> Any:
    """MONAI Gaussian noise and gamma contrast, drawn independently for each sequence."""
    from monai.transforms import Compose, RandAdjustContrastd, RandGaussianNoised

    steps = []
    for channel in range(channels):
        key = f"channel{channel}"
        steps.append(RandGaussianNoised(key, prob=options.noise_probability, std=options.noise_std))
        steps.append(RandAdjustContrastd(key, prob=options.contrast_probability, gamma=options.gamma))
    return Compose(steps)


def _plain(value: Any) -> Tensor:
    """A MONAI MetaTensor (or anything tensor-like) as a plain contiguous torch tensor."""
    tensor = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)
    return tensor.contiguous()


class SlabDataset(Dataset):
    """Training slabs from cases in memory; item k is drawn from a generator seeded with (seed, k).

    Items are dicts: image (C, D, H, W) float32, label (1, D, H, W) float32, availability (C,),
    foreground (whether the slab was centred on a thrombus voxel) and subject.
    """

    def __init__(self, cases: Sequence[Case], options: SlabOptions, augment: AugmentOptions, seed: int) -> None:
        if not cases:
            raise ValueError("no training subjects: the fold's train list is empty")
        self.cases = list(cases)
        self.positive = [index for index, case in enumerate(self.cases) if case.positive]
        if not self.positive and options.foreground_probability > 0:
            log.warning("no training subject has a thrombus: every slab is drawn at random in the brain")
        self.options = options
        self.augment = augment
        self.seed = seed
        self.channels = int(self.cases[0].image.shape[0])
        patch = tuple(options.patch_size)
        self.margins = tuple(augment.margin(size) for size in patch)
        self.spatial = _build_spatial(augment, patch) if augment.enabled else None
        self.intensity = _build_intensity(augment, self.channels) if augment.enabled else None

        self.dark = [_dark_voxels(case, options.hard_negative_quantile) for case in self.cases] \
            if options.hard_negative_probability > 0 else []
        # Set by the trainer when foreground slabs are weighted by clot (thrombus.training.clots):
        # the clots, and each one's share of the foreground slabs; None keeps the per-subject draw.
        self.clots: list[Clot] = []
        self.clot_weights: np.ndarray | None = None

    def generator(self, index: int) -> np.random.Generator:
        """The generator of item `index`: a function of the seed and the index only."""
        return np.random.default_rng([self.seed, index])

    def choose(self, rng: np.random.Generator) -> tuple[Case, tuple[int, int, int], bool]:
        """A case and the (z, x, y) centre of the slab, and whether it is a foreground slab."""
        draw = rng.random() if self.positive or self.dark else 1.0
        foreground = bool(self.positive) and draw < self.options.foreground_probability
        if foreground and self.clot_weights is not None:
            clot = self.clots[int(rng.choice(len(self.clots), p=self.clot_weights))]
            return self.cases[clot.case], self._jittered(clot.voxels[rng.integers(len(clot.voxels))], rng), True
        if foreground:
            case = self.cases[self.positive[rng.integers(len(self.positive))]]
            return case, self._jittered(case.foreground[rng.integers(len(case.foreground))], rng), True
        if self.dark and draw < self.options.foreground_probability + self.options.hard_negative_probability:
            index = int(rng.integers(len(self.cases)))
            if len(self.dark[index]):
                return self.cases[index], self._jittered(self.dark[index][rng.integers(len(self.dark[index]))], rng), False
        case = self.cases[rng.integers(len(self.cases))]
        return case, self._in_brain(case, rng), False

    def _jittered(self, voxel: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
        """A centre near a thrombus voxel that keeps the voxel inside the slab's depth and the patch's middle."""
        radius = (self.options.slab_depth // 2, self.options.patch_size[0] // 3, self.options.patch_size[1] // 3)
        shift = [int(rng.integers(-r, r + 1)) for r in radius]
        return int(voxel[0]) + shift[0], int(voxel[1]) + shift[1], int(voxel[2]) + shift[2]

    @staticmethod
    def _in_brain(case: Case, rng: np.random.Generator, tries: int = 64) -> tuple[int, int, int]:
        """A uniformly random brain voxel (rejection sampling in the brain's box, which it fills by half)."""
        shape = case.brain.shape
        for _ in range(tries):
            z, x, y = (int(rng.integers(extent)) for extent in shape)
            if case.brain[z, x, y]:
                return z, x, y
        return shape[0] // 2, shape[1] // 2, shape[2] // 2

    def extract(self, case: Case, centre: tuple[int, int, int], factor: int = 1) -> tuple[Tensor, Tensor]:
        """Image (C, D, h, w) and label (D, h, w) around `centre`, with the augmentation margin in-plane.

        With `factor` k > 1 the slab is read k*D slices deep, the centre slice in the middle group, and
        every k slices merged: the image averaged, the label kept where any of them is thrombus.
        """
        depth = self.options.slab_depth
        size = (
            depth * factor,
            self.options.patch_size[0] + 2 * self.margins[0],
            self.options.patch_size[1] + 2 * self.margins[1],
        )
        start = [centre[0] - (depth // 2) * factor - factor // 2] + [c - s // 2 for c, s in zip(centre[1:], size[1:])]
        image, label = crop_padded(case.image, start, size), crop_padded(case.label, start, size)
        if factor == 1:
            return image, label
        image = image.reshape(image.shape[0], depth, factor, *size[1:]).mean(dim=2)
        label = label.reshape(depth, factor, *size[1:]).amax(dim=1)
        return image, label

    def augmented(self, image: Tensor, label: Tensor, seed: int) -> tuple[Tensor, Tensor]:
        """MONAI augmentation of one slab: spatial on C*D in-plane images, intensity per sequence."""
        channels, depth = image.shape[:2]
        self.spatial.set_random_state(seed=seed)
        self.intensity.set_random_state(seed=(seed + 1) % _MAX_SEED)
        moved = self.spatial({"image": image.reshape(channels * depth, *image.shape[2:]), "label": label.float()})
        image = _plain(moved["image"]).reshape(channels, depth, *moved["image"].shape[1:])
        inside = image != 0
        changed = self.intensity({f"channel{c}": image[c] for c in range(channels)})
        image = torch.stack([_plain(changed[f"channel{c}"]) for c in range(channels)])
        return torch.where(inside, image, torch.zeros_like(image)), (_plain(moved["label"]) > 0.5)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self.generator(index)
        case, centre, foreground = self.choose(rng)
        factor = self.augment.slice_factor(case.slice_mm, rng)
        # a slab's tensors are small: splitting their operations across threads costs more than it saves, and
        # on a busy machine the threads' waiting made the augmentation 30x slower (measured: 3.5 against 120
        # slabs/s with 2 threads on an oversubscribed 2-core machine); loader workers already run on one
        with torch_threads(1):
            image, label = self.extract(case, centre, factor)
            if self.augment.enabled:
                image, label = self.augmented(image, label, int(rng.integers(_MAX_SEED)))
        return {
            "image": image.float().contiguous(),
            "label": label.float()[None].contiguous(),
            "availability": case.availability.clone(),
            "foreground": foreground,
            "subject": case.subject,
        }


def _dark_voxels(case: Case, quantile: float, channel: int = 0) -> np.ndarray:
    """(n, 3) coordinates of the darkest brain voxels of `channel` (the susceptibility) that are not thrombus.

    Empty when the subject lacks that sequence. The clot itself is among the darkest voxels of a thin-
    slice SWI; what else is that dark is the set of look-alikes the model must learn to leave alone.
    """
    if float(case.availability[channel]) == 0.0:
        return np.zeros((0, 3), dtype=np.int64)
    values = case.image[channel]
    inside = case.brain & (values != 0)
    if not bool(inside.any()):
        return np.zeros((0, 3), dtype=np.int64)
    cut = float(np.quantile(values[inside].numpy(), quantile))
    dark = inside & (values <= cut) & (case.label == 0)
    return np.argwhere(dark.numpy()).astype(np.int64)


class IterationSampler(Sampler[int]):
    """Item indices of iterations [start, stop) of batches of `batch_size`: k = iteration * batch + b.

    Its whole state is the iteration it starts at, which is what a checkpoint stores to resume.
    """

    def __init__(self, start: int, stop: int, batch_size: int) -> None:
        self.start, self.stop, self.batch_size = start, stop, batch_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start * self.batch_size, self.stop * self.batch_size))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0) * self.batch_size
