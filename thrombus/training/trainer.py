"""The training loop: slabs, augmentation, gradual modality dropout, Dice + BCE, validation, checkpoints.

One run trains one fold of a split file for a fixed number of iterations (nnU-Net counts iterations,
not epochs: with foreground oversampling an "epoch" has no meaning). Every `val_every` iterations the
model predicts the whole volumes of the validation subjects by sliding slabs and is scored; `latest.pt`
is written then, and `best.pt` whenever the validation Dice improves. With fewer thrombus-positive
validation subjects than `validation.MIN_POSITIVES` a validation chooses nothing: best.pt is written at
every validation, so it ends as the final weights (the choice on so few subjects is noise), and the
curve is still drawn.

The loss is soft Dice plus binary cross-entropy. The Dice term is computed over the whole batch at once
(nnU-Net's batch Dice): most slabs hold no thrombus, a per-slab Dice would be undefined or all-or-nothing
on them, and pooling the batch gives a term that directly rewards overlap on the tiny foreground whatever
its share of voxels (the class imbalance). The BCE term gives every voxel a gradient, also in slabs
without foreground where it teaches the model to stay quiet on look-alikes, and keeps the logits
calibrated; Dice alone is known to train erratically on targets this small. The batch Dice has a blind
spot: a clot missed beside one that is hit costs only its share of the pooled voxels, and the models of
the multi-center ladder rung learned to score every M2 branch clot (p < 0.001, in their own training
subjects too) as a look-alike. `train.loss: batch_slab_dice_bce` adds the Dice of each slab that holds
thrombus, averaged over those slabs (optim.py; RESULTS.md, recipe `batch_slab_dice`).

A stopped run continues with `resume=True` to exactly the weights of a run that never stopped (CPU,
same threads): the checkpoint holds the optimiser, the LR schedule, the iteration and every random
state (torch, numpy, python, the GMD generator); the slab sampler and MONAI's augmentation are seeded per
sample from (seed, sample index), so the iteration number is their whole state.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from thrombus.device import autocast, resolve_device, set_threads
from thrombus.io import write_json
from thrombus.model import ModelConfig, build_model, count_parameters
from thrombus.progress import progress
from thrombus.provenance import package_versions
from thrombus.training.card import CheckpointError, load_checkpoint, save_checkpoint
from thrombus.training.clots import clot_fit, find_clots, sampling_weights
from thrombus.training.curves import plot_learning_curves, write_log
from thrombus.training.data import Case, IterationSampler, SlabDataset, at_slice_spacing
from thrombus.training.gmd import apply_gmd, strength
from thrombus.training.optim import make_loss, make_optimizer, make_schedule, set_foreground_prior
from thrombus.training.options import TrainOptions
from thrombus.training.state import restore_rng_state, rng_state, seed_everything
from thrombus.training.validation import Validation, too_few_to_choose, validate

log = logging.getLogger(__name__)

@dataclass
class TrainRun:
    """One fold's training: data, settings, where it goes, and how it runs.

    Attributes:
        card: the model card (`thrombus.training.card.make_card`) stored in every checkpoint.
        resume: continue from `out_dir/latest.pt` when it exists (refused if its card differs).
        stop_after: stop (with `latest.pt` written) after this many iterations, e.g. to fit a job's
            time limit; the run is continued with `resume`.
        initial_state: the weights to start from instead of a random initialisation (`train.init_from`,
            `pretrained.initial_weights`); the card records which.
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
    initial_state: Mapping[str, torch.Tensor] | None = None  # weights to start from (`train.init_from`)


def slab_dataset(run: TrainRun) -> SlabDataset:
    """The run's training slabs; with `clot_reweight_every` it also knows each training clot."""
    options = run.options
    dataset = SlabDataset([at_slice_spacing(case, options.slice_mm) for case in run.train_cases], options.slab(), options.augmentation, seed=run.seed + 2)
    if options.clot_reweight_every is not None:
        dataset.clots = find_clots(dataset.cases)
    return dataset


def batches(dataset: SlabDataset, run: TrainRun, start: int, stop: int, device: torch.device) -> Iterator[dict[str, Any]]:
    """Training batches of iterations [start, stop), identical whatever `num_workers` is."""
    options = run.options
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
        set_threads(run.threads)
        seed_everything(run.seed)
        self.model = build_model(run.model)
        if self.options.foreground_prior is not None:
            set_foreground_prior(self.model, self.options.foreground_prior)
        if run.initial_state is not None:
            self.model.load_state_dict(run.initial_state)
        self.model = self.model.to(self.device)
        self.optimizer = make_optimizer(self.model, self.options)
        self.schedule = make_schedule(self.optimizer, self.options)
        self.loss_fn = make_loss(self.options.loss)
        self.gmd_options = self.options.gmd.options(list(run.model.channels))
        self.gmd_generator = torch.Generator().manual_seed(run.seed + 1)
        self.iteration = 0
        self.seconds = 0.0
        self.best: dict[str, Any] = {"iteration": None, "val_dice": None, "val_loss": None, "score": None}
        self.rows: list[dict[str, Any]] = []
        self.clot_weights: list[float] | None = None  # each training clot's share of the foreground slabs
        self.too_few = too_few_to_choose(run.val_cases)  # None: each validation chooses best.pt

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
            "sampler": {"seed": self.run.seed + 2, "next_iteration": self.iteration, "clot_weights": self.clot_weights},
        }

    def resume_from(self, path: Path) -> None:
        """Continue from a checkpoint of this very run; refused when its card differs from ours, saying how to
        start afresh (a changed `iterations` or recipe in the config lands here)."""
        try:
            payload = load_checkpoint(path, self.expected_card())
        except CheckpointError as error:
            raise CheckpointError(f"{error}. To train this configuration from the start instead of resuming, remove "
                                  f"{path.parent} (its checkpoints are of the other configuration)") from error
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
        self.clot_weights = payload["sampler"].get("clot_weights")
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
        improved = self.too_few is not None or self.best["score"] is None or score > self.best["score"]
        if improved:
            self.best = {"iteration": self.iteration, "val_dice": result.dice, "val_loss": result.loss, "score": score,
                         "selection": self.too_few or "best validation Dice"}
        self.rows[-1].update(val_dice=result.dice, val_loss=result.loss)
        self.save("latest.pt")
        if improved:
            self.save("best.pt")
        log.info(
            "iteration %d: val Dice %.4f, val loss %.4f%s %s",
            self.iteration,
            result.dice,
            result.loss,
            (" (best.pt: the latest weights)" if self.too_few else " (best)") if improved else "",
            {k: round(v, 3) for k, v in result.per_case.items()},
        )
        return result

    def reweight_clots(self, dataset: SlabDataset) -> None:
        """Each training clot's share of the foreground slabs from its fit by the current weights (clots.py)."""
        if not dataset.clots:
            return
        fits = clot_fit(self.model, dataset.cases, dataset.clots, self.options.slab_depth, tuple(self.options.patch_size), self.device)
        self.clot_weights = [float(w) for w in sampling_weights(fits)]
        missed = int((fits < 0.1).sum())
        log.info("iteration %d: %d of %d training clots fitted below Dice 0.1 (median fit %.2f); foreground slabs re-weighted",
                 self.iteration, missed, len(fits), float(np.median(fits)))

    def fit(self) -> None:
        """Train up to `iterations` (or `stop_after`), validating and checkpointing on the way."""
        options = self.options
        stop = min(options.iterations, self.run.stop_after or options.iterations)
        bar = progress(total=stop, initial=self.iteration, desc="training", unit="it", disable=not self.run.progress)
        self.model.train()
        started = time.perf_counter() - self.seconds
        dataset = slab_dataset(self.run)
        every = options.clot_reweight_every
        while self.iteration < stop:
            chunk_stop = stop if every is None else min(stop, (self.iteration // every + 1) * every)
            if every is not None and self.iteration % every == 0:
                self.reweight_clots(dataset)
            dataset.clot_weights = None if self.clot_weights is None else np.asarray(self.clot_weights)
            for batch in batches(dataset, self.run, self.iteration, chunk_stop, self.device):
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
    """The model card JSON and the learning-curve picture of a finished run.

    Its threshold and smallest component are chosen afterwards by the calibration stage
    (`thrombus calibrate`), on best.pt and the validation subjects.
    """
    run = trainer.run
    write_log(run.out_dir / "training_log.csv", trainer.rows)
    plot_learning_curves(
        trainer.rows,
        run.out_dir / "learning_curves.png",
        f"{run.model.architecture}, {run.card['training'].get('split', {}).get('name', '')}",
    )
    write_json(
        run.out_dir / "model_card.json",
        {
            **run.card,
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
            "best.pt is iteration %s (%s): validation Dice %s, loss %s",
            trainer.best["iteration"],
            trainer.best.get("selection", "best validation Dice"),
            trainer.best["val_dice"],
            trainer.best["val_loss"],
        )
