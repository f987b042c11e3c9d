"""New subjects' predictions as BIDS derivatives, checked by the BIDS validator from the package registry."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from conftest import BIN
from thrombus.inference.bids import stem, validator_summary, write_description, write_subject
from thrombus.inference.measure import measurements
from thrombus.io import write_json
from thrombus.samples import read_sheet


def validate(root: Path) -> dict:
    """The validator's errors for a dataset (`bids-validator-deno`, installed with the test extra)."""
    validator = BIN / "bids-validator-deno"
    if not validator.exists():
        found = shutil.which("bids-validator-deno")
        if found is None:
            pytest.skip("bids-validator-deno is not installed (pip install -e '.[test]')")
        validator = Path(found)
    done = subprocess.run([str(validator), "--format", "json", str(root)], capture_output=True, text=True, timeout=300)
    return validator_summary(done.stdout)


def test_derivatives_of_two_subjects_validate(tiny_cohort: Path, tmp_path: Path) -> None:
    """Each positive subject's truth stands in for a prediction: mask, probability, readout in the sidecar."""
    sheet = read_sheet(tiny_cohort / "samples.tsv")
    root = tmp_path / "bids"
    write_description(root, "test")
    rows = sheet[sheet["thrombus"] == "1"].head(2)
    for row in rows.itertuples():
        image = nib.load(row.thrombus_mask)
        mask = np.asarray(image.dataobj) > 0
        nib.save(nib.Nifti1Image(mask.astype(np.float32) * 0.9, image.affine), tmp_path / f"{row.subject}_p.nii.gz")
        readout = write_json(tmp_path / f"{row.subject}.json",
                             measurements(row.subject, row.center, mask, mask * 0.9, image.affine, None, ["susceptibility"]))
        reference = "swi" if row.swi else "t2star"
        write_subject(root, row.subject, row.center, reference, row.thrombus_mask, tmp_path / f"{row.subject}_p.nii.gz", readout)
    assert validate(root)["errors"] == []
    first = rows.iloc[0]
    name = stem(first["subject"], "swi" if first["swi"] else "t2star")
    sidecar = json.loads((root / f"sub-{first['subject']}" / "anat" / f"{name}_mask.json").read_text())
    assert sidecar["ThrombusMeasurements"]["thrombus"]["side"] in ("left", "right", "midline")
    assert sidecar["SpatialReference"] and sidecar["Center"] == first["center"]


def test_the_validator_is_not_a_rubber_stamp(tmp_path: Path) -> None:
    """A derivative without its SpatialReference is an error: the check above can fail."""
    write_description(tmp_path, "test")
    folder = tmp_path / "sub-N001" / "anat"
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), folder / f"{stem('N001', 'swi')}_mask.nii.gz")
    (folder / f"{stem('N001', 'swi')}_mask.json").write_text("{}")
    assert validate(tmp_path)["errors"]
