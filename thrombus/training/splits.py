"""Center-aware split files: which subjects train, validate and test each fold, written once and kept.

Like nnU-Net's `splits_final.json`, the split file *is* part of the experiment: plain JSON a reviewer can
read, made once from the seed and reused by every later run, so that retraining, a new model variant or
an ablation always sees the same subjects. Two experiments:

* `monocentric`: one fold per center; train, validation and test all come from that center, each part
  stratified by thrombus label (the paper's single-center setting).
* `loco` (leave one center out): one fold per center, which is the test set; the validation part is drawn
  from the other centers, stratified by center and label, so it looks like the training data.

The file records the subject list it was made for (center and label of each). A file that exists and
matches is reused as it is. Subjects added to the sheet later (a center sends new scans) join it as test
subjects of the fold that tests their center, and of no fold's training or validation: no model
retrains, the new subjects are predicted and scored (`extend_splits`; the file lists them under
`added`). A subject removed or relabelled, or one of a center no fold tests, is refused, never silently
rewritten, since that would change the experiment under results already computed from it; deleting the
file makes new splits with every subject in them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from thrombus.io import PathLike, read_json, write_json
from thrombus.samples import Subject

log = logging.getLogger(__name__)

EXPERIMENTS: tuple[str, ...] = ("monocentric", "loco")
SPLITS_FORMAT = "thrombus-splits"


class SplitsError(ValueError):
    """A split file that cannot be made or used; the message names the file and what to do."""


@dataclass(frozen=True)
class Labelled:
    """A subject as the splits see it: its center and whether it has a thrombus."""

    subject: str
    center: str
    positive: bool


@dataclass(frozen=True)
class SplitOptions:
    """Fractions of each part; both are of the subjects a part is drawn from (a center, or the training centers)."""

    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SplitsError(f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise SplitsError(
                f"train.val_fraction + train.test_fraction must leave subjects to train on, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )


def labelled_subjects(subjects: Iterable[Subject]) -> list[Labelled]:
    """Subjects with a known thrombus label (sheet column `thrombus` 1 or 0), sorted by ID.

    A subject whose label is empty cannot be trained on nor scored, so it is left out, with a warning.
    """
    known = []
    for subject in subjects:
        if subject.thrombus not in ("0", "1"):
            log.warning(
                "subject %s (center %s) has no thrombus label (1/0) in the sheet: left out of the splits",
                subject.subject,
                subject.center,
            )
            continue
        known.append(Labelled(subject.subject, subject.center, subject.thrombus == "1"))
    return sorted(known, key=lambda s: s.subject)


def _quotas(strata: Mapping[tuple[str, bool], int], total: int, rng: np.random.Generator) -> dict[tuple[str, bool], int]:
    """Split `total` picks across strata in proportion to their sizes (largest remainder).

    Ties go to thrombus-positive strata first (so a small validation part gets a case that has a Dice),
    then to a seeded random order; no stratum gives more subjects than it has.
    """
    size = sum(strata.values())
    exact = {key: total * count / size for key, count in strata.items()}
    quotas = {key: int(np.floor(value)) for key, value in exact.items()}
    tie_break = dict(zip(sorted(strata), rng.permutation(len(strata)).tolist()))
    order = sorted(strata, key=lambda key: (-(exact[key] - quotas[key]), not key[1], tie_break[key]))
    for key in order[: total - sum(quotas.values())]:
        quotas[key] += 1
    return {key: min(quota, strata[key]) for key, quota in quotas.items()}


def _keep_a_positive(
    quotas: dict[tuple[str, bool], int], strata: Mapping[tuple[str, bool], list[Labelled]]
) -> dict[tuple[str, bool], int]:
    """Leave at least one thrombus-positive subject behind for training when the pool has any.

    A part that took every positive case would leave a model nothing to learn the thrombus from; the
    pick moves to a negative stratum with subjects to spare, or is dropped.
    """
    positives = sum(len(members) for key, members in strata.items() if key[1])
    if positives == 0 or sum(quota for key, quota in quotas.items() if key[1]) < positives:
        return quotas
    quotas = dict(quotas)
    donor = max((key for key in quotas if key[1] and quotas[key] > 0), key=lambda key: (quotas[key], key))
    quotas[donor] -= 1
    spare = [key for key in quotas if not key[1] and quotas[key] < len(strata[key])]
    if spare:
        quotas[max(spare, key=lambda key: (len(strata[key]) - quotas[key], key))] += 1
    return quotas


def _stratified_pick(pool: Sequence[Labelled], count: int, rng: np.random.Generator) -> list[str]:
    """`count` subjects of `pool`, stratified by (center, label), drawn with the seeded generator."""
    if count <= 0:
        return []
    strata: dict[tuple[str, bool], list[Labelled]] = {}
    for subject in pool:
        strata.setdefault((subject.center, subject.positive), []).append(subject)
    quotas = _keep_a_positive(_quotas({key: len(members) for key, members in strata.items()}, count, rng), strata)
    picked = []
    for key in sorted(strata):
        members = strata[key]
        order = rng.permutation(len(members))
        picked.extend(members[index].subject for index in order[: quotas[key]])
    return sorted(picked)


def _part_size(available: int, fraction: float, keep: int) -> int:
    """round(fraction * available), at least 1 when the fraction is non-zero, leaving `keep` subjects behind."""
    if fraction == 0.0 or available <= keep:
        return 0
    return min(max(round(fraction * available), 1), available - keep)


def _fold(name: str, test_centers: list[str], train: list[str], val: list[str], test: list[str]) -> dict[str, Any]:
    return {"name": name, "test_centers": test_centers, "train": sorted(train), "val": sorted(val), "test": sorted(test)}


def monocentric_folds(subjects: Sequence[Labelled], options: SplitOptions, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One fold per center: test, then validation, drawn inside the center, the rest trains.

    At least one subject trains; with very few subjects the test part is filled before the validation
    part (a center of two subjects gets one training and one test subject, no validation).
    """
    folds = []
    for center in sorted({s.center for s in subjects}):
        members = [s for s in subjects if s.center == center]
        test = _stratified_pick(members, _part_size(len(members), options.test_fraction, keep=1), rng)
        rest = [s for s in members if s.subject not in test]
        val_size = min(_part_size(len(members), options.val_fraction, keep=1), len(rest) - 1)
        val = _stratified_pick(rest, val_size, rng)
        train = [s.subject for s in rest if s.subject not in val]
        folds.append(_fold(f"center_{center}", [center], train, val, test))
    return folds


def loco_folds(subjects: Sequence[Labelled], options: SplitOptions, rng: np.random.Generator) -> list[dict[str, Any]]:
    """One fold per center, held out as the test set; validation drawn from the other centers."""
    centers = sorted({s.center for s in subjects})
    if len(centers) < 2:
        raise SplitsError(f"leave-one-center-out needs at least two centers, the subjects come from {centers}")
    folds = []
    for center in centers:
        test = [s.subject for s in subjects if s.center == center]
        pool = [s for s in subjects if s.center != center]
        val = _stratified_pick(pool, _part_size(len(pool), options.val_fraction, keep=1), rng)
        train = [s.subject for s in pool if s.subject not in val]
        folds.append(_fold(f"test_center_{center}", [center], train, val, test))
    return folds


def make_splits(subjects: Sequence[Labelled], experiment: str, seed: int, options: SplitOptions) -> dict[str, Any]:
    """The split document of one experiment (not written)."""
    if experiment not in EXPERIMENTS:
        raise SplitsError(f"experiment {experiment!r} is unknown: choose one of {', '.join(EXPERIMENTS)}")
    if not subjects:
        raise SplitsError("no subject with a thrombus label (1/0) in the sample sheet: nothing to split")
    rng = np.random.default_rng(seed)
    folds = monocentric_folds(subjects, options, rng) if experiment == "monocentric" else loco_folds(subjects, options, rng)
    return {
        "format": SPLITS_FORMAT,
        "experiment": experiment,
        "seed": seed,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction if experiment == "monocentric" else None,
        "subjects": {s.subject: {"center": s.center, "thrombus": int(s.positive)} for s in subjects},
        "folds": [{"fold": index, **fold} for index, fold in enumerate(folds)],
    }


def subject_changes(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between the subject list of a split file and the current one."""
    added = sorted(set(current) - set(recorded))
    removed = sorted(set(recorded) - set(current))
    changed = sorted(s for s in set(current) & set(recorded) if dict(current[s]) != dict(recorded[s]))
    lines = []
    if added:
        lines.append(f"new subjects {', '.join(added)}")
    if removed:
        lines.append(f"subjects no longer in the sheet {', '.join(removed)}")
    for subject in changed:
        lines.append(f"subject {subject} was {dict(recorded[subject])}, is now {dict(current[subject])}")
    return lines


def _as_recorded(subjects: Sequence[Labelled]) -> dict[str, dict[str, Any]]:
    return {s.subject: {"center": s.center, "thrombus": int(s.positive)} for s in subjects}


def extend_splits(document: Mapping[str, Any], subjects: Sequence[Labelled], path: PathLike) -> dict[str, Any] | None:
    """The split document with the sheet's new subjects added as test subjects of the fold(s) testing
    their center; None when nothing was added. Anything but additions is left to `read_splits` to refuse."""
    current = _as_recorded(subjects)
    added = sorted(set(current) - set(document["subjects"]))
    if not added:
        return None
    tested = {c for fold in document["folds"] for c in fold["test_centers"]}
    untested = sorted({current[s]["center"] for s in added} - tested)
    if untested:
        raise SplitsError(f"split file {path}: the new subjects include center(s) {', '.join(untested)}, which no fold "
                          "tests; delete the file to make new splits with them")
    extended = {**document, "subjects": {**document["subjects"], **{s: current[s] for s in added}},
                "added": sorted(set(document.get("added", [])) | set(added)), "folds": []}
    for fold in document["folds"]:
        joining = [s for s in added if current[s]["center"] in fold["test_centers"]]
        extended["folds"].append({**fold, "test": sorted(fold["test"] + joining)})
    return extended


def read_splits(path: PathLike, subjects: Sequence[Labelled] | None = None) -> dict[str, Any]:
    """Read a split file; with `subjects`, refuse it when it was made for another subject list."""
    path = Path(path)
    if not path.exists():
        raise SplitsError(f"split file {path} does not exist: make it first (`thrombus splits` or the `splits` rule)")
    document = read_json(path)
    if not isinstance(document, dict) or document.get("format") != SPLITS_FORMAT:
        raise SplitsError(f'{path} is not a thrombus split file (no "format": "{SPLITS_FORMAT}")')
    if subjects is not None:
        check_subjects(document, subjects, path)
    return document


def check_subjects(document: Mapping[str, Any], subjects: Sequence[Labelled], path: PathLike) -> None:
    """Refuse a split document made for another subject list than `subjects`."""
    changes = subject_changes(document["subjects"], _as_recorded(subjects))
    if changes:
        raise SplitsError(
            f"split file {path} was made for another subject list ({'; '.join(changes)}). Splits are kept "
            "so that every run of an experiment sees the same subjects (new subjects join as test subjects "
            "when the `splits` step runs): delete the file to make new splits "
            "(results computed from the old ones no longer compare), or restore the sample sheet"
        )


def ensure_splits(
    path: PathLike, subjects: Sequence[Labelled], experiment: str, seed: int, options: SplitOptions
) -> dict[str, Any]:
    """Reuse the split file at `path` when it matches the subjects, else write it if it is absent."""
    path = Path(path)
    if path.exists():
        recorded = read_splits(path)
        if recorded["experiment"] != experiment:
            raise SplitsError(f"split file {path} is for experiment {recorded['experiment']!r}, not {experiment!r}")
        extended = extend_splits(recorded, subjects, path)
        document = extended or recorded
        check_subjects(document, subjects, path)  # a removed or relabelled subject: refused before any write
        if extended is not None:
            write_json(path, extended)
            log.info("split file %s: new subject(s) %s added as test subjects of the fold testing their center; "
                     "no training set changed", path, ", ".join(sorted(set(extended["subjects"]) - set(recorded["subjects"]))))
        kept = {
            "seed": seed,
            "val_fraction": options.val_fraction,
            "test_fraction": options.test_fraction if experiment == "monocentric" else None,
        }
        differing = {key: document[key] for key, value in kept.items() if document[key] != value}
        if differing:
            log.warning(
                "split file %s kept as it is, although it was made with %s (now %s): delete it to remake it",
                path,
                differing,
                {key: kept[key] for key in differing},
            )
        log.info("reusing split file %s (%d folds)", path, len(document["folds"]))
        return document
    document = make_splits(subjects, experiment, seed, options)
    write_json(path, document)
    log.info(
        "wrote split file %s: %s",
        path,
        "; ".join(
            f"fold {f['fold']} ({f['name']}): {len(f['train'])} train, {len(f['val'])} val, {len(f['test'])} test"
            for f in document["folds"]
        ),
    )
    return document


def fold_of(document: Mapping[str, Any], fold: int, path: PathLike) -> dict[str, Any]:
    """One fold of a split document, with an error that lists the folds there are."""
    folds = document["folds"]
    if not 0 <= fold < len(folds):
        names = ", ".join(f"{f['fold']} ({f['name']})" for f in folds)
        raise SplitsError(f"split file {path} has no fold {fold}; its folds are {names}")
    return folds[fold]
