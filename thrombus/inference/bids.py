"""New subjects' predictions as a BIDS-Derivatives dataset (`results/bids/`).

Groups that keep their imaging in BIDS want results in the same shape, next to their raw dataset, where
their own tools find them by entity instead of by our folder names. Each subject gets its mask and its
probability map in the space of its reference sequence (`space-<reference>`, a label of our own, so each
file's sidecar says which image it is aligned to in `SpatialReference`, as BIDS requires), and the mask's
sidecar carries the thrombus readout. The center, which BIDS has no entity for, goes into the sidecars.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from thrombus.io import PathLike, atomic_path, read_json, write_json

#: The BIDS version the files follow (checked with the BIDS validator in the tests).
BIDS_VERSION = "1.10.0"


def dataset_description(version: str) -> dict[str, Any]:
    return {
        "Name": "thrombus: thrombus masks and probability maps of new subjects",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "thrombus",
            "Version": version,
            "Description": "UpAttLLSTM with gradual modality dropout (arXiv 2604.00817), Snakemake workflow",
        }],
        "SourceDatasets": [{"Description": "the DICOM series of the sample sheet, converted with dcm2niix"}],
    }


def write_description(root: PathLike, version: str) -> Path:
    return write_json(Path(root) / "dataset_description.json", dataset_description(version))


def stem(subject: str, reference: str) -> str:
    return f"sub-{subject}_space-{reference}_label-thrombus"


def _copy(source: PathLike, target: Path) -> Path:
    with atomic_path(target, suffix=".nii.gz") as tmp:
        shutil.copyfile(source, tmp)
    return target


def write_subject(
    root: PathLike, subject: str, center: str, reference: str, mask: PathLike, probability: PathLike,
    measurements: PathLike,
) -> list[Path]:
    """The subject's `_mask` and `_probseg` images with their sidecars under `sub-<subject>/anat/`."""
    folder = Path(root) / f"sub-{subject}" / "anat"
    name = stem(subject, reference)
    aligned = f"the subject's {reference} image, as converted from DICOM (center {center})"
    readout = read_json(measurements)
    common = {"SpatialReference": aligned, "Center": center}
    written = [
        _copy(mask, folder / f"{name}_mask.nii.gz"),
        write_json(folder / f"{name}_mask.json", {
            **common, "Type": "Lesion",
            "Description": "thrombus mask: the network's probability thresholded and size-filtered as calibrated",
            "Sources": [f"bids::sub-{subject}/anat/{name}_probseg.nii.gz"],
            "ThrombusMeasurements": {k: readout[k] for k in ("thrombus", "components", "sequences_used", "units")},
        }),
        _copy(probability, folder / f"{name}_probseg.nii.gz"),
        write_json(folder / f"{name}_probseg.json", {**common, "Description": "thrombus probability per voxel"}),
    ]
    return written


def validator_summary(report: str) -> dict[str, Any]:
    """Errors of a `bids-validator-deno --json` report (for tests and logs)."""
    issues = json.loads(report).get("issues", {}).get("issues", [])
    return {"errors": [i for i in issues if i.get("severity") == "error"]}
