"""Per-subject metrics for one predicted thrombus mask against its reference, with the rules stated.

A thrombus is a few dozen voxels, so the choices a metric makes (what counts as a hit, what an empty
prediction scores, which voxels form the surface) decide the numbers more than the model does. Every
choice is made here once, explicitly, and written into the docstrings and into `tables.MATCHING_RULE`:

* Components are connected components of the binary masks, 26-connected by default (3-D, faces, edges
  and corners); `EvaluationOptions.connectivity` allows 6 or 18.
* A thrombus-positive case is *detected* when the prediction overlaps the reference by at least one
  voxel (a 24-voxel thrombus hit by 4 voxels is a hit; at IoU >= 0.5 it would be a miss).
* Lesion-wise: a truth component is a true positive when at least one predicted voxel lies in it; a
  predicted component is a false positive when it overlaps no truth voxel.
* HD95 follows MONAI's `compute_hausdorff_distance(..., percentile=95, directed=False)` exactly:
  surfaces are mask XOR its binary erosion (scipy's default 6-neighbour cross, outside the grid counted
  as background), distances are exact Euclidean distances in mm (`sampling=spacing`), and the result is
  the *maximum of the two directed percentiles* (prediction -> truth and truth -> prediction), not the
  percentile of the pooled distances.
* An empty prediction on a positive case has no surface, so HD95 is undefined; where MONAI returns inf
  and nnU-Net a NaN that a later nanmean silently drops, we score the explicit penalty
  (`EvaluationOptions.empty_penalty_mm`, by default the diagonal of the image grid) and flag it with
  `hd95_penalised = 1` so a table can say how many cases carry it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from thrombus.io import PathLike

log = logging.getLogger(__name__)

Spacing = tuple[float, float, float]

#: Connectivity (neighbours of a voxel) -> scipy `generate_binary_structure` rank.
_CONNECTIVITY_RANK = {6: 1, 18: 2, 26: 3}

#: Tolerance (mm, per affine entry) under which a prediction is taken to be on the reference grid.
AFFINE_ATOL = 1e-3

#: Record keys of `evaluate_masks`, in order (`evaluate_files` puts subject and center first).
RECORD_KEYS: tuple[str, ...] = (
    "positive", "detected", "n_truth_components", "n_pred_components", "lesion_tp", "lesion_fn",
    "lesion_fp", "lesion_recall", "lesion_precision", "lesion_f1", "fp_components", "dice", "hd95_mm",
    "hd95_penalised", "volume_truth_ml", "volume_pred_ml", "volume_error_ml", "length_truth_mm",
    "length_pred_mm", "length_error_mm", "false_positive_case",
)


class EvaluationError(ValueError):
    """A case that cannot be evaluated as given; the message names the subject, the files and what to do."""


@dataclass(frozen=True)
class EvaluationOptions:
    """The knobs of the evaluation rules, kept in one record so a table can state which were used.

    `empty_penalty_mm` is the HD95 given to a positive case whose prediction is empty (no surface to
    measure from). None means the diagonal of the image grid in mm (the distance between the centres of
    two opposite corner voxels), the largest distance any two voxels of that grid can have, so the
    penalty is never better than the worst real prediction. Negative cases get no HD95 at all (a
    prediction on a thrombus-free case is counted as a false-positive case instead), so the penalty never
    touches them.
    """

    hd95_percentile: float = 95.0
    empty_penalty_mm: float | None = None
    connectivity: int = 26

    def __post_init__(self) -> None:
        if not 0.0 <= self.hd95_percentile <= 100.0:
            raise EvaluationError(f"evaluation.hd95_percentile must be in [0, 100], got {self.hd95_percentile}")
        if self.empty_penalty_mm is not None and not (np.isfinite(self.empty_penalty_mm) and self.empty_penalty_mm > 0):
            raise EvaluationError(
                f"evaluation.empty_penalty_mm must be a positive number of mm or null (grid diagonal), got {self.empty_penalty_mm}"
            )
        if self.connectivity not in _CONNECTIVITY_RANK:
            raise EvaluationError(f"evaluation.connectivity must be 6, 18 or 26, got {self.connectivity}")


def _structure(connectivity: int) -> np.ndarray:
    """The 3x3x3 neighbourhood that defines a connected component."""
    return ndimage.generate_binary_structure(3, _CONNECTIVITY_RANK[connectivity])


def _label(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask, structure=_structure(connectivity))
    return labels, int(count)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask XOR its erosion with scipy's default cross: MONAI's `get_mask_edges`, so HD95 matches it."""
    return mask ^ ndimage.binary_erosion(mask)


def grid_diagonal_mm(shape: tuple[int, ...], spacing: Spacing) -> float:
    """Distance between the centres of two opposite corner voxels: the largest distance on the grid."""
    extent = (np.asarray(shape[:3], dtype=float) - 1.0) * np.asarray(spacing, dtype=float)
    return float(np.linalg.norm(extent))


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """2|P∩T| / (|P|+|T|); 1.0 when both are empty (nothing to find, nothing found)."""
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return float(2.0 * np.count_nonzero(prediction & truth) / total)


def _directed_distances(source: np.ndarray, target: np.ndarray, spacing: Spacing) -> np.ndarray:
    """Distance (mm) from each surface voxel of `source` to the nearest surface voxel of `target`."""
    field = ndimage.distance_transform_edt(~target, sampling=spacing)
    return field[source]


def hausdorff_percentile(prediction: np.ndarray, truth: np.ndarray, spacing: Spacing, percentile: float) -> float:
    """Symmetric percentile Hausdorff distance in mm, MONAI's convention; both masks must be non-empty.

    max(P(d(pred surface -> truth surface)), P(d(truth surface -> pred surface))) with linear
    interpolation between ranks (numpy's default, the same as torch.quantile that MONAI uses).
    """
    if not prediction.any() or not truth.any():
        raise EvaluationError("hausdorff_percentile needs two non-empty masks; score an empty prediction with the penalty")
    pred_surface, truth_surface = _surface(prediction), _surface(truth)
    forward = _directed_distances(pred_surface, truth_surface, spacing)
    backward = _directed_distances(truth_surface, pred_surface, spacing)
    return float(max(np.percentile(forward, percentile), np.percentile(backward, percentile)))


def feret_diameter_mm(mask: np.ndarray, spacing: Spacing) -> float | None:
    """Maximum Feret diameter: the largest distance between two voxel centres of the mask, in mm.

    The farthest pair always lies on the convex hull, so only surface voxels, then only hull vertices,
    are compared; that keeps a long thrombus at a few hundred points instead of all pairs. A single voxel
    measures 0 mm (centre to centre); an empty mask has no length (None).
    """
    if not mask.any():
        return None
    points = np.argwhere(_surface(mask)).astype(float) * np.asarray(spacing, dtype=float)
    if len(points) > 4:
        try:
            points = points[ConvexHull(points).vertices]
        except QhullError:
            # Coplanar or collinear voxels (a one-slice thrombus): no 3-D hull, so compare all surface
            # points; such masks are flat, so their surface is small.
            pass
    if len(points) < 2:
        return 0.0
    return float(pdist(points).max())


def _volume_ml(mask: np.ndarray, spacing: Spacing) -> float:
    return float(np.count_nonzero(mask) * float(np.prod(spacing)) / 1000.0)


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else float(numerator / denominator)


def _f1(recall: float | None, precision: float | None) -> float | None:
    """Harmonic mean of recall and precision; None only when both are undefined.

    When just one is undefined the other is necessarily 0 (no prediction on a thrombus: recall 0; a
    prediction on a thrombus-free case: precision 0), and F1 = 2TP/(2TP+FP+FN) is 0 there, so a miss
    counts as 0 instead of dropping out of the mean.
    """
    if recall is None and precision is None:
        return None
    if recall is None or precision is None:
        return 0.0
    if recall + precision == 0:
        return 0.0
    return float(2.0 * recall * precision / (recall + precision))


def _lesion_counts(prediction: np.ndarray, truth: np.ndarray, connectivity: int) -> dict[str, Any]:
    """Component matching at >= 1 voxel overlap, both ways.

    Recall = truth components hit / truth components (undefined without a truth component);
    precision = predicted components that touch the truth / predicted components (undefined without a
    predicted component); F1 is None only when both are (see `_f1`). One predicted component spanning
    two truth components counts once for precision and twice for recall, which is what "touches" means
    in each direction.
    """
    truth_labels, n_truth = _label(truth, connectivity)
    pred_labels, n_pred = _label(prediction, connectivity)
    hit_truth = np.unique(truth_labels[prediction & truth])
    touching_pred = np.unique(pred_labels[prediction & truth])
    tp = int(np.count_nonzero(hit_truth))
    matched_pred = int(np.count_nonzero(touching_pred))
    fp = n_pred - matched_pred
    recall = _ratio(tp, n_truth)
    precision = _ratio(matched_pred, n_pred)
    return {
        "n_truth_components": n_truth, "n_pred_components": n_pred, "lesion_tp": tp,
        "lesion_fn": n_truth - tp, "lesion_fp": fp, "lesion_recall": recall,
        "lesion_precision": precision, "lesion_f1": _f1(recall, precision), "fp_components": fp,
        "_pred_labels": pred_labels, "_touching_pred": touching_pred[touching_pred > 0],
    }


def _as_mask(array: np.ndarray | None, shape: tuple[int, ...] | None, what: str) -> np.ndarray:
    """Boolean 3-D mask (nonzero = foreground); a missing truth is an empty mask on the same grid."""
    if array is None:
        assert shape is not None
        return np.zeros(shape, dtype=bool)
    array = np.asarray(array)
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise EvaluationError(f"{what}: expected a 3-D mask, got shape {array.shape}")
    return array != 0


def evaluate_masks(
    prediction: np.ndarray,
    truth: np.ndarray | None,
    spacing: Spacing,
    positive: bool,
    options: EvaluationOptions = EvaluationOptions(),
) -> dict[str, Any]:
    """One flat, JSON-ready record (python ints/floats/None) for one case; keys are `RECORD_KEYS`.

    Negative cases (no thrombus) get detection, Dice, HD95 and length as None and are judged by
    `false_positive_case` and `lesion_fp`; positive cases get `false_positive_case` None. Lengths: the
    truth's is that of the whole reference mask; the prediction's is that of the predicted components
    that touch the reference, so a far false positive inflates neither the length nor its error (it is
    counted in `lesion_fp` instead). `length_error_mm` is None when the prediction misses.
    """
    pred = _as_mask(prediction, None, "prediction")
    ref = _as_mask(truth, pred.shape, "truth")
    if pred.shape != ref.shape:
        raise EvaluationError(f"prediction shape {pred.shape} differs from truth shape {ref.shape}; resample onto the reference grid")
    spacing = tuple(float(s) for s in spacing)  # type: ignore[assignment]
    if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
        raise EvaluationError(f"spacing must be three positive numbers (mm), got {spacing}")
    if positive and not ref.any():
        raise EvaluationError("a thrombus-positive case has an empty truth mask; fix the reference or the label in the sample sheet")
    if not positive and ref.any():
        raise EvaluationError(
            f"a thrombus-negative case has {int(ref.sum())} truth voxels; fix the label in the sample sheet or the reference"
        )

    lesions = _lesion_counts(pred, ref, options.connectivity)
    pred_labels, touching = lesions.pop("_pred_labels"), lesions.pop("_touching_pred")
    detected = bool((pred & ref).any())
    volume_truth, volume_pred = _volume_ml(ref, spacing), _volume_ml(pred, spacing)

    dice_value = hd95 = None
    penalised = 0
    length_truth = length_pred = length_error = None
    if positive:
        dice_value = dice(pred, ref)
        if pred.any():
            hd95 = hausdorff_percentile(pred, ref, spacing, options.hd95_percentile)
        else:
            hd95 = options.empty_penalty_mm if options.empty_penalty_mm is not None else grid_diagonal_mm(ref.shape, spacing)
            penalised = 1
        length_truth = feret_diameter_mm(ref, spacing)
        if detected:
            length_pred = feret_diameter_mm(np.isin(pred_labels, touching), spacing)
            length_error = abs(length_pred - length_truth)  # type: ignore[operator]

    record: dict[str, Any] = {
        "positive": int(positive),
        "detected": int(detected) if positive else None,
        **lesions,
        "dice": dice_value,
        "hd95_mm": None if hd95 is None else float(hd95),
        "hd95_penalised": penalised,
        "volume_truth_ml": volume_truth,
        "volume_pred_ml": volume_pred,
        "volume_error_ml": abs(volume_pred - volume_truth),
        "length_truth_mm": length_truth,
        "length_pred_mm": length_pred,
        "length_error_mm": None if length_error is None else float(length_error),
        "false_positive_case": None if positive else int(lesions["n_pred_components"] > 0),
    }
    return {key: record[key] for key in RECORD_KEYS}


def _load_mask(path: Path, role: str, subject: str) -> nib.Nifti1Image:
    """Open a mask file, naming the subject when it is missing or unreadable."""
    if not path.exists():
        raise EvaluationError(f"subject {subject}: {role} file {path} does not exist")
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise EvaluationError(f"subject {subject}: cannot read {role} file {path} as NIfTI ({err})") from err
    return image


def _mask_data(image: nib.Nifti1Image, path: Path, role: str, subject: str) -> np.ndarray:
    data = np.asanyarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise EvaluationError(f"subject {subject}: {role} file {path} has shape {data.shape}, a 3-D mask was expected")
    if not np.all(np.isfinite(data)):
        raise EvaluationError(f"subject {subject}: {role} file {path} holds NaN/inf values; a binary mask was expected")
    if np.any(data != np.round(data)):
        raise EvaluationError(
            f"subject {subject}: {role} file {path} holds fractional values (a probability map?); "
            "threshold it to a 0/1 mask before evaluation"
        )
    return data != 0


def _spacing(affine: np.ndarray) -> Spacing:
    """Voxel size in mm from the affine's column norms (what the distances are measured in)."""
    zooms = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    return (float(zooms[0]), float(zooms[1]), float(zooms[2]))


def _check_grid(pred: nib.Nifti1Image, truth: nib.Nifti1Image, prediction_path: Path, truth_path: Path, subject: str) -> None:
    pred_shape, truth_shape = tuple(pred.shape[:3]), tuple(truth.shape[:3])
    same_affine = np.allclose(pred.affine, truth.affine, atol=AFFINE_ATOL)
    if pred_shape != truth_shape or not same_affine:
        found = f"shape {pred_shape} vs {truth_shape}" if pred_shape != truth_shape else (
            f"affines differ by up to {float(np.abs(pred.affine - truth.affine).max()):.4g} (tolerance {AFFINE_ATOL})"
        )
        raise EvaluationError(
            f"subject {subject}: prediction not on the reference grid: prediction {prediction_path} and truth "
            f"{truth_path} differ ({found}); resample the prediction onto the truth's grid (the reference "
            "sequence) before evaluation"
        )


def evaluate_files(
    prediction_path: PathLike,
    truth_path: PathLike | None,
    subject: str,
    center: str,
    positive: bool,
    options: EvaluationOptions = EvaluationOptions(),
) -> dict[str, Any]:
    """`evaluate_masks` on two NIfTI files, after checking they share one grid; subject and center first.

    Spacing comes from the truth's affine (the prediction's for a negative case without a truth file).
    A negative case may have no truth file (an empty reference is implied); a positive one may not.
    """
    prediction_path = Path(prediction_path)
    if positive and truth_path is None:
        raise EvaluationError(
            f"subject {subject}: thrombus-positive but no truth file was given (prediction {prediction_path}); "
            "add the reference mask to the sample sheet or mark the subject negative"
        )
    pred_image = _load_mask(prediction_path, "prediction", subject)
    pred = _mask_data(pred_image, prediction_path, "prediction", subject)
    truth: np.ndarray | None = None
    reference = pred_image
    if truth_path is not None:
        truth_path = Path(truth_path)
        truth_image = _load_mask(truth_path, "truth", subject)
        _check_grid(pred_image, truth_image, prediction_path, truth_path, subject)
        truth = _mask_data(truth_image, truth_path, "truth", subject)
        reference = truth_image
        if positive and not truth.any():
            raise EvaluationError(
                f"subject {subject}: thrombus-positive but truth file {truth_path} is empty (prediction "
                f"{prediction_path}); fix the reference mask or mark the subject negative"
            )
    try:
        record = evaluate_masks(pred, truth, _spacing(reference.affine), positive, options)
    except EvaluationError as err:
        raise EvaluationError(f"subject {subject} (prediction {prediction_path}, truth {truth_path}): {err}") from err
    log.debug("evaluated %s/%s: %s", center, subject, record)
    return {"subject": subject, "center": center, **record}
