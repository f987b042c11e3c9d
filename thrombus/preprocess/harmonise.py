"""Intensity harmonisation and the model-ready stack.

Centers differ in scanner, field strength, scaling and bias field, so raw intensities mean nothing
across them. Each sequence is normalised inside the brain (robust percentile clipping, then z-score:
nnU-Net's choice for MRI), optionally after histogram standardisation learned on the training centers
(Nyul & Udupa), and the channels are stacked on the reference grid with an availability vector that
says which channels hold a real sequence and which are zero-filled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Percentiles of the Nyul-Udupa landmarks (inside the brain).
LANDMARK_PERCENTILES: tuple[float, ...] = (1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 99)


@dataclass(frozen=True)
class NormaliseOptions:
    """Robust z-scoring inside the brain mask."""

    low_percentile: float = 0.5
    high_percentile: float = 99.5
    method: str = "zscore"  # zscore | histogram


def robust_zscore(data: np.ndarray, mask: np.ndarray, options: NormaliseOptions) -> tuple[np.ndarray, dict[str, float]]:
    """Clip to brain percentiles, z-score with brain statistics, zero outside the brain.

    Clipping first keeps a few extreme voxels (vessels on FLAIR, a calcification on SWI) from
    inflating the standard deviation and squashing the contrast everywhere else.
    """
    brain = data[mask]
    if brain.size == 0:
        raise ValueError("the brain mask is empty")
    low, high = np.percentile(brain, [options.low_percentile, options.high_percentile])
    clipped = np.clip(data, low, high)
    mean = float(clipped[mask].mean())
    std = float(clipped[mask].std())
    if std <= 0:
        raise ValueError("the image is constant inside the brain")
    out = np.where(mask, (clipped - mean) / std, 0.0).astype(np.float32)
    return out, {"p_low": float(low), "p_high": float(high), "mean": mean, "std": std}


def landmarks(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The intensity percentiles of one image inside its brain mask."""
    return np.percentile(data[mask], LANDMARK_PERCENTILES).astype(np.float64)


def learn_standard_scale(images: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean landmarks of the training images after mapping each to [0, 100] (Nyul & Udupa's standard scale)."""
    if not images:
        raise ValueError("histogram standardisation needs at least one training image")
    mapped = []
    for data, mask in images:
        marks = landmarks(data, mask)
        span = marks[-1] - marks[0]
        mapped.append((marks - marks[0]) / (span if span > 0 else 1.0) * 100.0)
    return np.mean(mapped, axis=0)


def standardise_histogram(data: np.ndarray, mask: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Piecewise-linear map of the image's landmarks onto the learned standard scale."""
    marks = landmarks(data, mask)
    marks = np.maximum.accumulate(marks + np.arange(marks.size) * 1e-6)  # strictly increasing for interp
    return np.interp(data, marks, scale, left=scale[0], right=scale[-1]).astype(np.float32)


@dataclass
class Stack:
    """The model's input for one subject: channels on the reference grid and what each one is."""

    data: np.ndarray  # (X, Y, Z, C) float32
    channels: list[str]
    sources: dict[str, str | None]  # channel -> sequence used (None when zero-filled)
    availability: list[int]
    stats: dict[str, dict[str, float]] = field(default_factory=dict)


def choose_sources(channels: Mapping[str, Sequence[str]], usable: Sequence[str]) -> dict[str, str | None]:
    """For each model channel, the first of its sequences the subject has (SWI, else T2*, say)."""
    return {name: next((s for s in candidates if s in usable), None) for name, candidates in channels.items()}


def build_stack(
    images: Mapping[str, np.ndarray],
    mask: np.ndarray,
    channels: Mapping[str, Sequence[str]],
    options: NormaliseOptions,
    scales: Mapping[str, np.ndarray] | None = None,
) -> Stack:
    """Normalise the sequences a subject has and place them in the model's channel order."""
    sources = choose_sources(channels, list(images))
    shape = mask.shape
    data = np.zeros((*shape, len(channels)), dtype=np.float32)
    stats: dict[str, dict[str, float]] = {}
    for index, (channel, sequence) in enumerate(sources.items()):
        if sequence is None:
            continue
        image = images[sequence]
        if image.shape != shape:
            raise ValueError(f"{sequence} is {image.shape} but the reference grid is {shape}")
        if options.method == "histogram":
            if not scales or channel not in scales:
                raise ValueError(f"no learned histogram scale for channel {channel}")
            image = standardise_histogram(image, mask, np.asarray(scales[channel]))
        data[..., index], stats[channel] = robust_zscore(image, mask, options)
    availability = [int(s is not None) for s in sources.values()]
    return Stack(data, list(channels), sources, availability, stats)


def fingerprint(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A center's intensity and geometry fingerprint from its subjects' harmonisation records.

    nnU-Net's dataset fingerprint is the model: per channel, how many subjects have it, and the
    spread of the raw intensity statistics inside the brain, so a center whose scaling differs
    stands out before training.
    """
    channels: dict[str, dict[str, list[float]]] = {}
    counts: dict[str, int] = {}
    for record in records:
        for channel, values in record.get("stats", {}).items():
            counts[channel] = counts.get(channel, 0) + 1
            for key, value in values.items():
                channels.setdefault(channel, {}).setdefault(key, []).append(float(value))
    summary = {
        channel: {
            key: {"median": float(np.median(v)), "min": float(np.min(v)), "max": float(np.max(v))}
            for key, v in sorted(values.items())
        }
        for channel, values in sorted(channels.items())
    }
    return {"n_subjects": len(records), "available": dict(sorted(counts.items())), "intensity": summary}


def learn_scales(
    subjects: Sequence[Mapping[str, Any]], channels: Mapping[str, Sequence[str]], out: Path
) -> dict[str, list[float]]:
    """Learn one standard histogram scale per channel from training subjects, and write it as JSON.

    Each subject is {"brain_mask": path, "images": {sequence: path on the reference grid}}; a channel
    takes, per subject, the same sequence the stack would (the first of its list that is present).
    """
    import nibabel as nib

    from thrombus.io import write_json

    pairs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {name: [] for name in channels}
    for subject in subjects:
        mask = np.asarray(nib.load(str(subject["brain_mask"])).dataobj) > 0
        for channel, sequence in choose_sources(channels, list(subject["images"])).items():
            if sequence is not None:
                data = np.asarray(nib.load(str(subject["images"][sequence])).dataobj, dtype=np.float32)
                pairs[channel].append((data, mask))
    scales = {channel: learn_standard_scale(items).round(6).tolist() for channel, items in pairs.items() if items}
    write_json(out, {"percentiles": list(LANDMARK_PERCENTILES), "n_subjects": len(subjects), "scales": scales})
    return scales


def harmonise_subject(
    reference: Path,
    reference_sequence: str,
    registered: Mapping[str, Path],
    register_records: Mapping[str, Path],
    brain_mask: Path,
    channels: Mapping[str, Sequence[str]],
    options: NormaliseOptions,
    out_stack: Path,
    out_json: Path,
    subject: str,
    center: str,
    record_path: Path | None = None,
    scales: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The `harmonise` step: the normalised channel stack on the reference grid, and what it holds.

    A sequence whose registration QC marked unusable is left out (its channel zero-filled, its
    availability 0) and listed under `excluded`, so a misaligned image never reaches the model.
    """
    import nibabel as nib

    from thrombus.io import read_json, write_json
    from thrombus.nifti import load_volume, save_array
    from thrombus.provenance import StepRecord

    what = f"center {center}, subject {subject}"
    record = StepRecord("harmonise", subject=subject, center=center)
    ref_data, ref_image = load_volume(reference, f"{what}, {reference_sequence}")
    mask = np.asarray(nib.load(str(brain_mask)).dataobj) > 0
    if mask.shape != ref_data.shape:
        raise ValueError(f"{what}: brain mask {brain_mask} is {mask.shape}, the reference grid is {ref_data.shape}")
    images = {reference_sequence: ref_data}
    excluded = {}
    for sequence, path in registered.items():
        qc = read_json(register_records[sequence]).get("qc", {})
        if not qc.get("usable", True):
            excluded[sequence] = "; ".join(qc.get("flags", [])) or "registration QC failed"
            continue
        images[sequence], _ = load_volume(path, f"{what}, {sequence}")
    stack = build_stack(images, mask, channels, options, {k: np.asarray(v) for k, v in (scales or {}).items()})
    save_array(stack.data, ref_image.affine, out_stack, dtype=np.float32)
    summary = {
        "subject": subject, "center": center, "reference": reference_sequence,
        "channels": stack.channels, "sources": stack.sources, "availability": stack.availability,
        "excluded": excluded, "shape": list(ref_data.shape),
        "spacing_mm": [round(float(z), 4) for z in ref_image.header.get_zooms()[:3]],
        "brain_ml": round(float(mask.sum()) * float(np.prod(ref_image.header.get_zooms()[:3])) / 1000.0, 2),
        "stats": stack.stats,
    }
    write_json(out_json, summary)
    record.inputs = {"reference": str(reference), "brain_mask": str(brain_mask), **{k: str(v) for k, v in registered.items()}}
    record.params = {"channels": {k: list(v) for k, v in channels.items()}, "low_percentile": options.low_percentile,
                     "high_percentile": options.high_percentile, "method": options.method}
    record.outputs = {"stack": str(out_stack), "summary": str(out_json)}
    record.qc = {"availability": dict(zip(stack.channels, stack.availability)), "excluded": excluded}
    if record_path is not None:
        record.write(record_path)
    return summary
