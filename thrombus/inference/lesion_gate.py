"""Thrombus candidates gated by the diffusion lesion they would have caused.

An occluding clot starves its territory, and within the hours a thrombectomy decision is made that
territory restricts diffusion: the ADC falls below about 620 x 1e-6 mm^2/s, the threshold commercial core
software (RAPID) and the DEFUSE trials use for the ischemic core (Purushotham et al., Int J Stroke 2015).
A vein or a microbleed that the network takes for a clot has no such lesion behind it. The authors of the
method cut their false positives to almost zero with lesion masks (MIDL 2024); this is that remedy with the
lesion found by the ADC threshold instead of a second network:

* with no lesion of at least `min_lesion_ml` anywhere in the brain, every candidate is dropped (a
  thrombus-negative scan, for the network's look-alikes);
* otherwise a candidate is kept on a side of the brain that holds a lesion, or on the midline (a basilar
  clot infarcts both sides of the posterior circulation), and dropped on the other side.

Each lesion counts on its own, so bilateral lesions keep both sides. The side of a candidate is the side
of its centroid, judged against the brain's centre as `measure` judges it. The gate needs the ADC map on
the stack's grid in the scanner's unit; where a subject has none it is not applied, and the record says so.

What it cannot do: a scan whose look-alikes come with an unrelated lesion (an old lacune, a second small
embolus) keeps them, and a clot whose infarct is still too small for the threshold is dropped. In the
synthetic cohort thrombus-negative subjects carry no infarct at all, so its figures with the gate are the
best case of the first kind of error; the smallest lesion volume is a setting for that reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from thrombus.inference.measure import MIDLINE_MM, side_of, to_scanner
from thrombus.inference.postprocess import label_components

#: ADC (1e-6 mm^2/s) below which brain tissue counts as ischemic core (Purushotham et al. 2015).
ADC_CORE = 620.0
#: Smallest lesion (ml, one 26-connected component of the core) that opens the gate. On the training
#: centers of the paper cohort (A, B, D) the largest core component of a thrombus-negative subject is
#: 0.02-0.15 ml, that of a thrombus-positive one 0.12-25 ml,
#: 3 of 28 below 0.2 ml (small M2 infarcts): the round figure above the negatives.
MIN_LESION_ML = 0.2
#: ADC values at or below this are not tissue (outside the head, failed fits): never core.
ADC_FLOOR = 100.0
#: The brain's median ADC in 1e-6 mm^2/s lies in this range (grey and white matter 700-900, CSF 3000); a map
#: outside it is in another unit (1e-3 or 1e-5 mm^2/s) or not an ADC map, and the gate is not applied to it.
BRAIN_MEDIAN_RANGE = (300.0, 2000.0)


@dataclass(frozen=True)
class LesionGate:
    """The gate's two settings (the config's `lesion_gate` section)."""

    adc_max: float = ADC_CORE
    min_lesion_ml: float = MIN_LESION_ML

    def __post_init__(self) -> None:
        if self.adc_max <= ADC_FLOOR:
            raise ValueError(f"lesion_gate adc_max must be above {ADC_FLOOR} (1e-6 mm^2/s), got {self.adc_max}")
        if self.min_lesion_ml < 0:
            raise ValueError(f"lesion_gate min_lesion_ml must be >= 0, got {self.min_lesion_ml}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> LesionGate | None:
        """The gate of a config section ({} gives the defaults); None (gate off) for no section or `enabled: false`."""
        if values is None or not values.get("enabled", True):
            return None
        return cls(float(values.get("adc_max", ADC_CORE)), float(values.get("min_lesion_ml", MIN_LESION_ML)))


def registered_adc(root: Path, center: str, subject: str) -> Path | None:
    """The subject's ADC map on its stack's grid as the workflow writes it (registration's output), if any."""
    path = Path(root) / "results" / "register" / center / subject / "adc.nii.gz"
    return path if path.exists() else None


def core_lesions(adc: np.ndarray, brain: np.ndarray, voxel_ml: float, gate: LesionGate) -> np.ndarray:
    """The core components of at least the gate's volume, as one boolean mask."""
    core = (adc < gate.adc_max) & (adc > ADC_FLOOR) & brain
    labels, sizes = label_components(core)
    keep = sizes * voxel_ml >= gate.min_lesion_ml
    keep[0] = False
    return keep[labels]


def _midline(brain: np.ndarray, affine: np.ndarray) -> float:
    return float(to_scanner(np.argwhere(brain).mean(axis=0)[None, :], affine)[0, 0])


def _centres_x(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """26-connected labels of `mask` and the scanner x of each component's centroid (exact, not rounded to a voxel)."""
    labels, sizes = label_components(mask)
    if len(sizes) == 1:
        return labels, np.zeros(0)
    centres = np.asarray(ndimage.center_of_mass(mask, labels, range(1, len(sizes)))).reshape(-1, 3)
    return labels, to_scanner(centres, affine)[:, 0]


@dataclass(frozen=True)
class GateDecision:
    """What the gate found on one subject: the sides holding a lesion, the brain's centre, the core's volume."""

    sides: tuple[str, ...]
    midline_x: float
    lesion_ml: float

    def keeps(self, x_mm: float) -> bool:
        """Whether a candidate whose centroid lies at scanner x `x_mm` passes: on a lesion's side or the midline."""
        side = side_of(x_mm, self.midline_x)
        return bool(self.sides) and (side == "midline" or side in self.sides)


def decide(adc: np.ndarray, brain: np.ndarray, affine: np.ndarray, gate: LesionGate) -> GateDecision:
    """The sides of the brain that hold a core component of the gate's size, each component judged alone."""
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    lesion = core_lesions(adc, brain, voxel_ml, gate)
    midline = _midline(brain, affine)
    _, xs = _centres_x(lesion, affine)
    sides = tuple(sorted({side_of(float(x), midline) for x in xs}))
    return GateDecision(sides, midline, round(float(lesion.sum()) * voxel_ml, 3))


def _passing(labels: np.ndarray, count: int, affine: np.ndarray, decision: GateDecision) -> np.ndarray:
    """Which of `count` labelled components (index 0 the background, never kept) the decision keeps."""
    keep = np.zeros(count + 1, dtype=bool)
    if count:
        centres = np.asarray(ndimage.center_of_mass(labels > 0, labels, range(1, count + 1))).reshape(-1, 3)
        keep[1:] = [decision.keeps(float(x)) for x in to_scanner(centres, affine)[:, 0]]
    return keep


def _gate(mask: np.ndarray, affine: np.ndarray, decision: GateDecision) -> tuple[np.ndarray, int]:
    """The gated mask and how many components it dropped, labelling the mask once."""
    labels, sizes = label_components(np.asarray(mask, dtype=bool))
    keep = _passing(labels, len(sizes) - 1, affine, decision)
    return keep[labels], len(sizes) - 1 - int(keep.sum())


def gate_components(mask: np.ndarray, affine: np.ndarray, decision: GateDecision) -> np.ndarray:
    """`mask` without the 26-connected components the decision drops. `affine` maps this array's indices to
    scanner millimetres (a cropped or transposed array has its own)."""
    return _gate(mask, affine, decision)[0]


@dataclass(frozen=True)
class CaseGate:
    """The gate's decision on one subject with the affine of the arrays it is applied to (a training case's
    arrays are cropped to the brain box and read slices first: `case_affine`)."""

    decision: GateDecision
    affine: np.ndarray

    def kept(self, labels: np.ndarray, count: int) -> np.ndarray:
        """Which of `count` labelled components (index 0 the background, never kept) pass the gate."""
        return _passing(labels, count, self.affine, self.decision)

    def apply(self, mask: np.ndarray) -> np.ndarray:
        return gate_components(mask, self.affine, self.decision)


def case_affine(affine: np.ndarray, box: tuple[slice, ...]) -> np.ndarray:
    """The affine of a case's arrays: the stack's voxels cropped to `box` and read slices first (z, x, y)."""
    to_stack = np.zeros((4, 4))
    to_stack[0, 1] = to_stack[1, 2] = to_stack[2, 0] = to_stack[3, 3] = 1.0  # (z, x, y) -> (x, y, z)
    to_stack[:3, 3] = [box[0].start, box[1].start, box[2].start]
    return affine @ to_stack


def case_gates(subjects: Sequence[tuple[str, str]], root: Path, gate: LesionGate) -> dict[str, CaseGate | None]:
    """The gate of each (center, subject) on its training case's arrays (`load_case`: the stack cropped to the
    brain box, slices first), from the registered ADC map beside its stack; None for a subject without one,
    or with one the gate refuses: the gate is not applied to it, as at inference."""
    import nibabel as nib

    from thrombus.training.data import _brain_box

    gates: dict[str, CaseGate | None] = {}
    for center, subject in subjects:
        adc_path = registered_adc(root, center, subject)
        stack_path = Path(root) / "results" / "harmonise" / center / subject / "stack.nii.gz"
        gates[subject] = None
        if adc_path is None or not stack_path.exists():
            continue
        stack = nib.load(str(stack_path))
        brain = np.any(np.asarray(stack.dataobj) != 0, axis=3)
        adc = np.asarray(nib.load(str(adc_path)).dataobj, dtype=np.float32)
        if unit_problem(adc, brain) is None:
            box = _brain_box(brain, f"subject {subject} (center {center}) stack {stack_path}")
            gates[subject] = CaseGate(decide(adc, brain, stack.affine, gate), case_affine(stack.affine, box))
    return gates


def unit_problem(adc: np.ndarray, brain: np.ndarray) -> str | None:
    """Why `adc` cannot be read in 1e-6 mm^2/s (the threshold's unit), or None when it can."""
    tissue = adc[brain & (adc > 0)]
    if tissue.size == 0:
        return "the ADC map is zero inside the brain"
    median = float(np.median(tissue))
    low, high = BRAIN_MEDIAN_RANGE
    if not low <= median <= high:
        return (f"the ADC map's brain median is {median:.4g}, not {low:.0f}-{high:.0f}: not in 1e-6 mm^2/s "
                "(rescale it) or not an ADC map")
    return None


def apply_gate(mask: np.ndarray, adc: np.ndarray | None, brain: np.ndarray, affine: np.ndarray,
               gate: LesionGate) -> tuple[np.ndarray, dict[str, Any]]:
    """The gated mask and what the gate saw (for the inference record); the mask unchanged without an ADC map."""
    reason = "no ADC map for this subject" if adc is None else unit_problem(adc, brain)
    if reason:
        return mask, {**gate.to_dict(), "applied": False, "reason": reason}
    decision = decide(adc, brain, affine, gate)
    gated, dropped = _gate(mask, affine, decision)
    return gated, {**gate.to_dict(), "applied": True, "lesion_ml": decision.lesion_ml, "lesion_sides": list(decision.sides),
                   "components_dropped": dropped}
