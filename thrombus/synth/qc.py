"""One PNG per subject for a person to check the synthetic anatomy: a few axial slices of the
reference sequence with the thrombus (red) and infarct (yellow) outlined, a zoom on the clot, and the
DWI b1000 with its infarct outline. Slices are reoriented to the nearest axial and shown in
radiological convention (patient's right on the left of the picture, anterior up), as a radiologist
would look at them, whatever orientation dcm2niix gives the series."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from thrombus.io import atomic_path


def _radiological(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient to LAS axes so that, shown with i to the right and j up, the patient's right is on the left."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt("LAS"))
    return nib.orientations.apply_orientation(volume, transform)


def _slices(mask: np.ndarray, extent: np.ndarray, count: int) -> list[int]:
    """`count` slices around a mask's centre (spaced over the extent's height), or spread over the extent."""
    ks = np.flatnonzero(extent.any(axis=(0, 1)))
    low, high = (int(ks.min()), int(ks.max())) if ks.size else (0, mask.shape[2] - 1)
    if mask.any():
        centre = int(np.rint(np.median(np.nonzero(mask)[2])))
        spread = max(1, (high - low) // 12)
        picks = [centre + d * spread for d in range(-(count // 2), count - count // 2)]
    else:
        picks = list(np.linspace(low + 0.25 * (high - low), high - 0.2 * (high - low), count).round().astype(int))
    return [int(np.clip(k, 0, mask.shape[2] - 1)) for k in picks]


def _limits(image: np.ndarray) -> tuple[float, float]:
    """Display window: 0 to a high percentile of the non-background voxels."""
    foreground = image[image > 0.1 * float(image.max())]
    return 0.0, float(np.percentile(foreground, 99.5)) if foreground.size else 1.0


def _show(axis: Axes, image: np.ndarray, masks: list[tuple[np.ndarray, str]], limits: tuple[float, float], title: str,
          aspect: float, window: tuple[slice, slice] | None = None) -> None:
    """One axial slice (LAS-ordered) with mask outlines."""
    if window is not None:
        image = image[window]
        masks = [(m[window], c) for m, c in masks]
    axis.imshow(image.T, origin="lower", cmap="gray", vmin=limits[0], vmax=limits[1], aspect=aspect, interpolation="nearest")
    for mask, colour in masks:
        if mask.any():
            axis.contour(mask.T.astype(float), levels=[0.5], colors=colour, linewidths=0.8)
    axis.set_title(title, fontsize=8)
    axis.set_axis_off()
    # slices are shown radiologically (LAS): the patient's right on the screen's left; say so
    style = {"transform": axis.transAxes, "color": "yellow", "fontsize": 7, "fontweight": "bold", "va": "center"}
    axis.text(0.02, 0.5, "R", ha="left", **style)
    axis.text(0.98, 0.5, "L", ha="right", **style)


def write_qc(target: Path, title: str, reference: np.ndarray, reference_affine: np.ndarray, thrombus: np.ndarray,
             infarct: np.ndarray, brain: np.ndarray, reference_name: str, dwi: np.ndarray | None = None,
             dwi_affine: np.ndarray | None = None, dwi_infarct: np.ndarray | None = None) -> Path:
    """Write the QC figure for one subject: reference slices through the thrombus, a zoom, DWI through the infarct."""
    columns = 5
    rows = 2 if dwi is not None else 1
    figure = Figure(figsize=(3.0 * columns, 3.1 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    reference, thrombus, infarct, brain = (_radiological(v, reference_affine) for v in (reference, thrombus, infarct, brain))
    spacing = np.sqrt((reference_affine[:3, :3] ** 2).sum(axis=0))
    limits = _limits(reference * (brain > 0))
    aspect = spacing[1] / spacing[0]
    for axis, k in zip(axes[0, :4], _slices(thrombus if thrombus.any() else infarct, brain, 4)):
        _show(axis, reference[:, :, k], [(thrombus[:, :, k], "red"), (infarct[:, :, k], "yellow")], limits,
              f"{reference_name} slice {k}", aspect)
    if thrombus.any():
        i, j, k = (int(np.rint(np.median(a))) for a in np.nonzero(thrombus))
        half = max(8, int(20.0 / spacing[0]))
        window = (slice(max(0, i - half), i + half), slice(max(0, j - half), j + half))
        _show(axes[0, 4], reference[:, :, k], [(thrombus[:, :, k], "red")], limits, f"zoom 40 mm, slice {k}", aspect, window)
    else:
        axes[0, 4].set_axis_off()
        axes[0, 4].set_title("no thrombus", fontsize=8)
    if dwi is not None and dwi_infarct is not None and dwi_affine is not None:
        dwi, dwi_infarct = _radiological(dwi, dwi_affine), _radiological(dwi_infarct, dwi_affine)
        dwi_spacing = np.sqrt((dwi_affine[:3, :3] ** 2).sum(axis=0))
        head = dwi > 0.2 * _limits(dwi)[1]
        for axis, k in zip(axes[1], _slices(dwi_infarct, head, columns)):
            _show(axis, dwi[:, :, k], [(dwi_infarct[:, :, k], "yellow")], _limits(dwi), f"DWI b1000 slice {k}",
                  dwi_spacing[1] / dwi_spacing[0])
    figure.suptitle(title, fontsize=9)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.88 if rows == 1 else 0.92, wspace=0.04, hspace=0.12)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    return target
