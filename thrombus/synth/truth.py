"""Ground truth on a series grid: brain, infarct and thrombus masks, and the thrombus's contrast.

Masks are made on exactly the grid dcm2niix will produce from the reference series. Brain and infarct
are the model's fractions averaged like the image (slice profile), kept where at least half the voxel
is covered. The thrombus is small enough for that rule to erase it on thick slices, so its mask is
computed from the clot's exact shape: each voxel is supersampled (about 0.3 mm) and kept when at
least half of it lies in the clot, and every voxel the clot's centreline passes through is kept too,
so a thrombus is never lost to partial volume (the truth records how many voxels each rule gave).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from thrombus.synth import vessels
from thrombus.synth.acquisition import SeriesGeometry, SubjectFrame, grid_box, sample
from thrombus.synth.lesions import Patch, Thrombus

#: Supersampling step (mm) of the thrombus's partial-volume rule.
SUPERSAMPLE_MM = 0.3


def fraction_mask(volume: np.ndarray, model_affine: np.ndarray, geometry: SeriesGeometry, frame: SubjectFrame,
                  motion: np.ndarray | None = None) -> np.ndarray:
    """uint8 mask of voxels at least half covered by a template-space fraction map."""
    (fraction,) = sample([volume], model_affine, geometry, frame, motion)
    return (fraction >= 0.5).astype(np.uint8)


def patch_mask(patch: Patch | None, model_affine: np.ndarray, model_shape: tuple[int, int, int], geometry: SeriesGeometry,
               frame: SubjectFrame, motion: np.ndarray | None = None) -> np.ndarray:
    """`fraction_mask` of a small object (the infarct), sampled only on the part of the grid it can reach."""
    mask = np.zeros(geometry.shape, np.uint8)
    if patch is None:
        return mask
    volume = np.zeros(model_shape, np.float32)
    volume[patch.box] = patch.fraction
    corners = np.array(np.meshgrid(*[[b.start - 1, b.stop] for b in patch.box], indexing="ij")).reshape(3, -1)
    template = model_affine[:3, :3] @ corners + model_affine[:3, 3:4]
    box = grid_box(geometry, frame.template_to_world(template, motion))
    if box is not None:
        (fraction,) = sample([volume], model_affine, geometry, frame, motion, box=box)
        mask[box] = fraction >= 0.5
    return mask


def thrombus_mask(thrombus: Thrombus, geometry: SeriesGeometry, frame: SubjectFrame) -> tuple[np.ndarray, dict[str, int]]:
    """Thrombus mask on a series grid, and voxel counts by rule ('half_covered', 'centreline_only', 'total')."""
    mask = np.zeros(geometry.shape, np.uint8)
    affine = geometry.affine()
    to_voxel = np.linalg.inv(affine)
    dense = thrombus.tube.dense(0.2)
    centreline = frame.template_to_world(dense.points.T)
    voxels = np.rint(to_voxel[:3, :3] @ centreline + to_voxel[:3, 3:4]).astype(int)
    reach = (dense.radii.max() + 1.0) / np.array([geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm])
    lo = np.maximum(voxels.min(axis=1) - np.ceil(reach).astype(int) - 1, 0)
    hi = np.minimum(voxels.max(axis=1) + np.ceil(reach).astype(int) + 2, geometry.shape)
    if np.any(hi <= lo):
        return mask, {"half_covered": 0, "centreline_only": 0, "total": 0}
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    fraction = _covered_fraction(thrombus, geometry, frame, box)
    half = fraction >= 0.5
    mask[box] = half
    inside = np.all((voxels >= 0) & (voxels < np.array(geometry.shape)[:, None]), axis=0)
    mask[tuple(voxels[:, inside])] = 1
    total = int(mask.sum())
    return mask, {"half_covered": int(half.sum()), "centreline_only": total - int(half.sum()), "total": total}


def _covered_fraction(thrombus: Thrombus, geometry: SeriesGeometry, frame: SubjectFrame,
                      box: tuple[slice, slice, slice]) -> np.ndarray:
    """Fraction of each voxel of a box inside the clot, by supersampling the voxel cell."""
    steps = [max(2, int(np.ceil(size / SUPERSAMPLE_MM))) for size in (geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm)]
    sub = np.meshgrid(*[(np.arange(n) + 0.5) / n - 0.5 for n in steps], indexing="ij")
    sub = np.stack([s.ravel() for s in sub])
    centres = np.stack(np.meshgrid(*[np.arange(s.start, s.stop) for s in box], indexing="ij")).reshape(3, -1).astype(float)
    points = (centres[:, :, None] + sub[:, None, :]).reshape(3, -1)
    head = frame.world_to_head() @ geometry.affine()
    template = frame.head_to_template(head[:3, :3] @ points + head[:3, 3:4])
    inside = vessels.signed_distance(thrombus.tube, template.T) <= 0.0
    shape = [s.stop - s.start for s in box]
    return inside.reshape(*shape, sub.shape[1]).mean(axis=-1)


def thrombus_contrast(image: np.ndarray, thrombus: np.ndarray, brain: np.ndarray,
                      spacing_mm: tuple[float, float, float]) -> dict[str, float]:
    """How the thrombus stands out on the reference image: its mean against a shell 2-5 mm around it
    (distances in mm, so thick slices do not stretch the shell), and how much of the brain is darker
    than it (a thrombus that is the darkest thing in the brain would be too easy to find)."""
    distance = ndimage.distance_transform_edt(thrombus == 0, sampling=spacing_mm)
    shell = (distance > 2.0) & (distance <= 5.0)
    inside = float(image[thrombus > 0].mean())
    surround = float(image[shell].mean())
    others = (brain > 0) & (distance > 5.0)
    darker = int((image[others] < inside).sum())
    return {
        "thrombus_mean": round(inside, 3),
        "surround_mean": round(surround, 3),
        "ratio_to_surround": round(inside / max(surround, 1e-6), 4),
        "brain_fraction_darker": round(darker / max(int(others.sum()), 1), 5),
        "brain_voxels_darker": darker,
    }
