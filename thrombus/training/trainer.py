"""The training loop: slabs, augmentation, gradual modality dropout, Dice + BCE, validation, checkpoints.

One run trains one fold of a split file for a fixed number of iterations (nnU-Net counts iterations,
not epochs: with foreground oversampling an "epoch" has no meaning). Every `val_every` iterations the
model predicts the whole volumes of the validation subjects by sliding slabs and is scored; `latest.pt`
is written then, and `best.pt` whenever the validation Dice improves.

The loss is soft Dice plus binary cross-entropy. The Dice term is computed over the whole batch at once
(nnU-Net's batch Dice): most slabs hold no thrombus, a per-slab Dice would be undefined or all-or-nothing
on them, and pooling the batch gives a term that directly rewards overlap on the tiny foreground whatever
its share of voxels (the class imbalance). The BCE term gives every voxel a gradient, also in slabs
without foreground where it teaches the model to stay quiet on look-alikes, and keeps the logits
calibrated; Dice alone is known to train erratically on targets this small.

A stopped run continues with `resume=True` to exactly the weights of a run that never stopped (CPU,
same threads): the checkpoint holds the optimiser, the LR schedule, the iteration and every random
state (torch, numpy, python, the GMD generator); the slab sampler and MONAI's augmentation are seeded per
sample from (seed, sample index), so the iteration number is their whole state.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from thrombus.device import autocast, resolve_device
from thrombus.io import atomic_path, write_json, write_text
from thrombus.model import ModelConfig, build_model, count_parameters
from thrombus.model.sliding import predict_case
from thrombus.options import check_known_keys
from thrombus.progress import progress
from thrombus.provenance import package_versions
from thrombus.training.card import CheckpointError, load_checkpoint, save_checkpoint
from thrombus.training.data import AugmentOptions, Case, IterationSampler, SlabDataset, SlabOptions
from thrombus.training.gmd import GMDOptions, apply_gmd, strength

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("adamw", "sgd")
LOG_COLUMNS: tuple[str, ...] = ("iteration", "loss", "lr", "gmd_strength", "val_dice", "val_loss", "seconds")
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
    slab_depth: int = 5
    predict_stride: int | None = None  # None: the slab depth, every slice predicted once
    patch_size: tuple[int, int] = (64, 64)
    foreground_probability: float = 0.33
    num_workers: int = 0
    val_batch_size: int = 4
    augmentation: AugmentOptions = field(default_factory=AugmentOptions)
    gmd: GMDSettings = field(default_factory=GMDSettings)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"train.optimizer {self.optimizer!r} is unknown: choose one of {', '.join(OPTIMIZERS)}")
        for name in ("iterations", "batch_size", "val_every", "val_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.num_workers < 0:
            raise ValueError(
                f"train.learning_rate must be > 0 and train.num_workers >= 0, got {self.learning_rate}, {self.num_workers}"
            )
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

    def slab(self) -> SlabOptions:
        return SlabOptions(self.slab_depth, tuple(self.patch_size), self.foreground_probability)

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


@dataclass
class TrainRun:
    """One fold's training: data, settings, where it goes, and how it runs.

    Attributes:
        card: the model card (`thrombus.training.card.make_card`) stored in every checkpoint.
        resume: continue from `out_dir/latest.pt` when it exists (refused if its card differs).
        stop_after: stop (with `latest.pt` written) after this many iterations, e.g. to fit a job's
            time limit; the run is continued with `resume`.
    """

    train_cases: list[Case]
    val_cases: list[Case]
    model: ModelConfig
    options: TrainOptions
    card: dict[str, Any]
    out_dir: Path
    seed: int
    threads: int
    device: str = "auto"
    resume: bool = False
    stop_after: int | None = None
    progress: bool = True


@dataclass
class Validation:
    """Scores of one validation pass."""

    dice: float
    loss: float
    per_case: dict[str, float]


def make_loss() -> nn.Module:
    """Soft Dice over the batch plus BCE, from MONAI (the reasons are in the module docstring)."""
    from monai.losses import DiceCELoss

    return DiceCELoss(sigmoid=True, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


def make_optimizer(model: nn.Module, options: TrainOptions) -> torch.optim.Optimizer:
    """AdamW (the short CPU demo converges in hundreds of steps) or nnU-Net's SGD, Nesterov momentum 0.99."""
    if options.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=options.learning_rate,
            momentum=options.momentum,
            nesterov=True,
            weight_decay=options.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, options: TrainOptions) -> torch.optim.lr_scheduler.LRScheduler:
    """nnU-Net's poly learning rate: lr * (1 - iteration / iterations) ** 0.9, stepped every iteration."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=options.iterations, power=options.poly_power)


def rng_state(gmd_generator: torch.Generator) -> dict[str, Any]:
    """Every random state the run draws from, as tensors and plain values (weights_only-loadable)."""
    numpy_state = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "cached_gaussian": float(numpy_state[4]),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "gmd": gmd_generator.get_state(),
    }


def restore_rng_state(state: Mapping[str, Any], gmd_generator: torch.Generator) -> None:
    """Undo `rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy_state = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    python = state["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))
    gmd_generator.set_state(state["gmd"])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def dice_score(logits: Tensor, case: Case) -> float:
    """Dice of the thresholded prediction (p > 0.5) against the whole mask (voxels outside the box count as missed)."""
    predicted = logits > 0
    truth = case.label > 0
    overlap = int((predicted & truth).sum())
    size = int(predicted.sum()) + int(truth.sum()) + case.label_outside
    return 2.0 * overlap / size if size else 1.0


def validate(
    model: nn.Module, cases: Sequence[Case], loss_fn: nn.Module, options: TrainOptions, device: torch.device
) -> Validation:
    """Whole-volume validation: mean Dice over thrombus-positive cases, mean loss over all cases."""
    model.eval()
    losses, dices = [], {}
    for case in cases:
        logits = predict_case(model, case, options.slab_depth, options.val_batch_size, device, options.stride)
        losses.append(float(loss_fn(logits[None, None], case.label[None, None].float())))
        if case.positive:
            dices[case.subject] = dice_score(logits, case)
    model.train()
    dice = float(np.mean(list(dices.values()))) if dices else math.nan
    return Validation(dice=dice, loss=float(np.mean(losses)), per_case=dices)


def batches(run: TrainRun, start: int, stop: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """Training batches of iterations [start, stop), identical whatever `num_workers` is."""
    options = run.options
    dataset = SlabDataset(run.train_cases, options.slab(), options.augmentation, seed=run.seed + 2)
    loader = DataLoader(
        dataset,
        batch_size=options.batch_size,
        sampler=IterationSampler(start, stop, options.batch_size),
        num_workers=options.num_workers,
        pin_memory=device.type == "cuda",
    )
    return iter(loader)


class Trainer:
    """The state of one run and the steps that change it."""

    def __init__(self, run: TrainRun) -> None:
        self.run = run
        self.options = run.options
        self.device = resolve_device(run.device, "--device")
        torch.set_num_threads(run.threads)
        seed_everything(run.seed)
        self.model = build_model(run.model).to(self.device)
        self.optimizer = make_optimizer(self.model, self.options)
        self.schedule = make_schedule(self.optimizer, self.options)
        self.loss_fn = make_loss()
        self.gmd_options = self.options.gmd.options(list(run.model.channels))
        self.gmd_generator = torch.Generator().manual_seed(run.seed + 1)
        self.iteration = 0
        self.seconds = 0.0
        self.best: dict[str, Any] = {"iteration": None, "val_dice": None, "val_loss": None, "score": None}
        self.rows: list[dict[str, Any]] = []

    def state(self) -> dict[str, Any]:
        """The training state saved beside the weights."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "iteration": self.iteration,
            "seconds": self.seconds,
            "best": dict(self.best),
            "log": [dict(row) for row in self.rows],
            "rng": rng_state(self.gmd_generator),
            "sampler": {"seed": self.run.seed + 2, "next_iteration": self.iteration},
        }

    def resume_from(self, path: Path) -> None:
        """Continue from a checkpoint of this very run; refused when its card differs from ours."""
        payload = load_checkpoint(path, self.expected_card())
        if payload["card"].get("code") != self.run.card.get("code"):
            log.warning("resuming %s made by code %s with code %s", path, payload["card"].get("code"), self.run.card.get("code"))
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.schedule.load_state_dict(payload["schedule"])
        self.iteration = int(payload["iteration"])
        self.seconds = float(payload["seconds"])
        self.best = dict(payload["best"])
        self.rows = [dict(row) for row in payload["log"]]
        restore_rng_state(payload["rng"], self.gmd_generator)
        self.recover_best(path)
        log.info("resumed %s at iteration %d of %d", path, self.iteration, self.options.iterations)

    def recover_best(self, latest: Path) -> None:
        """best.pt is written right after latest.pt when a validation improves; a job killed between the
        two leaves a latest.pt whose best is its own iteration and no (or an older) best.pt. That best
        holds exactly latest's weights, so it is rewritten from them."""
        if self.best.get("iteration") != self.iteration:
            return
        best = latest.with_name("best.pt")
        try:
            complete = best.exists() and int(load_checkpoint(best, self.expected_card()).get("iteration", -1)) == self.iteration
        except CheckpointError:
            complete = False
        if not complete:
            log.warning("%s was cut short by a kill: rewritten from %s (the same iteration)", best, latest)
            self.save("best.pt")

    def expected_card(self) -> dict[str, Any]:
        """What a checkpoint of this run must carry; the code version may differ (warned about, not refused)."""
        return {key: value for key, value in self.run.card.items() if key != "code"}

    def save(self, name: str) -> Path:
        return save_checkpoint(self.run.out_dir / name, self.run.card, self.model.state_dict(), **self.state())

    def step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """One optimiser step on one batch: GMD (after augmentation), forward, Dice + BCE, backward."""
        progress = self.iteration / self.options.iterations
        image = batch["image"].to(self.device, non_blocking=True)
        label = batch["label"].to(self.device, non_blocking=True)
        availability = batch["availability"].to(self.device, non_blocking=True)
        image, availability = apply_gmd(image, availability, progress, self.gmd_options, self.gmd_generator)
        lr = self.optimizer.param_groups[0]["lr"]
        with autocast(self.device):
            logits = self.model(image, availability)
        loss = self.loss_fn(logits.float(), label)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), self.options.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        self.iteration += 1
        return {"loss": float(loss.detach()), "lr": lr, "gmd_strength": strength(progress, self.gmd_options.mode)}

    def validate_and_save(self) -> Validation | None:
        """Validation pass (when there are validation subjects), `latest.pt`, and `best.pt` when better."""
        if not self.run.val_cases:
            self.save("latest.pt")
            return None
        result = validate(self.model, self.run.val_cases, self.loss_fn, self.options, self.device)
        # Dice decides when a validation case has a thrombus; otherwise only the loss can.
        score = result.dice if not math.isnan(result.dice) else -result.loss
        improved = self.best["score"] is None or score > self.best["score"]
        if improved:
            self.best = {"iteration": self.iteration, "val_dice": result.dice, "val_loss": result.loss, "score": score}
        self.rows[-1].update(val_dice=result.dice, val_loss=result.loss)
        self.save("latest.pt")
        if improved:
            self.save("best.pt")
        log.info(
            "iteration %d: val Dice %.4f, val loss %.4f%s %s",
            self.iteration,
            result.dice,
            result.loss,
            " (best)" if improved else "",
            {k: round(v, 3) for k, v in result.per_case.items()},
        )
        return result

    def fit(self) -> None:
        """Train up to `iterations` (or `stop_after`), validating and checkpointing on the way."""
        options = self.options
        stop = min(options.iterations, self.run.stop_after or options.iterations)
        bar = progress(total=stop, initial=self.iteration, desc="training", unit="it", disable=not self.run.progress)
        self.model.train()
        started = time.perf_counter() - self.seconds
        for batch in batches(self.run, self.iteration, stop, self.device):
            values = self.step(batch)
            self.seconds = time.perf_counter() - started
            self.rows.append({"iteration": self.iteration, **values, "val_dice": None, "val_loss": None, "seconds": self.seconds})
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.3f}", best_dice=self.best["val_dice"])
            if self.iteration % options.val_every == 0 or self.iteration == options.iterations:
                self.validate_and_save()
                self.seconds = time.perf_counter() - started
                self.rows[-1]["seconds"] = self.seconds
                write_log(self.run.out_dir / "training_log.csv", self.rows)
        bar.close()
        if self.iteration < options.iterations:
            self.save("latest.pt")
            write_log(self.run.out_dir / "training_log.csv", self.rows)
            log.info("stopped after iteration %d of %d: continue with --resume", self.iteration, options.iterations)


def write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The CSV log, one row per iteration; validation columns empty between validations."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LOG_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in LOG_COLUMNS})
    write_text(path, buffer.getvalue())


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], target: Path, title: str) -> None:
    """Training loss (raw and moving average), validation loss, validation Dice and GMD strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = np.array([row["iteration"] for row in rows])
    loss = np.array([row["loss"] for row in rows], dtype=float)
    window = max(len(loss) // 20, 1)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    validated = [row for row in rows if row.get("val_loss") is not None]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(iterations, loss, color="0.8", linewidth=0.6, label="training loss")
    top.plot(iterations[window - 1 :], smooth, color="C0", label=f"training loss, mean of {window}")
    top.plot([r["iteration"] for r in validated], [r["val_loss"] for r in validated], "o-", color="C1", label="validation loss")
    top.set_ylabel("Dice + BCE")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.plot(
        [r["iteration"] for r in validated], [r["val_dice"] for r in validated], "o-", color="C2", label="validation Dice"
    )
    bottom.step(iterations, [row["gmd_strength"] for row in rows], where="post", color="C3", alpha=0.6, label="GMD strength")
    bottom.set_ylim(0, 1.05)
    bottom.set_xlabel("iteration")
    bottom.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


@dataclass(frozen=True)
class TrainResult:
    """What a finished (or stopped) run reports."""

    iterations_done: int
    best: dict[str, Any]
    seconds: float
    out_dir: Path


def train(run: TrainRun) -> TrainResult:
    """Train one fold; writes best.pt, latest.pt, model_card.json, training_log.csv, learning_curves.png."""
    run.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(run)
    latest = run.out_dir / "latest.pt"
    if run.resume and latest.exists():
        trainer.resume_from(latest)
    else:
        if run.resume:
            log.info("no %s to resume from: starting from iteration 0", latest)
        discard_checkpoints(run.out_dir)
    if trainer.iteration >= run.options.iterations:
        log.info("%s has finished all %d iterations already", latest, run.options.iterations)
    trainer.fit()
    done = trainer.iteration >= run.options.iterations
    if done and not run.val_cases:
        log.warning("no validation subjects in this fold: best.pt holds the final weights")
        trainer.save("best.pt")
    if done:
        finish(trainer)
    return TrainResult(trainer.iteration, dict(trainer.best), trainer.seconds, run.out_dir)


def discard_checkpoints(out_dir: Path) -> None:
    """Remove the checkpoints of an earlier run, so none of them can pass for this run's."""
    for name in ("best.pt", "latest.pt"):
        if (out_dir / name).exists():
            log.info("starting afresh: removing %s of an earlier run", out_dir / name)
            (out_dir / name).unlink()


def finish(trainer: Trainer) -> None:
    """The model card JSON, the learning-curve picture and the calibrated postprocessing of a finished run.

    The threshold and minimum component size are chosen with the weights inference will use (best.pt),
    on the validation subjects, so the test subjects never influence them.
    """
    from thrombus.inference.postprocess import calibrate

    run = trainer.run
    write_log(run.out_dir / "training_log.csv", trainer.rows)
    plot_learning_curves(
        trainer.rows,
        run.out_dir / "learning_curves.png",
        f"{run.model.architecture}, {run.card['training'].get('split', {}).get('name', '')}",
    )
    if run.val_cases:
        best = load_checkpoint(run.out_dir / "best.pt", {key: value for key, value in run.card.items() if key != "code"})
        trainer.model.load_state_dict(best["model"])
    options = run.options
    post = calibrate(trainer.model, run.val_cases, options.slab_depth, options.val_batch_size, trainer.device,
                     stride=options.stride, progress=run.progress)
    write_json(run.out_dir / "postprocessing.json", post.to_dict())
    write_json(
        run.out_dir / "model_card.json",
        {
            **run.card,
            "postprocessing": post.to_dict(),
            "result": {
                "iterations": trainer.iteration,
                "best": {key: value for key, value in trainer.best.items() if key != "score"},
                "seconds": round(trainer.seconds, 1),
                "seconds_per_iteration_with_validation": round(trainer.seconds / max(trainer.iteration, 1), 3),
                "parameters": count_parameters(trainer.model),
                "device": str(trainer.device),
                "threads": run.threads,
                "versions": package_versions(("torch", "monai", "numpy")),
            },
        },
    )
    if trainer.best["iteration"] is not None:
        log.info(
            "best validation at iteration %s: Dice %s, loss %s",
            trainer.best["iteration"],
            trainer.best["val_dice"],
            trainer.best["val_loss"],
        )
