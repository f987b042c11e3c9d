"""The `train` section of the config as typed options: what a training run does, checked when it is read.

Kept apart from the loop so that the command line, the ladder and the workflow can read and check a
config without importing the training machinery.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from thrombus.options import check_known_keys
from thrombus.training.data import AugmentOptions, SlabOptions
from thrombus.training.gmd import GMDOptions

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
LOSSES: tuple[str, ...] = ("dice_bce", "dice_focal", "slab_dice_bce", "batch_slab_dice_bce")
#: Options that change how fast a run goes but not its result; kept out of the model card.
RUN_ONLY_OPTIONS: tuple[str, ...] = ("num_workers", "val_batch_size")


@dataclass(frozen=True)
class GMDSettings:
    """The config's `train.gmd` section: GMD with droppable sequences named, not numbered."""

    mode: str = "gradual"
    p: float = 0.2
    sigma: float = 0.1
    droppable: tuple[str, ...] | None = None
    heterogeneity: bool = True

    def options(self, channels: Sequence[str]) -> GMDOptions:
        """GMDOptions with the droppable sequences turned into channel indices."""
        droppable = None
        if self.droppable is not None:
            unknown = [name for name in self.droppable if name not in channels]
            if unknown:
                raise ValueError(f"train.gmd.droppable names {unknown}, which are not model channels {list(channels)}")
            droppable = tuple(channels.index(name) for name in self.droppable)
        return GMDOptions(mode=self.mode, p=self.p, sigma=self.sigma, droppable=droppable, heterogeneity=self.heterogeneity)


@dataclass(frozen=True)
class TrainOptions:
    """Everything of a training run that the config's `train` section sets (see config/README.md).

    Defaults are sized for the demo on 2 CPU cores: a fold of the demo cohort (19 training, 5
    validation subjects) trains in about 6 minutes on an otherwise idle machine (0.45 s a step, 45 s a
    validation pass) and reaches a validation Dice of about 0.26. Small 64 x 64 patches, 8 to a batch,
    put more thrombus voxels in each step than 4 patches of 96 x 96 at the same cost, which is what
    matters in so short a run (4 x 96 x 96 at learning rate 2e-3 were still at Dice 0 after 400 steps,
    their thrombus probabilities barely above the background's). nnU-Net's own
    are optimizer sgd, learning_rate 0.01, iterations 250000, batch_size 2 (3D) to 12 (2D).
    """

    iterations: int = 600
    batch_size: int = 8
    val_every: int = 300
    optimizer: str = "adamw"
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    poly_power: float = 0.9
    grad_clip: float = 12.0
    loss: str = "dice_bce"
    foreground_prior: float | None = None
    slab_depth: int = 5
    predict_stride: int | None = None  # None: the slab depth, every slice predicted once
    predict_tiled: bool = False  # whole-volume predictions in in-plane tiles of patch_size (sliding.py)
    slice_mm: float | None = None  # slice spacing the network reads (sliding.resample_slices); None: each subject's own
    patch_size: tuple[int, int] = (64, 64)
    foreground_probability: float = 0.33
    hard_negative_probability: float = 0.0
    hard_negative_quantile: float = 0.005
    clot_reweight_every: int | None = None  # None: foreground slabs spread evenly over the positive subjects
    num_workers: int = 0
    val_batch_size: int = 4
    augmentation: AugmentOptions = field(default_factory=AugmentOptions)
    gmd: GMDSettings = field(default_factory=GMDSettings)
    init_from: str | None = None  # a shipped model's name or a checkpoint path (pretrained.py); None: from scratch

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss {self.loss!r} is unknown: choose one of {', '.join(LOSSES)}")
        if self.foreground_prior is not None and not 0.0 < self.foreground_prior < 0.5:
            raise ValueError(f"train.foreground_prior must be in (0, 0.5) or null, got {self.foreground_prior}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer {self.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
        for name in ("iterations", "batch_size", "val_every", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.num_workers < 0:
            raise ValueError(
                f"train.learning_rate must be > 0 and train.num_workers >= 0, got {self.learning_rate}, {self.num_workers}"
            )
        if self.clot_reweight_every is not None and self.clot_reweight_every < 1:
            raise ValueError(f"train.clot_reweight_every must be at least 1 or null, got {self.clot_reweight_every}")
        if self.slice_mm is not None and not 0.5 <= self.slice_mm <= 10.0:
            raise ValueError(f"train.slice_mm must be between 0.5 and 10 mm or null, got {self.slice_mm}")
        self.slab()
        if not 1 <= self.stride <= self.slab_depth:
            raise ValueError(
                f"train.predict_stride must be between 1 and train.slab_depth ({self.slab_depth}), got {self.predict_stride}"
            )

    @property
    def stride(self) -> int:
        """Slices between the slabs of a whole-volume prediction (validation, calibration, inference).

        The slab depth by default: on the demo cohort stride 1 (every slice averaged over five slabs)
        gave the same Dice and detections as stride 5 for 4.8x the time (BENCHMARKS.md).
        """
        return self.slab_depth if self.predict_stride is None else self.predict_stride

    @property
    def tile(self) -> tuple[int, int] | None:
        """In-plane tile of whole-volume predictions: the training patch when `predict_tiled`, else whole slices."""
        return tuple(self.patch_size) if self.predict_tiled else None

    def slab(self) -> SlabOptions:
        return SlabOptions(self.slab_depth, tuple(self.patch_size), self.foreground_probability,
                           self.hard_negative_probability, self.hard_negative_quantile)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], ignore: Sequence[str] = ()) -> TrainOptions:
        """From the config's `train` section; unknown keys are an error (a typo must not pass silently)."""
        values = {key: value for key, value in values.items() if key not in ignore}
        check_known_keys(cls, values, "train", also_known=ignore)
        converted = dict(values)
        if "patch_size" in converted:
            converted["patch_size"] = tuple(converted["patch_size"])
        if "augmentation" in converted:
            augmentation = dict(converted["augmentation"])
            if "gamma" in augmentation:
                augmentation["gamma"] = tuple(augmentation["gamma"])
            converted["augmentation"] = AugmentOptions(**augmentation)
        if "gmd" in converted:
            gmd = dict(converted["gmd"])
            if gmd.get("droppable") is not None:
                gmd["droppable"] = tuple(gmd["droppable"])
            converted["gmd"] = GMDSettings(**gmd)
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def card_dict(self) -> dict[str, Any]:
        """The options that decide the trained weights (the model card's `training` part)."""
        return {key: value for key, value in self.to_dict().items() if key not in RUN_ONLY_OPTIONS}


