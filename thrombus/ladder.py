"""The learnability ladder: can a training recipe learn the thrombus, and how fast, on CPU.

Four rungs, each a training with a learning curve scored on whole volumes:

* `overfit`: train and score on one thrombus-positive subject. A recipe that cannot learn one clot it
  sees every step has a bug or a loss that does not reach the foreground; nothing else is worth running.
* `monocentric`: train on the SWI centers' subjects, score on held-out subjects of the same centers
  (the paper's monocentric setting, where it reports detection > 90% and Dice 0.65).
* `mixed`: train on those centers plus a share of the held-out center's subjects, score the rest of it:
  whether the held-out center's clots can be learned at all once the network has seen that kind of
  site. It separates "this site cannot be learned by this recipe" from "this site is unlike the
  training sites" (a domain gap that only training data of that kind closes).
* `loco`: train on those centers, score on a center never seen (thick-slice T2* in the presets),
  with the final weights: no checkpoint is chosen on the scored subjects.

Every recipe runs every rung with the same subjects, seed and thread count, so a row of the table is a
before/after of the recipe alone. A second training seed (`--train-seed`: the same subjects, another
initialisation and draw of slabs) adds a row beside the first instead of replacing it: with a dozen scored
subjects one detection is 8 points of detection rate, and only a rerun says whether a before/after is more
than the seed. Curves are scored at a fixed threshold of 0.5 and no size filter (the
network's own output, before any calibration), with the evaluation's rules: a thrombus is detected when
a predicted 26-connected component overlaps it by >= 1 voxel; a false-positive component is one that
overlaps no thrombus voxel. Time is counted as CPU seconds of the training process (all its threads),
without the scoring passes, and as wall seconds beside it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from thrombus.experiments import deep_merge
from thrombus.inference.lesion_gate import CaseGate, LesionGate, case_gates
from thrombus.io import read_json, write_json
from thrombus.samples import Subject, read_sheet, subjects
from thrombus.paper_report import render_stored
from thrombus.provenance import machine_description
from thrombus.training.pretrained import render_cards

log = logging.getLogger(__name__)

RUNGS: tuple[str, ...] = ("overfit", "monocentric", "mixed", "loco")
#: Rung kinds beyond the four rungs: `subjects` trains and scores the subjects its config lists (a question
#: about one kind of clot, say), which may overlap to score training subjects in-sample.
KINDS: tuple[str, ...] = (*RUNGS, "subjects")
#: 26-connectivity, the evaluation's rule for components.
STRUCTURE = np.ones((3, 3, 3), dtype=bool)


class LadderError(ValueError):
    """A ladder configuration that cannot run; the message names the key."""


@dataclass(frozen=True)
class RungSpec:
    """One rung: which subjects train and which are scored, for how long."""

    name: str
    iterations: int
    eval_every: int
    train: tuple[str, ...]
    scored: tuple[str, ...]


@dataclass
class Point:
    """The scores of one pass over the scored subjects.

    None marks a figure a row imported from an older RESULTS.md never showed (its intermediate points
    listed Dice and detections only); a run fills every field.
    """

    iteration: int
    cpu_seconds: float | None
    wall_seconds: float | None
    dice: float
    detected: int
    positives: int
    negatives_with_fp: int | None
    negatives: int
    fp_components: float | None
    per_case: dict[str, float] = field(default_factory=dict)


@dataclass
class RungResult:
    """A recipe's curve on one rung."""

    recipe: str
    rung: str
    train: list[str]
    scored: list[str]
    points: list[Point]
    whole_slices: Point | None = None
    commit: str = ""
    threads: int = 0
    machine: str = ""
    date: str = ""
    source: str = ""  # empty for a run; otherwise where the row's figures came from
    segments: dict[str, str] = field(default_factory=dict)  # scored subject -> clot's arterial segment, when known
    seed: int | None = None  # the training seed when it is not the ladder's own (None: the ladder's seed)
    gated: Point | None = None  # the final weights' scores with the lesion gate (`lesion_gate`)
    gated_subjects: int | None = None  # how many scored subjects the gate was applied to (the others have no ADC map)

    def minutes_to(self, dice: float) -> float | None:
        """CPU minutes until the scored Dice first reached `dice` (None: never, or not recorded)."""
        for point in self.points:
            if point.dice >= dice:
                return None if point.cpu_seconds is None else point.cpu_seconds / 60.0
        return None

    def provenance(self) -> str:
        """Where the row comes from: commit, machine, threads, day, and its source when not a run."""
        text = f"commit {self.commit or 'unknown'}, {self.machine or 'machine not recorded'}, {self.threads} torch threads"
        text += f", {self.date}" if self.date else ""
        return text + (f"; {self.source}" if self.source else "")


def _split_centers(pool: Sequence[Subject], share: float, seed: int) -> tuple[list[str], list[str]]:
    """Per center and label, `share` of the subjects scored (at least one of each label present), the rest trained."""
    rng = np.random.default_rng(seed)
    train, scored = [], []
    for center in sorted({s.center for s in pool}):
        for label in ("1", "0"):
            group = sorted(s.subject for s in pool if s.center == center and s.thrombus == label)
            if not group:
                continue
            order = [group[i] for i in rng.permutation(len(group))]
            count = max(1, round(share * len(group))) if len(group) > 1 else 0
            scored += order[:count]
            train += order[count:]
    return sorted(train), sorted(scored)


def _centers_of(labelled: Sequence[Subject], centers: Sequence[str], held_out: Sequence[str], rung: str) -> list[Subject]:
    """The labelled subjects of `centers` (loco's own training centers, which may add a center of the held-out
    center's protocol to the SWI ones); a held-out or unknown center there is refused."""
    known = {s.center for s in labelled}
    wrong = sorted(set(centers) & set(held_out)) + sorted(set(centers) - known)
    if wrong:
        raise LadderError(f"ladder: {rung}.train_centers {list(centers)} names held-out or unknown centers: {wrong}")
    return [s for s in labelled if s.center in centers]


def _listed(rung: Mapping[str, Any], name: str, labelled: set[str]) -> tuple[list[str], list[str]]:
    """A `subjects` rung's train and scored lists, refused when empty or naming subjects without a label."""
    train, scored = list(rung.get("train") or []), list(rung.get("scored") or [])
    unknown = sorted(set(train + scored) - labelled)
    if not train or not scored or unknown:
        raise LadderError(f"ladder: rung {name!r} (kind subjects) needs non-empty train and scored lists of labelled "
                          f"subjects of the sheet; unknown or unlabelled: {unknown}")
    return train, scored


def rung_specs(settings: Mapping[str, Any], pool: Sequence[Subject], seed: int) -> list[RungSpec]:
    """The rungs the config asks for, with their subjects fixed by the seed."""
    labelled = [s for s in pool if s.thrombus in ("0", "1")]
    train_centers = list(settings.get("train_centers") or [])
    held_out = list(settings.get("held_out") or [])
    unknown = sorted(set(train_centers + held_out) - {s.center for s in labelled})
    if not train_centers or not held_out or unknown:
        raise LadderError(f"ladder: train_centers {train_centers} and held_out {held_out} must name centers of the "
                          f"sheet with labelled subjects ({sorted({s.center for s in labelled})}); unknown: {unknown}")
    inside = [s for s in labelled if s.center in train_centers]
    specs = []
    for name in settings.get("rungs", RUNGS):
        rung = dict(settings.get(name) or {})
        kind = rung.get("kind", name)  # a rung of another name is one of the kinds with its own settings
        if kind not in KINDS:
            raise LadderError(f"ladder: rung {name!r} is of unknown kind {kind!r}: choose among {', '.join(KINDS)}")
        iterations, every = int(rung.get("iterations", 300)), int(rung.get("eval_every", 100))
        if kind == "overfit":
            subject = rung.get("subject") or sorted(s.subject for s in inside if s.thrombus == "1")[0]
            train, scored = [subject], [subject]
        elif kind == "monocentric":
            train, scored = _split_centers(inside, float(rung.get("scored_share", 0.33)), seed)
        elif kind == "mixed":
            outside = [s for s in labelled if s.center in held_out]
            seen, scored = _split_centers(outside, float(rung.get("scored_share", 0.5)), seed)
            train = sorted([s.subject for s in inside] + seen)
        elif kind == "subjects":
            train, scored = _listed(rung, name, {s.subject for s in labelled})
        else:
            train = sorted(s.subject for s in _centers_of(labelled, rung.get("train_centers") or train_centers, held_out, name))
            scored = sorted(s.subject for s in labelled if s.center in held_out)
        specs.append(RungSpec(name, iterations, every, tuple(train), tuple(scored)))
    return specs


def score_case(probability: np.ndarray, truth: np.ndarray, outside: int, threshold: float = 0.5,
               gate: CaseGate | None = None) -> dict[str, float]:
    """Dice, detection and false-positive components of one case at `threshold`, no size filter; with `gate`
    (the lesion gate's decision and the array's affine), only the components it keeps."""
    mask = probability > threshold
    if gate is not None:
        mask = gate.apply(mask)
    truth = truth > 0
    labels, count = ndimage.label(mask, structure=STRUCTURE)
    hit = set(np.unique(labels[truth & mask]).tolist()) - {0}
    size = int(mask.sum()) + int(truth.sum()) + outside
    dice = 2.0 * int((mask & truth).sum()) / size if size else 1.0
    return {"dice": dice, "detected": float(bool(hit)), "fp_components": float(count - len(hit))}


def score(model: Any, cases: Sequence[Any], options: Any, device: Any,
          regions: Mapping[str, CaseGate | None] | None = None) -> dict[str, Any]:
    """Score the model on whole volumes of `cases` as validation predicts them; with `regions` (subject ->
    the lesion gate on the case's grid, None where the gate cannot be applied), gated."""
    return score_ways(model, cases, options, device, {"": regions})[""]


def score_ways(model: Any, cases: Sequence[Any], options: Any, device: Any,
               ways: Mapping[str, Mapping[str, CaseGate | None] | None]) -> dict[str, dict[str, Any]]:
    """`score` under several gatings at once (way -> regions, None = ungated): each volume is predicted once,
    which is most of the cost, and its probability map thresholded once per way."""
    import torch

    from thrombus.model.sliding import predict_case

    was_training = model.training
    model.eval()
    rows: dict[str, dict[str, Any]] = {way: {} for way in ways}
    try:
        for case in cases:
            logits = predict_case(model, case, options.slab_depth, options.val_batch_size, device, options.stride, options.tile,
                                  slice_mm=options.slice_mm)
            probability, truth = torch.sigmoid(logits).numpy(), case.label.numpy()
            for way, regions in ways.items():
                gate = None if regions is None else regions.get(case.subject)
                rows[way][case.subject] = {**score_case(probability, truth, case.label_outside, gate=gate), "positive": case.positive}
    finally:
        model.train(was_training)
    return rows


def _point(iteration: int, cpu: float, wall: float, rows: Mapping[str, Mapping[str, Any]]) -> Point:
    positives = [r for r in rows.values() if r["positive"]]
    negatives = [r for r in rows.values() if not r["positive"]]
    return Point(
        iteration=iteration,
        cpu_seconds=round(cpu, 1),
        wall_seconds=round(wall, 1),
        dice=round(float(np.mean([r["dice"] for r in positives])), 4) if positives else math.nan,
        detected=int(sum(r["detected"] for r in positives)),
        positives=len(positives),
        negatives_with_fp=int(sum(r["fp_components"] > 0 for r in negatives)),
        negatives=len(negatives),
        fp_components=round(float(np.mean([r["fp_components"] for r in rows.values()])), 2),
        per_case={name: round(r["dice"], 3) for name, r in rows.items() if r["positive"]},
    )


def run_rung(spec: RungSpec, recipe: str, sections: Mapping[str, Any], cases: Mapping[str, Any], out_dir: Path,
             seed: int, threads: int, progress: bool = False,
             regions: Mapping[str, CaseGate | None] | None = None) -> RungResult:
    """Train one recipe on one rung, scoring every `eval_every` iterations (the scoring is not timed)."""
    from thrombus.training.cli import _model_config, _train_options
    from thrombus.training.trainer import Trainer, TrainRun, discard_checkpoints

    model = _model_config(sections.get("model", {}), sections.get("harmonise", {}))
    options = dataclasses.replace(_train_options({**sections.get("train", {}), "iterations": spec.iterations}),
                                  val_every=spec.iterations)
    run = TrainRun(train_cases=[cases[s] for s in spec.train], val_cases=[], model=model, options=options,
                   card={"ladder": {"recipe": recipe, "rung": spec.name}}, out_dir=out_dir, seed=seed,
                   threads=threads, device="cpu", progress=progress)
    out_dir.mkdir(parents=True, exist_ok=True)
    discard_checkpoints(out_dir)
    trainer = Trainer(run)
    scored = [cases[s] for s in spec.scored]
    points, cpu, wall = [], 0.0, 0.0
    applied = sum(regions.get(name) is not None for name in spec.scored) if regions else 0
    gated = None
    for stop in range(spec.eval_every, spec.iterations + spec.eval_every, spec.eval_every):
        run.stop_after = min(stop, spec.iterations)
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        trainer.fit()
        cpu += time.process_time() - cpu_start
        wall += time.perf_counter() - wall_start
        # the final weights are also read through the lesion gate, from the same predictions
        ways = {"plain": None, **({"gated": regions} if applied and run.stop_after == spec.iterations else {})}
        scores = score_ways(trainer.model, scored, options, trainer.device, ways)
        point = _point(trainer.iteration, cpu, wall, scores["plain"])
        if "gated" in scores:
            gated = _point(trainer.iteration, cpu, wall, scores["gated"])
        log.info("%s / %s: iteration %d, %.1f CPU min: Dice %.3f, detected %d/%d, negatives with FP %d/%d, FP %.1f",
                 recipe, spec.name, point.iteration, cpu / 60, point.dice, point.detected, point.positives,
                 point.negatives_with_fp, point.negatives, point.fp_components)
        points.append(point)
    whole = None
    if options.predict_tiled:  # the same final weights read as whole slices: what the tiling is worth
        untiled = dataclasses.replace(options, predict_tiled=False)
        whole = _point(trainer.iteration, cpu, wall, score(trainer.model, scored, untiled, trainer.device))
    return RungResult(recipe, spec.name, list(spec.train), list(spec.scored), points, whole, gated=gated,
                      gated_subjects=applied or None)


def load_ladder_config(path: Path, base: Mapping[str, Any]) -> dict[str, Any]:
    """The ladder section of `path` with every recipe laid over the workflow config's model/train sections."""
    import yaml

    document = yaml.safe_load(path.read_text())
    if not isinstance(document, dict) or "ladder" not in document:
        raise LadderError(f"{path}: expected a mapping with a `ladder` section")
    settings = dict(document["ladder"])
    recipes = settings.get("recipes") or {}
    if not recipes:
        raise LadderError(f"{path}: ladder.recipes is empty: name at least one recipe")
    shared = {key: base.get(key, {}) for key in ("model", "train", "harmonise")}
    # The ladder measures what a recipe learns from scratch: the workflow's shipped start is not inherited.
    shared["train"] = {key: value for key, value in shared["train"].items() if key != "init_from"}
    settings["recipes"] = {name: deep_merge(shared, overlay or {}) for name, overlay in recipes.items()}
    return settings


@dataclass(frozen=True)
class LadderSetup:
    """What a ladder run and a gating of its rows both derive from the settings and the seeds."""

    pool: list[Any]
    by_id: dict[str, Any]
    specs: list[RungSpec]
    channels: list[str]
    other: int | None  # the training seed when it is not the ladder seed
    checkpoints: Path

    @classmethod
    def of(cls, settings: Mapping[str, Any], seed: int, train_seed: int | None, out_dir: Path) -> LadderSetup:
        pool = subjects(read_sheet(settings["samples"]), {})
        other = None if train_seed is None or train_seed == seed else train_seed
        return cls(pool=pool, by_id={s.subject: s for s in pool}, specs=rung_specs(settings, pool, seed),
                   channels=list(next(iter(settings["recipes"].values()))["harmonise"]["channels"]), other=other,
                   checkpoints=out_dir / f"seed-{other}" if other is not None else out_dir)


def run_ladder(settings: Mapping[str, Any], root: Path, out_dir: Path, seed: int, threads: int,
               progress: bool = False, commit: str = "", rows: Path | None = None,
               train_seed: int | None = None) -> list[RungResult]:
    """Every recipe on every rung; results are written as they come to `rows`, so a cut run keeps its rungs.

    `seed` fixes the rungs' subjects; `train_seed` (default `seed`) the training's initialisation and
    slab draws, so another training seed reruns the same subjects. `rows` (default `out_dir/ladder.json`)
    is the row store RESULTS.md is rendered from: a row already there for another recipe, rung or
    training seed is kept (a run with `only` adds to the table, whichever machine ran the others); one for
    the same recipe, rung and training seed is replaced. Checkpoints stay in `out_dir` (under `seed-N/`
    for another training seed).
    """
    from thrombus.training.data import case_sources, load_cases

    setup = LadderSetup.of(settings, seed, train_seed, out_dir)
    pool, by_id, specs, channels, other, checkpoints = (setup.pool, setup.by_id, setup.specs, setup.channels, setup.other,
                                                        setup.checkpoints)
    needed = sorted({name for spec in specs for name in spec.train + spec.scored})
    loaded = load_cases(case_sources([by_id[name] for name in needed], root), channels)
    cases = {case.subject: case for case in loaded}
    gate = LesionGate.from_mapping(settings.get("lesion_gate", {}))
    scored = sorted({name for spec in specs for name in spec.scored})
    regions = case_gates([(by_id[name].center, name) for name in scored], root, gate) if gate else {}
    rows = rows or out_dir / "ladder.json"
    results = read_results(rows) if rows.exists() else []
    only = set(settings.get("only") or [])
    machine = machine_description()
    for spec in specs:
        for recipe, sections in settings["recipes"].items():
            if only and f"{recipe}/{spec.name}" not in only:
                continue
            result = run_rung(spec, recipe, sections, cases, checkpoints / recipe / spec.name,
                              seed if other is None else other, threads, progress, regions)
            result.commit, result.threads, result.seed = commit, threads, other
            result.machine, result.date = machine, time.strftime("%Y-%m-%d", time.gmtime())
            result.segments = truth_segments(pool, spec.scored)
            results = [r for r in results if _key(r) != _key(result)] + [result]
            write_results(rows, results)
    return results


def gate_rows(settings: Mapping[str, Any], root: Path, out_dir: Path, seed: int, threads: int, rows: Path,
              commit: str = "", train_seed: int | None = None) -> list[RungResult]:
    """Score the final weights a run left in `out_dir` with the lesion gate and add the figures to its row.

    For rows run before the gate was scored: each selected row (settings' `only`, the training seed) must
    have its `latest.pt` at the row's last iteration; the rest of the row is kept, and its source says at
    which commit the gated figures were computed.
    """
    import torch

    from thrombus.device import set_threads
    from thrombus.model import build_model
    from thrombus.training.cli import _model_config, _train_options
    from thrombus.training.data import case_sources, load_cases

    setup = LadderSetup.of(settings, seed, train_seed, out_dir)
    by_id, other = setup.by_id, setup.other
    only = set(settings.get("only") or [])
    chosen = [spec for spec in setup.specs if any(pair.endswith(f"/{spec.name}") for pair in only)]
    gate = LesionGate.from_mapping(settings.get("lesion_gate", {})) or LesionGate()
    results = read_results(rows)
    for spec in chosen:
        cases = load_cases(case_sources([by_id[name] for name in spec.scored], root), setup.channels)
        regions = case_gates([(by_id[name].center, name) for name in spec.scored], root, gate)
        for recipe, sections in settings["recipes"].items():
            if f"{recipe}/{spec.name}" not in only:
                continue
            row = next((r for r in results if _key(r) == (recipe, spec.name, other)), None)
            checkpoint = setup.checkpoints / recipe / spec.name / "latest.pt"
            if row is None or not checkpoint.exists():
                raise LadderError(f"{recipe}/{spec.name}: no row in {rows} or no checkpoint {checkpoint} to gate")
            payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
            if int(payload["iteration"]) != row.points[-1].iteration:
                raise LadderError(f"{checkpoint} is at iteration {payload['iteration']}, the row's weights at "
                                  f"{row.points[-1].iteration}: not the row's final weights")
            model = build_model(_model_config(sections.get("model", {}), sections.get("harmonise", {})))
            model.load_state_dict(payload["model"])
            options = _train_options({**sections.get("train", {}), "iterations": spec.iterations})
            set_threads(threads)
            point = _point(row.points[-1].iteration, row.points[-1].cpu_seconds or 0.0, row.points[-1].wall_seconds or 0.0,
                           score(model, cases, options, torch.device("cpu"), regions))
            row.gated, row.gated_subjects = point, sum(regions[name] is not None for name in spec.scored) or None
            note = f"gated figures computed at {commit or 'an unknown commit'} from its final weights"
            row.source = f"{row.source}; {note}" if row.source else note
            write_results(rows, results)
            log.info("%s / %s gated: Dice %.3f, detected %d/%d, negatives with FP %d/%d, FP %.1f", recipe, spec.name,
                     point.dice, point.detected, point.positives, point.negatives_with_fp, point.negatives, point.fp_components)
    return results


def _key(result: RungResult) -> tuple[str, str, int | None]:
    return result.recipe, result.rung, result.seed


def write_results(path: Path, results: Sequence[RungResult]) -> None:
    """The row store, in a stable order (rung, then recipe) so that a committed store diffs by row."""
    ordered = sorted(results, key=lambda r: (r.rung, r.recipe, -1 if r.seed is None else r.seed))
    write_json(path, [dataclasses.asdict(r) for r in ordered])


def read_results(path: Path) -> list[RungResult]:
    """The row store (`ladder.json`, RESULTS.json) back as results."""
    return [RungResult(**{**r, "points": [Point(**p) for p in r["points"]],
                          "whole_slices": Point(**r["whole_slices"]) if r.get("whole_slices") else None,
                          "gated": Point(**r["gated"]) if r.get("gated") else None})
            for r in read_json(path)]


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _final_row(result: RungResult) -> str:
    last = result.points[-1]
    best = max(result.points, key=lambda p: (p.dice if not math.isnan(p.dice) else -1.0))
    negatives = f"{last.negatives_with_fp}/{last.negatives}" if last.negatives else "-"
    minutes = None if last.cpu_seconds is None else last.cpu_seconds / 60
    return (f"| {result.recipe} | {last.iteration} | {_fmt(minutes, 1)} | {_fmt(last.dice)} | "
            f"{last.detected}/{last.positives} | {negatives} | {_fmt(last.fp_components, 1)} | "
            f"{_fmt(best.dice)} @ {best.iteration} | {_fmt(result.minutes_to(0.5), 1)} |")


def _curve(result: RungResult) -> str:
    cells = ", ".join(f"{p.iteration}: {_fmt(p.dice)} ({p.detected}/{p.positives})" for p in result.points)
    line = f"- {result.recipe}: {cells}"
    if result.whole_slices is not None:
        w = result.whole_slices
        line += (f"; the final weights read as whole slices instead of tiles: Dice {_fmt(w.dice)}, detected "
                 f"{w.detected}/{w.positives}, FP components {_fmt(w.fp_components, 1)} a subject")
    return line


def _gated_rows(rows: Sequence[RungResult]) -> list[str]:
    """The final weights of each row again with the lesion gate, beside the same weights without it."""
    gated = [r for r in rows if r.gated is not None]
    if not gated:
        return []
    lines = ["", "The final weights with the lesion gate (`thrombus.inference.lesion_gate`: candidates kept only on a side "
             "of the brain holding a diffusion lesion; not applied to a subject without an ADC map), against the same weights without it:", "",
             "| recipe | gated subjects | Dice | detected | negatives with FP | FP components / subject |", "|---|---|---|---|---|---|"]
    for r in gated:
        for label, p in (("without", r.points[-1]), ("with the gate", r.gated)):
            negatives = f"{p.negatives_with_fp}/{p.negatives}" if p.negatives else "-"
            lines.append(f"| {r.recipe}, {label} | {r.gated_subjects if p is r.gated else '-'} | {_fmt(p.dice)} | {p.detected}/{p.positives} | "
                         f"{negatives} | {_fmt(p.fp_components, 1)} |")
    return lines


def truth_segments(pool: Sequence[Subject], names: Sequence[str]) -> dict[str, str]:
    """The arterial segment of each named subject's clot, from the truth file a synthetic cohort writes beside
    its thrombus mask (`truth.json`); subjects without one (real data, negatives) are left out."""
    wanted, segments = set(names), {}
    for subject in pool:
        if subject.subject not in wanted or subject.thrombus != "1" or not subject.thrombus_mask:
            continue
        truth = Path(subject.thrombus_mask).parent / "truth.json"
        try:
            segment = (read_json(truth).get("thrombus") or {}).get("segment")
        except (OSError, ValueError):
            continue
        if segment:
            segments[subject.subject] = str(segment)
    return segments


def by_segment(result: RungResult) -> str | None:
    """Detections of the final weights by the clot's arterial segment, e.g. "M1 3/3, M2 0/4".

    A scored clot counts as detected when its Dice is above 0 (some predicted voxel overlaps it, the
    detection rule). None when the row kept no per-subject scores (imported rows) or no scored subject
    has a known segment.
    """
    counts: dict[str, list[int]] = {}  # segment -> [found, scored]
    for subject, dice in result.points[-1].per_case.items():
        if subject in result.segments:
            tally = counts.setdefault(result.segments[subject], [0, 0])
            tally[0] += int(dice > 0)
            tally[1] += 1
    if not counts:
        return None
    return ", ".join(f"{segment} {found}/{total}" for segment, (found, total) in sorted(counts.items()))


def _seed_rows(rows: Sequence[RungResult], others: Sequence[RungResult], seed: int) -> list[str]:
    """The rung's rows rerun with other training seeds, each recipe's seeds together with the ladder seed's
    row, and the mean over them: whether a difference between recipes outlives the seed. The lesion gate's
    figures beside them where the rows have them."""
    if not others:
        return []
    lines = ["", "The same subjects with other training seeds (final weights; the last three columns with the lesion gate):", "",
             "| recipe | training seed | CPU min | Dice | detected | negatives with FP | FP components / subject |"
             " gated Dice | gated negatives with FP | gated FP components / subject |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for first in rows:
        runs = [first, *sorted((r for r in others if r.recipe == first.recipe), key=lambda r: r.seed or 0)]
        if len(runs) == 1:
            continue
        for run in runs:
            last = run.points[-1]
            minutes = None if last.cpu_seconds is None else last.cpu_seconds / 60
            lines.append(f"| {run.recipe} | {seed if run.seed is None else run.seed} | {_fmt(minutes, 1)} | "
                         f"{_scores([last])} | {_scores([run.gated] if run.gated else [], detected=False)} |")
        finals = [run.points[-1] for run in runs]
        gated = [run.gated for run in runs if run.gated is not None]
        lines.append(f"| {first.recipe}: mean of {len(runs)} | | | {_scores(finals)} | "
                     f"{_scores(gated if len(gated) == len(runs) else [], detected=False)} |")
    return lines


def _scores(points: Sequence[Point], detected: bool = True) -> str:
    """Dice (with its range over several points), detections, negatives with FP and FP components, as cells."""
    if not points:
        return " | ".join(["-"] * (4 if detected else 3))
    dice = [p.dice for p in points]
    cells = [_fmt(float(np.mean(dice))) + (f" ({_fmt(min(dice))}-{_fmt(max(dice))})" if len(points) > 1 else "")]
    if detected:
        cells.append(f"{sum(p.detected for p in points)}/{sum(p.positives for p in points)}")
    negatives = sum(p.negatives for p in points)
    cells.append(f"{sum(p.negatives_with_fp or 0 for p in points)}/{negatives}" if negatives else "-")
    cells.append(_fmt(float(np.mean([p.fp_components or 0.0 for p in points])), 1))
    return " | ".join(cells)


def render_results(results: Sequence[RungResult], context: Mapping[str, Any]) -> str:
    """RESULTS.md's ladder section: a table per rung (final scores, best, time to Dice 0.5) and the curves."""
    lines = [
        "# Results",
        "",
        "Generated by `make results` (`thrombus ladder`; its paper tables section from `RESULTS.paper.json`, which",
        "`make paper` writes with `thrombus paper-report`); do not edit by hand. Figures are from runs of the code at the",
        "commit named, on the machine named; README.md quotes them.",
        "",
        "## The learnability ladder",
        "",
        f"Rendered by `{context['command']}` on {context['date']} from the row store `{context['rows']}`, where each",
        "run adds or replaces its recipe's row on its rung; the provenance of each row (commit, machine, threads, day)",
        f"is listed at the end. Config: `{context['config']}` (recipes below), sheet `{context['samples']}`, "
        f"seed {context['seed']}.",
        "",
        "Scores at threshold 0.5 without size filter (the network's own output), on whole volumes predicted as the",
        "recipe's validation and inference predict them (whole slices, or tiles of the patch with `predict_tiled`); detection:",
        "a predicted 26-connected component overlaps the thrombus by >= 1 voxel; FP: components overlapping no",
        "thrombus voxel, per scored subject. CPU minutes: the training process's CPU time (all threads), scoring",
        "passes excluded. The `loco` rung scores the final weights, never a checkpoint chosen on its subjects.",
    ]
    order = list(context["recipes"])
    rung_order = [*RUNGS, *sorted({r.rung for r in results} - set(RUNGS))]
    for rung in rung_order:
        rows = sorted((r for r in results if r.rung == rung and r.seed is None),
                      key=lambda r: order.index(r.recipe) if r.recipe in order else len(order))
        if not rows:
            continue
        first = rows[0]
        lines += [
            "",
            f"### {rung}: {len(first.train)} training subjects, {len(first.scored)} scored",
            "",
            f"Trained on {', '.join(first.train) if len(first.train) <= 4 else f'{len(first.train)} subjects'}; "
            f"scored on {', '.join(first.scored)}.",
            "",
            "| recipe | iterations | CPU min | Dice | detected | negatives with FP | FP components / subject |"
            " best Dice @ iteration | CPU min to Dice 0.5 |",
            "|---|---|---|---|---|---|---|---|---|",
            *[_final_row(r) for r in rows],
        ]
        segments = [(r.recipe, by_segment(r)) for r in rows]
        if any(text for _, text in segments):
            lines += ["", "Detected by the clot's arterial segment (final weights; segments from the cohort's truth files): "
                      + "; ".join(f"{recipe}: {text}" for recipe, text in segments if text) + "."]
        lines += _gated_rows(rows)
        lines += _seed_rows(rows, [r for r in results if r.rung == rung and r.seed is not None], context["seed"])
        lines += [
            "",
            "Curves (iteration: Dice (detected)):",
            "",
            *[_curve(r) for r in rows],
        ]
    lines += ["", "Recipes (laid over the workflow config's `model` and `train` sections):", ""]
    for name, overlay in context["recipes"].items():
        lines.append(f"- `{name}`: `{json.dumps(overlay, sort_keys=True)}`")
    lines += ["", "Provenance of each row (rung / recipe):", ""]
    by_source: dict[str, list[str]] = {}
    for r in sorted(results, key=lambda r: (rung_order.index(r.rung), r.recipe, -1 if r.seed is None else r.seed)):
        seed = "" if r.seed is None else f" (training seed {r.seed})"
        by_source.setdefault(r.provenance(), []).append(f"{r.rung} / {r.recipe}{seed}")
    lines += [f"- {', '.join(rows)}: {source}" for source, rows in by_source.items()]
    lines += render_cards()
    lines += render_stored(Path(context["results"])) if context.get("results") else []
    return "\n".join(lines) + "\n"


