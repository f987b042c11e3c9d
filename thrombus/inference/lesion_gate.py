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

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from thrombus.inference.measure import MIDLINE_MM, side_of, to_scanner
from thrombus.inference.postprocess import label_components

#: ADC (1e-6 mm^2/s) below which brain tissue counts as ischemic core (Purushotham et al. 2015).
ADC_CORE = 620.0
#: Smallest lesion (ml, one 26-connected component of the core) that opens the gate. On the training
#: centers of the paper cohort (A, B, D) the largest core component of a thrombus-negative subject is
#: 0.02-0.15 ml (noise and partial volume at the ventricles), that of a thrombus-positive one 0.12-26 ml,
#: 3 of 28 below 0.2 ml (small M2 infarcts): the round figure above the negatives.
MIN_LESION_ML = 0.2
#: ADC values at or below this are not tissue (outside the head, failed fits): never core.
ADC_FLOOR = 100.0
#: The brain's median ADC in 1e-6 mm^2/s lies in this range (grey and white matter 700-900, CSF 3000); a map
#: outside it is in another unit (1e-3 or 1e-5 mm^2/s) or not an ADC map, and the gate is not applied to it.
BRAIN_MEDIAN_RANGE = (300.0, 2000.0)


@dataclass(frozen=True)
class LesionGate:
    """The gate's two settings (config `postprocess.lesion_gate`)."""

    adc_max: float = ADC_CORE
    min_lesion_ml: float = MIN_LESION_ML

    def __post_init__(self) -> None:
        if self.adc_max <= ADC_FLOOR:
            raise ValueError(f"lesion_gate adc_max must be above {ADC_FLOOR} (1e-6 mm^2/s), got {self.adc_max}")
        if self.min_lesion_ml < 0:
            raise ValueError(f"lesion_gate min_lesion_ml must be >= 0, got {self.min_lesion_ml}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> LesionGate | None:
        """The gate of a config section ({} gives the defaults); None (gate off) for no section or `enabled: false`."""
        if values is None or not values.get("enabled", True):
            return None
        return cls(float(values.get("adc_max", ADC_CORE)), float(values.get("min_lesion_ml", MIN_LESION_ML)))


def core_lesions(adc: np.ndarray, brain: np.ndarray, voxel_ml: float, gate: LesionGate) -> np.ndarray:
    """The core components of at least the gate's volume, as one boolean mask."""
    core = (adc < gate.adc_max) & (adc > ADC_FLOOR) & brain
    labels, sizes = label_components(core)
    keep = sizes * voxel_ml >= gate.min_lesion_ml
    keep[0] = False
    return keep[labels]


def _midline(brain: np.ndarray, affine: np.ndarray) -> float:
    return float(to_scanner(np.argwhere(brain).mean(axis=0)[None, :], affine)[0, 0])


def lesion_sides(lesion: np.ndarray, brain: np.ndarray, affine: np.ndarray) -> list[str]:
    """The sides ("left", "right", "midline") of the brain that hold a lesion component, each judged alone."""
    if not lesion.any():
        return []
    midline = _midline(brain, affine)
    labels, count = ndimage.label(lesion, structure=np.ones((3, 3, 3), dtype=bool))
    centres = ndimage.center_of_mass(lesion, labels, range(1, count + 1))
    return sorted({side_of(float(x), midline) for x in to_scanner(np.asarray(centres), affine)[:, 0]})


def allowed_region(brain: np.ndarray, affine: np.ndarray, sides: list[str]) -> np.ndarray:
    """Where a candidate's centroid may lie: the sides holding a lesion and the midline band; nowhere without one."""
    if not sides:
        return np.zeros(brain.shape, dtype=bool)
    i, j, k = np.ogrid[tuple(slice(0, n) for n in brain.shape)]
    offset = affine[0, 0] * i + affine[0, 1] * j + affine[0, 2] * k + (affine[0, 3] - _midline(brain, affine))
    allowed = np.abs(offset) < MIDLINE_MM
    if "right" in sides:
        allowed |= offset > 0  # scanner x grows toward the patient's right (measure.side_of)
    if "left" in sides:
        allowed |= offset < 0
    return allowed


def gate_components(mask: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """`mask` without the 26-connected components whose centroid lies outside `allowed`."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask
    labels, sizes = label_components(mask)
    centres = np.rint(ndimage.center_of_mass(mask, labels, range(1, len(sizes)))).astype(int)
    keep = np.zeros(len(sizes), dtype=bool)
    keep[1:] = allowed[tuple(centres.T)]
    return keep[labels]


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


def gate_region(adc: np.ndarray | None, brain: np.ndarray, affine: np.ndarray, gate: LesionGate) -> np.ndarray | None:
    """Where the gate lets a candidate's centroid lie on this grid; None where it cannot be applied."""
    if adc is None or unit_problem(adc, brain):
        return None
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    return allowed_region(brain, affine, lesion_sides(core_lesions(adc, brain, voxel_ml, gate), brain, affine))


def apply_gate(mask: np.ndarray, adc: np.ndarray | None, brain: np.ndarray, affine: np.ndarray,
               gate: LesionGate) -> tuple[np.ndarray, dict[str, Any]]:
    """The gated mask and what the gate saw (for the inference record); the mask unchanged without an ADC map."""
    if adc is None:
        return mask, {**asdict(gate), "applied": False, "reason": "no ADC map for this subject"}
    reason = unit_problem(adc, brain)
    if reason:
        return mask, {**asdict(gate), "applied": False, "reason": reason}
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    lesion = core_lesions(adc, brain, voxel_ml, gate)
    sides = lesion_sides(lesion, brain, affine)
    gated = gate_components(mask, allowed_region(brain, affine, sides))
    _, before = label_components(np.asarray(mask, dtype=bool))
    _, after = label_components(gated)
    return gated, {**asdict(gate), "applied": True, "lesion_ml": round(float(lesion.sum()) * voxel_ml, 3),
                   "lesion_sides": sides, "components_dropped": len(before) - len(after)}
