"""From a probability map to a thrombus mask: a threshold and a minimum component size, chosen on validation.

A thrombus is a few hundred voxels on a thin-slice grid and a handful on a 6 mm one; the errors that matter are whole spurious components (a vein or a
microbleed that looks like a clot) and a threshold that is slightly too strict for a faint clot. Both are
settled here by two numbers, searched on the fold's validation subjects after training (the
`calibrate` stage, `thrombus.inference.calibrate`) and written beside the checkpoint
(`postprocessing.json`), so that inference on the test subjects uses settings that never saw them.

Calibration criterion (one number per setting, higher is better): the mean over validation subjects of
a case score, where

* a thrombus-positive subject scores the Dice of its mask (0 when nothing is predicted, so a missed clot
  costs as much as anything can), and
* a thrombus-negative subject scores 1 when no component at all is predicted and 0 otherwise.

Dice alone ignores negative subjects entirely and would happily lower the threshold until every vein
lights up; counting a negative subject as 0/1 makes a single false-positive component on a healthy
subject cost as much as a completely missed thrombus, which is how a reader would judge it. Ties (flat
regions of the grid are common on a handful of subjects) are broken toward threshold 0.5, where the
training loss put the decision, then toward the smaller minimum size (removing less is the safer
default), then toward the lower threshold (a missed clot is worse than a spurious one), so the choice is
deterministic. Components are 26-connected, the rule the evaluation uses.

The minimum size is a physical volume (mm^3), not a voxel count: the settings are chosen on the
training centers' grids and applied to every other center's. A voxel of a 2 mm SWI is 2 mm^3, one of a
6 mm T2* 4.9 mm^3, so a filter of 40 voxels chosen on the first (80 mm^3) removed every thrombus of the
second (5-14 voxels there, 25-70 mm^3): a count of voxels does not transfer across centers.

The minimum sizes searched stop at 20 mm^3, because a larger filter can delete a real clot. The smallest
clot the cohort and the clinic have is about 5 mm long in an M2 branch of 2 mm, blooming 1.5x on SWI
(DESIGN.md's facts): a tube of 3 mm x 5 mm, about 35 mm^3. Its reference mask on a thick-slice grid keeps
less than that (the partial-volume rule of the truth: 5-14 voxels of 4.9 mm^3 on a 6 mm T2*, the smallest
about 25 mm^3), so the largest filter is kept under that: 20 mm^3 is 10 voxels of a 2 mm SWI and 4 of a
6 mm T2*. The earlier grid went to 640 mm^3 and, on two validation subjects, chose 320 mm^3, which removed
every thrombus of the demo cohort (24-144 mm^3).

A scan without some sequences needs settings of its own. Without ADC there is no lesion gate, and the
network's map without diffusion carries the veins it otherwise discounts: settings chosen with every
sequence then leave 5 to 20 false components a case. So calibration also chooses, for every sequence
subset the experiment tests, the settings on the same validation subjects with that subset's channels
removed (`by_subset`), and a prediction takes those calibrated with the most of its missing channels
removed (`Postprocessing.for_unused`): the choice follows the channels a prediction used, whether a
subset removed them or the center never acquired them.

The thresholds stop at 0.8, although without DWI/ADC the choice often sits there: a grid going on to 0.9
and 0.95 was measured on make paper's GMD and no-dropout models of the four folds (36 positive, 12
negative held-out subjects each; CHANGELOG) and did not pay. Without DWI/ADC it found one clot more for
GMD and one fewer for no dropout, left 11 and 9 of 12 negatives with a false positive (11 and 11 before),
and the false components a case went up for GMD (4.7 -> 6.7: its validation subjects picked a stricter
threshold with a smaller size filter) and down for no dropout (8.7 -> 7.4). A few validation subjects
cannot rank a larger grid; what removes the veins without ADC is not in these two numbers.

A choice made on too few subjects is noise: with fewer than `MIN_POSITIVES` thrombus-positive validation
subjects the defaults (threshold 0.5, no filter) are kept, and the record says why. Every candidate's
score is recorded beside the choice.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    from thrombus.inference.lesion_gate import CaseGate

log = logging.getLogger(__name__)

#: Thresholds on the probability searched by calibration; why they stop at 0.8: module docstring.
THRESHOLDS: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: Minimum component volumes (mm^3) searched by calibration; 0 keeps everything.
SIZES_MM3: tuple[float, ...] = (0.0, 5.0, 10.0, 20.0)
#: Fewer thrombus-positive validation subjects than this: the defaults are kept (module docstring). The
#: number training needs to choose best.pt (`thrombus.training.validation.MIN_POSITIVES`, which imports
#: torch; a test keeps the two equal).
MIN_POSITIVES = 4
#: 26-connectivity: voxels touching by a face, an edge or a corner belong to one component.
STRUCTURE = np.ones((3, 3, 3), dtype=bool)
DEFAULT_CRITERION = "default: no validation subjects"
FEW_CRITERION = "default: fewer than {} thrombus-positive validation subjects ({}), too few to choose on"
CRITERION = "mean case score: Dice on thrombus-positive subjects, 1 if nothing predicted else 0 on negative ones"


@dataclass(frozen=True)
class Postprocessing:
    """How a probability map becomes a mask, and where those settings came from.

    Attributes:
        threshold: a voxel is thrombus where its probability is above this.
        min_component_mm3: 26-connected components of a smaller volume are dropped (0 keeps all).
        chosen_on: validation subjects the settings were chosen on (empty for the default).
        score: the calibration criterion at the chosen settings (None for the default).
        criterion: how they were chosen, in words.
        candidates: every (threshold, min_component_mm3, score) searched, best first.
        weights_sha256: checksum of the weights the settings were chosen with (the checkpoint's own);
            inference refuses them with other weights, for which they mean nothing.
        subset: the sequence subset these settings were calibrated with (None: every sequence).
        removed: the model channels that subset removes.
        by_subset: settings calibrated with channels removed, one per subset (`for_unused` picks).
    """

    threshold: float = 0.5
    min_component_mm3: float = 0.0
    chosen_on: tuple[str, ...] = ()
    score: float | None = None
    criterion: str = DEFAULT_CRITERION
    candidates: tuple[tuple[float, float, float], ...] = ()
    weights_sha256: str | None = None
    subset: str | None = None
    removed: tuple[str, ...] = ()
    by_subset: tuple[Postprocessing, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"postprocessing threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_mm3 < 0:
            raise ValueError(f"postprocessing min_component_mm3 must be >= 0, got {self.min_component_mm3}")

    def for_unused(self, unused: Collection[str]) -> Postprocessing:
        """The settings for a prediction made without the channels `unused` (removed or never acquired).

        Those calibrated with the most of them removed, and nothing else removed; ties go to the first
        subset by name. Without such a calibration, these (every sequence). A function of the channels
        used alone, so that two predictions from the same channels get the same mask.
        """
        missing = set(unused)
        fitting = [post for post in self.by_subset if set(post.removed) <= missing]
        if not fitting:
            return self
        return min(fitting, key=lambda post: (-len(set(post.removed)), str(post.subset)))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the content of `postprocessing.json`)."""
        values = asdict(self)
        values["chosen_on"] = list(self.chosen_on)
        values["candidates"] = [{"threshold": t, "min_component_mm3": m, "score": c} for t, m, c in self.candidates]
        values["removed"] = list(self.removed)
        values["by_subset"] = [post.to_dict() for post in self.by_subset]
        return values

    def applied(self) -> dict[str, Any]:
        """`to_dict` without the other subsets' settings: what a prediction's record keeps of the settings it used."""
        values = self.to_dict()
        del values["by_subset"]
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Postprocessing:
        """The inverse of `to_dict`; unknown keys are an error, so a hand-edited typo cannot pass silently."""
        known = {f.name for f in fields(cls)}
        if "min_component_voxels" in values:
            raise ValueError("postprocessing settings count the minimum component size in voxels (written by an "
                             "older version, which did not carry across grids): retrain, or rerun the model's train "
                             "job with resume on, to calibrate min_component_mm3")
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown postprocessing keys {unknown}: the known keys are {sorted(known)}")
        converted = dict(values)
        if "chosen_on" in converted:
            converted["chosen_on"] = tuple(str(s) for s in converted["chosen_on"])
        if "candidates" in converted:
            converted["candidates"] = tuple(
                (float(c["threshold"]), float(c["min_component_mm3"]), float(c["score"])) for c in converted["candidates"]
            )
        if "removed" in converted:
            converted["removed"] = tuple(str(c) for c in converted["removed"])
        if "by_subset" in converted:
            converted["by_subset"] = tuple(cls.from_dict(post) for post in converted["by_subset"])
        if converted.get("score") is not None:
            converted["score"] = float(converted["score"])
        if "threshold" in converted:
            converted["threshold"] = float(converted["threshold"])
        if "min_component_mm3" in converted:
            converted["min_component_mm3"] = float(converted["min_component_mm3"])
        return cls(**converted)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected labels of a mask and the voxel count of each label (index 0: background)."""
    labels, count = ndimage.label(mask, structure=STRUCTURE)
    return labels, np.bincount(labels.ravel(), minlength=count + 1)


def apply_postprocessing(probability: np.ndarray, post: Postprocessing, *, voxel_mm3: float) -> np.ndarray:
    """The thrombus mask (bool) of a probability map: threshold, then drop components of too small a volume."""
    mask = np.asarray(probability) > post.threshold
    if post.min_component_mm3 <= voxel_mm3 or not mask.any():
        return mask
    labels, sizes = label_components(mask)
    keep = sizes * voxel_mm3 >= post.min_component_mm3
    keep[0] = False
    return keep[labels]


def component_sizes(mask: np.ndarray) -> list[int]:
    """Voxel counts of the 26-connected components of a mask, largest first (for the inference record)."""
    _, sizes = label_components(np.asarray(mask, dtype=bool))
    return sorted((int(s) for s in sizes[1:]), reverse=True)


def _case_scores(probability: np.ndarray, truth: np.ndarray, outside: int, sizes: Sequence[float], threshold: float,
                 voxel_mm3: float, gate: CaseGate | None = None) -> list[float]:
    """The case score at one threshold for every minimum size, labelling the thresholded map only once.

    Each component's size and its overlap with the truth are counted once; a minimum size then only
    selects components, so the whole row of sizes costs one `ndimage.label`. With `gate` (the lesion gate
    inference applies after these settings) only the components it lets through count.
    """
    mask = probability > threshold
    truth = truth > 0
    truth_voxels = int(truth.sum()) + outside
    labels, component_voxels = label_components(mask)
    overlap = np.bincount(labels[truth], minlength=len(component_voxels))
    passed = gate.kept(labels, len(component_voxels) - 1) if gate is not None else np.ones(len(component_voxels), dtype=bool)
    scores = []
    for size in sizes:
        keep = (component_voxels * voxel_mm3 >= max(size, voxel_mm3)) & passed
        keep[0] = False
        if truth_voxels == 0:
            scores.append(0.0 if keep.any() else 1.0)
            continue
        predicted, hit = int(component_voxels[keep].sum()), int(overlap[keep].sum())
        scores.append(2.0 * hit / (predicted + truth_voxels))
    return scores


def _preference(threshold: float, size: float) -> tuple[float, float, float]:
    """Tie-break key (larger wins): threshold nearest 0.5, then the smaller size, then the lower threshold."""
    return (-round(abs(threshold - 0.5), 9), -size, -threshold)


def choose_postprocessing(
    probabilities: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    subjects: Sequence[str],
    thresholds: Sequence[float] = THRESHOLDS,
    sizes: Sequence[float] = SIZES_MM3,
    truth_outside: Sequence[int] | None = None,
    voxel_volumes: Sequence[float] | None = None,
    min_positives: int = 1,
    gates: Sequence[CaseGate | None] | None = None,
) -> Postprocessing:
    """Grid search of threshold and minimum volume on validation subjects (criterion: module docstring).

    `truth_outside` counts thrombus voxels of each subject that lie outside its arrays (outside the
    brain box a validation case is cropped to); they can only be missed, as in the training's Dice.
    `voxel_volumes` (mm^3) are the subjects' voxels; without them every voxel counts as 1 mm^3.
    With fewer than `min_positives` subjects that have a thrombus the defaults are returned. `gates` (one
    per subject, None where it does not apply) scores each candidate as inference will see it, after the
    lesion gate.
    """
    if not (len(probabilities) == len(truths) == len(subjects)):
        raise ValueError(f"{len(probabilities)} probability maps, {len(truths)} truths and {len(subjects)} subjects: one each")
    if not probabilities:
        log.warning("no validation subjects: postprocessing keeps the defaults (threshold 0.5, no size filter)")
        return Postprocessing()
    positives = sum(bool(np.any(truth)) for truth in truths)
    if positives < min_positives:
        log.warning("%d thrombus-positive validation subjects: postprocessing keeps the defaults (threshold 0.5, no "
                    "size filter); %d are needed to choose", positives, min_positives)
        return Postprocessing(chosen_on=tuple(subjects), criterion=FEW_CRITERION.format(min_positives, positives))
    outside = list(truth_outside) if truth_outside is not None else [0] * len(subjects)
    volumes = list(voxel_volumes) if voxel_volumes is not None else [1.0] * len(subjects)
    gated = list(gates) if gates is not None else [None] * len(subjects)
    totals = np.zeros((len(thresholds), len(sizes)))
    for probability, truth, extra, voxel_mm3, gate in zip(probabilities, truths, outside, volumes, gated):
        if probability.shape != truth.shape:
            raise ValueError(f"probability map {probability.shape} and truth {truth.shape} differ in shape")
        for row, threshold in enumerate(thresholds):
            totals[row] += _case_scores(probability, truth, int(extra), sizes, float(threshold), float(voxel_mm3), gate)
    means = totals / len(subjects)
    candidates = [(round(float(means[r, c]), 9), _preference(float(t), float(s)), float(t), float(s))
                  for r, t in enumerate(thresholds) for c, s in enumerate(sizes)]
    ranked = sorted(candidates, reverse=True)
    score, _, threshold, size = ranked[0]
    applied = sum(gate is not None for gate in gated)
    criterion = CRITERION + (f", after the lesion gate ({applied} of {len(subjects)} subjects with an ADC map)" if applied else "")
    chosen = Postprocessing(threshold, size, tuple(subjects), score, criterion,
                            tuple((t, s, c) for c, _, t, s in ranked))
    log.info("postprocessing chosen on %d validation subjects: threshold %.2f, min size %g mm^3, score %.4f",
             len(subjects), threshold, size, score)
    return chosen
