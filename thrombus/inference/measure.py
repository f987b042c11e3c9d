"""What a clinician reads off a predicted thrombus: volume, length, width, position and side.

Clot length decides thrombectomy technique and predicts recanalisation (the authors' group reports
length errors of 1.1 +- 0.8 mm), so each component is measured in millimetres on the subject's own grid:
its axis runs between its two farthest voxel centres; length is the extent of its voxels (counted as
boxes) along that axis, width the largest diameter of their outline across it. Either
figure can be off by about a voxel along the direction it runs (1 mm in-plane, 2 mm across SWI slices,
6 mm across thick T2* slices). On the paper cohort's truth masks, length against the generator's clot
length: mean absolute error 0.6-0.7 mm on the SWI centers (1 x 1 x 2-2.4 mm), 3.4 mm on the 6 mm T2* center.
The side is judged against the brain's own centre, not the scanner's x = 0, since heads lie off-centre.
The MNI position and the arterial segment need a registration to a template: `atlas.locate` adds them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

#: Point sets larger than this are reduced to their convex hull's vertices first (the pairwise distances
#: grow with the square of their number; the largest distance is always between hull vertices).
HULL_ABOVE = 64

#: Centroids closer than this (mm) to the brain's centre in x are called midline (basilar artery).
MIDLINE_MM = 3.0

#: The 8 corners of a voxel, as multiples of its edge vectors from its centre.
_CORNERS = np.array([[i, j, k] for i in (-0.5, 0.5) for j in (-0.5, 0.5) for k in (-0.5, 0.5)])


def _hull(points: np.ndarray) -> np.ndarray:
    """The points that can hold the largest distance: the hull's vertices, or, for a flat set, the two ends
    along its main direction."""
    if len(points) <= HULL_ABOVE:
        return points
    from scipy.spatial import ConvexHull, QhullError

    try:
        return points[ConvexHull(points).vertices]
    except QhullError:  # all on one line (or plane, in 3-D): the ends along the main direction
        centred = points - points.mean(axis=0)
        main = np.linalg.svd(centred, full_matrices=False)[2][0]
        along = centred @ main
        return points[[int(np.argmin(along)), int(np.argmax(along))]]


def _extent(points: np.ndarray) -> tuple[float, np.ndarray]:
    """Largest pairwise distance of `points` (n, d) and the unit vector between that pair."""
    points = _hull(points)
    if len(points) < 2:
        return 0.0, np.zeros(points.shape[1])
    diff = points[:, None, :] - points[None, :, :]
    distances = np.einsum("ijk,ijk->ij", diff, diff)
    i, j = np.unravel_index(int(np.argmax(distances)), distances.shape)
    length = float(np.sqrt(distances[i, j]))
    return length, diff[i, j] / length if length > 0 else np.zeros(points.shape[1])


def length_and_width(points_mm: np.ndarray, voxel_axes: np.ndarray) -> tuple[float, float]:
    """Length and width of the voxels centred at `points_mm` (n, 3), counted as boxes (edge vectors: the
    columns of `voxel_axes`): the axis runs between the two farthest centres (it follows the clot, where the
    boxes' own farthest corners would follow a thick slice's diagonal); length is the boxes' extent along
    it, width the largest diameter of their outline across it."""
    corners = _hull((points_mm[:, None, :] + (_CORNERS @ voxel_axes.T)[None, :, :]).reshape(-1, 3))
    span, axis = _extent(points_mm)
    if span == 0.0:  # one voxel: along its longest edge
        edge = voxel_axes[:, int(np.argmax(np.linalg.norm(voxel_axes, axis=0)))]
        axis = edge / np.linalg.norm(edge)
    along = corners @ axis
    basis = np.linalg.svd(np.eye(3) - np.outer(axis, axis))[0][:, :2]  # two directions across the axis
    width, _ = _extent(corners @ basis)
    return float(along.max() - along.min()), width


def side_of(x_mm: float, midline_x_mm: float) -> str:
    """The patient's side of a point: scanner RAS x grows toward the patient's right, so left lies below the
    brain's centre."""
    if abs(x_mm - midline_x_mm) < MIDLINE_MM:
        return "midline"
    return "left" if x_mm < midline_x_mm else "right"


def to_scanner(voxels: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices (n, 3) to scanner RAS millimetres."""
    return voxels @ affine[:3, :3].T + affine[:3, 3]


def measure_components(
    mask: np.ndarray, probability: np.ndarray, affine: np.ndarray, brain: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One record per 26-connected component of `mask`, largest first."""
    labels, count = ndimage.label(mask > 0, structure=np.ones((3, 3, 3), dtype=bool))
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    inside = brain if brain is not None and brain.any() else np.ones(mask.shape, dtype=bool)
    midline = float(to_scanner(np.argwhere(inside).mean(axis=0)[None, :], affine)[0, 0])
    components = []
    for label in range(1, count + 1):
        voxels = np.argwhere(labels == label)
        points = to_scanner(voxels.astype(float), affine)
        length, width = length_and_width(points, affine[:3, :3])
        centroid = points.mean(axis=0)
        values = probability[tuple(voxels.T)]
        components.append({
            "voxels": len(voxels),
            "volume_ml": round(len(voxels) * voxel_ml, 6),
            "length_mm": round(length, 2),
            "width_mm": round(width, 2),
            "centroid_scanner_ras_mm": [round(float(v), 2) for v in centroid],
            "side": side_of(float(centroid[0]), midline),
            "mean_probability": round(float(values.mean()), 4),
            "max_probability": round(float(values.max()), 4),
        })
    return sorted(components, key=lambda c: (-c["voxels"], c["centroid_scanner_ras_mm"]))


def measurements(
    subject: str, center: str, mask: np.ndarray, probability: np.ndarray, affine: np.ndarray,
    brain: np.ndarray | None, sequences: Sequence[str],
) -> dict[str, Any]:
    """A subject's readout: every component, and the largest as the thrombus (None when nothing is found)."""
    components = measure_components(mask, probability, affine, brain)
    return {
        "subject": subject,
        "center": center,
        "sequences_used": list(sequences),
        "thrombus": components[0] if components else None,
        "components": components,
        "units": {"volume": "ml", "length_width": "mm, maximum Feret diameter of the voxels and the largest extent across it", "centroid": "scanner RAS mm"},
        "not_measured": "MNI position and arterial segment (added by the workflow's measure step, atlas.locate)",
    }


#: Columns of a center's table: one row per subject, its largest component as the thrombus.
TABLE_COLUMNS = ("subject", "center", "found", "segment", "side", "volume_ml", "length_mm", "width_mm",
                 "centroid_mni_mm", "centroid_scanner_ras_mm", "mean_probability", "other_components", "sequences_used")


def center_table(readouts: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per subject from their measurements (`measurements`), in subject order."""
    rows = []
    for readout in sorted(readouts, key=lambda r: r["subject"]):
        thrombus = readout["thrombus"] or {}
        rows.append({
            "subject": readout["subject"], "center": readout["center"], "found": bool(readout["thrombus"]),
            **{key: thrombus.get(key) for key in ("segment", "volume_ml", "length_mm", "width_mm", "side", "mean_probability")},
            **{key: " ".join(str(v) for v in thrombus.get(key, [])) for key in ("centroid_mni_mm", "centroid_scanner_ras_mm")},
            "other_components": max(0, len(readout["components"]) - 1),
            "sequences_used": " ".join(readout["sequences_used"]),
        })
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
