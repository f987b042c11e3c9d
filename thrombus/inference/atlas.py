"""Where a thrombus sits: its position in MNI space and the arterial segment it lies in.

Clinicians name a clot by its segment (ICA, M1, M2, basilar...), since that decides on thrombectomy. The
subject's brain is brought to the MNI152 2009a brain (nilearn ships it, so nothing is fetched) by an
affine registration of the two brain masks: masks have the same contrast whatever the sequences, and a
12-parameter fit of the brain outline places deep structures within a few millimetres. The centroid of
each component is then mapped to MNI and given the nearest arterial centreline.

The centrelines are the project's own model of the main arteries in MNI millimetres
(`thrombus/synth/vessels.py`: ICA, M1, M2 trunks, A1/A2, vertebral, basilar, PCA; checked on overlays of
the template, MIT-licensed like the project), not a published vascular atlas: the segment is a
label for orientation, and a centroid further than `MAX_DISTANCE_MM` from every centreline gets none.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thrombus.io import PathLike

log = logging.getLogger(__name__)

#: A centroid further than this (mm, in MNI space) from every centreline is not given a segment.
MAX_DISTANCE_MM = 10.0


def register_to_mni(brain: np.ndarray, affine: np.ndarray, out_transform: PathLike, threads: int = 1,
                    seed: int = 1) -> Path:
    """Affine transform of the subject's brain mask onto the MNI152 brain mask (saved as an ANTs .mat)."""
    from nilearn.datasets import load_mni152_brain_mask

    from thrombus.preprocess.register import import_ants, save_transform

    import tempfile

    import nibabel as nib

    ants = import_ants(threads, deterministic=True, seed=seed)
    template = load_mni152_brain_mask(resolution=2)
    fixed = ants.from_nibabel_nifti(nib.Nifti1Image(np.asarray(template.dataobj, dtype=np.float32), template.affine))
    moving = ants.from_nibabel_nifti(nib.Nifti1Image(brain.astype(np.float32), affine))
    with tempfile.TemporaryDirectory(prefix="thrombus-mni-") as work:
        result = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine", aff_metric="meansquares",
                                   aff_iterations=(200, 100, 50), aff_shrink_factors=(4, 2, 1),
                                   aff_smoothing_sigmas=(2.0, 1.0, 0.0), outprefix=f"{work}/mni_", verbose=False)
        return save_transform(Path(result["fwdtransforms"][0]), out_transform)


def to_mni(points_ras: np.ndarray, transform: PathLike) -> np.ndarray:
    """Subject scanner RAS points (n, 3) to MNI mm through the registration's transform.

    ANTs maps points the opposite way to images and works in LPS: the transform that pulls the subject onto
    MNI is inverted for points, and x, y change sign on the way in and out.
    """
    import pandas as pd

    from thrombus.preprocess.register import import_ants

    ants = import_ants(1)
    lps = pd.DataFrame(np.asarray(points_ras, dtype=float) * [-1.0, -1.0, 1.0], columns=["x", "y", "z"])
    moved = ants.apply_transforms_to_points(3, lps, [str(transform)], whichtoinvert=[True])
    return moved[["x", "y", "z"]].to_numpy() * [-1.0, -1.0, 1.0]


def segment_of(point_mni: Sequence[float]) -> tuple[str | None, float]:
    """The nearest arterial centreline's segment ("M1_L", "BA", ...) and its distance (mm); None beyond reach."""
    from thrombus.synth.vessels import arteries

    best, distance = None, float("inf")
    point = np.asarray(point_mni, dtype=float)
    for name, tube in arteries().items():
        dense = tube.dense(0.5).points
        d = float(np.min(np.linalg.norm(dense - point, axis=1)))
        if d < distance:
            best, distance = name, d
    return (best if distance <= MAX_DISTANCE_MM else None), distance


def locate(readout: dict[str, Any], transform: PathLike) -> dict[str, Any]:
    """The readout with each component's MNI centroid and arterial segment added."""
    components = readout.get("components", [])
    if components:
        centroids = to_mni(np.array([c["centroid_scanner_ras_mm"] for c in components]), transform)
        for component, centroid in zip(components, centroids):
            segment, distance = segment_of(centroid)
            component["centroid_mni_mm"] = [round(float(v), 1) for v in centroid]
            component["segment"] = segment
            component["segment_distance_mm"] = round(distance, 1)
    if readout.get("thrombus") is not None and components:
        readout["thrombus"] = components[0]
    readout["not_measured"] = None
    readout["atlas"] = ("MNI152 2009a brain mask (nilearn), affine registration of brain masks; arterial centrelines "
                        "of thrombus/synth/vessels.py (the project's model, not a published atlas)")
    return readout


def measure_subject(
    subject: str, center: str, mask: PathLike, probability: PathLike, stack: PathLike, record: PathLike,
    out: PathLike, out_transform: PathLike, threads: int = 1, seed: int = 1,
) -> dict[str, Any]:
    """The `measure` step: a new subject's readout (`measure.measurements`) placed in MNI space."""
    import nibabel as nib

    from thrombus.inference.measure import measurements
    from thrombus.io import read_json, write_json

    image = nib.load(str(mask))
    stacked = nib.load(str(stack))
    brain = np.any(np.asarray(stacked.dataobj) != 0, axis=-1)
    used = [name for name, available in read_json(record)["availability"].items() if available]
    readout = measurements(subject, center, np.asarray(image.dataobj) > 0, np.asarray(nib.load(str(probability)).dataobj),
                           image.affine, brain, used)
    transform = register_to_mni(brain, stacked.affine, out_transform, threads, seed)
    readout = locate(readout, transform)
    write_json(out, readout)
    found = readout["thrombus"]
    log.info("center %s, subject %s: %s", center, subject,
             f"thrombus {found['volume_ml']} ml, {found['length_mm']} mm, {found['side']}, segment {found['segment']}"
             if found else "no thrombus found")
    return readout
