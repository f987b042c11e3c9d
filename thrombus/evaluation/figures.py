"""The evaluation's pictures: metric distributions per center, and best / median / worst cases overlaid.

Means hide the shape of a small-target distribution (a cluster of zeros next to good cases); box plots
with every case drawn show it, and three overlays show what a Dice of 0.3 actually looks like.
matplotlib is imported lazily (Agg backend) so that importing the package stays cheap.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from thrombus.io import PathLike, atomic_path

log = logging.getLogger(__name__)

#: Half-width (voxels) of the zoomed crop around the thrombus.
CROP_HALF = 16

_LABELS = {"dice": "Dice", "hd95_mm": "HD95 (mm)", "volume_error_ml": "volume error (ml)", "length_error_mm": "length error (mm)"}


@dataclass(frozen=True)
class OverlayCase:
    """One case to draw: `image` is one 3-D channel (e.g. susceptibility), last axis = axial slices."""

    label: str
    image: np.ndarray
    truth: np.ndarray | None
    prediction: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    #: The grid's voxel-to-scanner affine: with it, panels say which side is the patient's left and where the
    #: slice lies (without it, a left clot drawn on the screen's right would not say so).
    affine: np.ndarray | None = None
    #: Where the slice and zoom go when there is no truth: e.g. the largest predicted component.
    focus: np.ndarray | None = None


def in_display_orientation(case: OverlayCase) -> OverlayCase:
    """The case turned to the pictures' one layout (`nifti.DISPLAY_AXES`), its affine and spacing with it; a
    case without an affine is drawn as it is."""
    if case.affine is None:
        return case
    from thrombus.nifti import for_display

    (image, truth, prediction, focus), affine = for_display([case.image, case.truth, case.prediction, case.focus], case.affine)
    if affine is case.affine:
        return case
    spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    return dataclasses.replace(case, image=image, truth=truth, prediction=prediction, focus=focus, affine=affine, spacing=spacing)


def _mark_sides(ax, case: OverlayCase, z: int) -> None:  # type: ignore[no-untyped-def]
    """Patient directions at the panel's edges, and the slice's position along the scanner's axis."""
    if case.affine is None:
        return
    from thrombus.nifti import mark_sides

    mark_sides(ax, case.affine)
    position = case.affine[:3, :3] @ np.array([0.0, 0.0, float(z)]) + case.affine[:3, 3]
    axis = int(np.argmax(np.abs(case.affine[:3, 2])))
    ax.text(0.98, 0.02, f"{'xyz'[axis]} = {position[axis]:.0f} mm", ha="right", va="bottom",
            transform=ax.transAxes, color="white", fontsize=6)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, target: PathLike) -> Path:  # type: ignore[no-untyped-def]
    """PNG without a version string, so the same data give the same bytes across matplotlib versions."""
    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, metadata={"Software": None})
    return Path(target)


def center_boxplots(
    records: pd.DataFrame,
    target: PathLike,
    metrics: Sequence[str] = ("dice", "hd95_mm"),
    group: str = "center",
) -> Path:
    """One panel per metric: a box per group value, every case drawn as a point (penalised HD95 hollow)."""
    plt = _pyplot()
    values = sorted(records[group].astype(str).unique())
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics) + 0.5, 3.4), squeeze=False)
    jitter = np.random.default_rng(0)
    for ax, metric in zip(axes[0], metrics):
        data = [pd.to_numeric(records.loc[records[group].astype(str) == v, metric], errors="coerce") for v in values]
        kept = [series.dropna() for series in data]
        ax.boxplot([s.to_numpy() for s in kept], showfliers=False, widths=0.5)
        ax.set_xticks(range(1, len(values) + 1), values)
        for i, series in enumerate(kept, start=1):
            x = i + jitter.uniform(-0.12, 0.12, size=len(series))
            penalised = np.zeros(len(series), dtype=bool)
            if metric == "hd95_mm" and "hd95_penalised" in records.columns:
                penalised = (pd.to_numeric(records.loc[series.index, "hd95_penalised"], errors="coerce") == 1).to_numpy()
            ax.scatter(x[~penalised], series.to_numpy()[~penalised], s=12, color="tab:blue", alpha=0.8, zorder=3)
            if penalised.any():
                ax.scatter(x[penalised], series.to_numpy()[penalised], s=16, facecolors="none", edgecolors="tab:red", zorder=3, label="penalty (empty prediction)")
        ax.set_title(_LABELS.get(metric, metric), fontsize=10)
        ax.set_xlabel(group)
        if metric == "hd95_mm" and ax.get_legend_handles_labels()[0]:
            handles, labels = ax.get_legend_handles_labels()
            ax.legend(handles[:1], labels[:1], fontsize=7, loc="upper right")
    fig.tight_layout()
    path = _save(fig, target)
    plt.close(fig)
    return path


def _axial_slice(case: OverlayCase) -> int:
    """Through the truth's centroid, else the focus's, else the prediction's, else the middle of the volume."""
    for mask in (case.truth, case.focus, case.prediction):
        if mask is not None and np.any(mask):
            return int(round(float(np.argwhere(mask)[:, 2].mean())))
    return case.image.shape[2] // 2


def _crop_window(case: OverlayCase, z: int) -> tuple[slice, slice]:
    """A square window around the in-slice centre of the masks (the whole slice centre if none)."""
    centre = np.asarray(case.image.shape[:2], dtype=float) / 2
    for mask in (case.truth, case.focus, case.prediction):
        if mask is not None and np.any(mask[:, :, z]):
            centre = np.argwhere(mask[:, :, z]).mean(axis=0)
            break
    windows = []
    for axis in range(2):
        size = case.image.shape[axis]
        start = int(np.clip(round(centre[axis]) - CROP_HALF, 0, max(0, size - 2 * CROP_HALF)))
        windows.append(slice(start, min(size, start + 2 * CROP_HALF)))
    return windows[0], windows[1]


def _draw(ax, case: OverlayCase, z: int, window: tuple[slice, slice]) -> None:  # type: ignore[no-untyped-def]
    image = case.image[window[0], window[1], z]
    lo, hi = np.percentile(case.image[:, :, z], (1, 99)) if case.image[:, :, z].size else (0.0, 1.0)
    aspect = case.spacing[1] / case.spacing[0]
    ax.imshow(image.T, cmap="gray", origin="lower", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect)
    for mask, colour in ((case.truth, "tab:green"), (case.prediction, "tab:red")):
        if mask is None:
            continue
        part = np.asarray(mask[window[0], window[1], z], dtype=float)
        if part.any() and not part.all():
            ax.contour(part.T, levels=[0.5], colors=colour, linewidths=0.9)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_cases(cases: Sequence[OverlayCase], target: PathLike, title: str) -> Path:
    """One row per case: the full axial slice and a zoomed crop, truth in green, prediction in red."""
    if not cases:
        raise ValueError(f"overlay_cases: no cases to draw for {target}")
    plt = _pyplot()
    fig, axes = plt.subplots(len(cases), 2, figsize=(6.0, 3.0 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        if (case.truth is not None and case.truth.shape != case.image.shape) or case.prediction.shape != case.image.shape:
            raise ValueError(f"overlay_cases: {case.label}: image, truth and prediction must share one grid")
        case = in_display_orientation(case)
        z = _axial_slice(case)
        full = (slice(None), slice(None))
        _draw(axes[row, 0], case, z, full)
        _draw(axes[row, 1], case, z, _crop_window(case, z))
        _mark_sides(axes[row, 0], case, z)
        axes[row, 0].set_title(f"{case.label}, slice {z}", fontsize=9, loc="left")
        axes[row, 1].set_title("zoom (truth green, prediction red)" if case.truth is not None else "zoom (prediction red)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = _save(fig, target)
    plt.close(fig)
    return path


def pick_best_median_worst(
    records: pd.DataFrame, key: str = "dice", higher_is_better: bool = True
) -> list[tuple[str, str]]:
    """(role, subject) for the best, median and worst positive case by `key`, ties broken by subject.

    Cases are ranked best first (value, then subject name), so the same records always give the same
    three. With fewer than three positives each subject appears once: one gives [best], two give
    [best, worst]. Cases without a value for `key` are not ranked.
    """
    frame = records[pd.to_numeric(records["positive"], errors="coerce") == 1].copy()
    frame["_value"] = pd.to_numeric(frame[key], errors="coerce")
    frame = frame.dropna(subset=["_value"])
    if frame.empty:
        return []
    frame["_subject"] = frame["subject"].astype(str)
    frame["_rank"] = -frame["_value"] if higher_is_better else frame["_value"]
    ordered = frame.sort_values(["_rank", "_subject"], kind="mergesort")["_subject"].tolist()
    picks = [("best", ordered[0]), ("median", ordered[(len(ordered) - 1) // 2]), ("worst", ordered[-1])]
    chosen: list[tuple[str, str]] = []
    for role, subject in picks:
        if subject not in {s for _, s in chosen}:
            chosen.append((role, subject))
    return chosen


def prediction_overview(stack: PathLike, mask: PathLike, target: PathLike, title: str) -> Path:
    """A new subject's prediction on its susceptibility channel: the slice through the largest component
    (the reported thrombus), the whole slice with the patient's sides marked and a zoom."""
    import nibabel as nib
    from scipy import ndimage

    image = nib.load(str(stack))
    predicted = np.asarray(nib.load(str(mask)).dataobj) > 0
    labels, count = ndimage.label(predicted, structure=np.ones((3, 3, 3), dtype=bool))
    focus = None
    if count:
        sizes = np.bincount(labels.ravel())[1:]
        focus = labels == int(np.argmax(sizes)) + 1
    found = f"{count} component(s)" if count else "nothing found"
    case = OverlayCase(
        label=f"{title}: {found}", image=np.asarray(image.dataobj[..., 0], dtype=np.float32), truth=None,
        prediction=predicted, spacing=tuple(float(z) for z in image.header.get_zooms()[:3]), affine=image.affine,
        focus=focus,
    )
    return overlay_cases([case], target, "prediction (red) on the susceptibility channel")
