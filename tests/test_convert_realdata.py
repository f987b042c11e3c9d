"""Real scanner DICOM (Siemens XA30 enhanced, Philips Achieva classic) converts to the volumes the
real-data README describes, and what dcm2niix itself reports matches dcm2niix's own QA references."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from thrombus.convert import ConvertRequest, convert_sequence, dcm2niix
from thrombus.convert.series import single_series

pytestmark = pytest.mark.realdata

SIEMENS = "dicom/siemens_xa30_prisma_enhanced"
PHILIPS = "dicom/philips_achieva_dti_classic_vanderbilt"


def _convert(realdata: Path, tmp_path: Path, folder: str, series: str, sequence: str) -> tuple[nib.Nifti1Image, dict, dict]:
    request = ConvertRequest("REAL1", "X", sequence, realdata / folder, series)
    record = convert_sequence(request, tmp_path / f"{sequence}.nii.gz", tmp_path / f"{sequence}.json", tmp_path / "log.json")
    sidecar = json.loads((tmp_path / f"{sequence}.json").read_text())
    return nib.load(tmp_path / f"{sequence}.nii.gz"), sidecar, record


@pytest.mark.parametrize(
    ("series", "sequence", "shape", "spacing"),
    [
        ("5_anat-T1w_acq-tfl", "t1", (96, 128, 128), (2.0, 2.0, 2.0)),
        ("10_DWI_dir80_PA", "dwi", (72, 72, 39), (3.0, 3.0, 3.0)),
        ("11_DWI_dir80_PA", "adc", (72, 72, 39), (3.0, 3.0, 3.0)),
    ],
)
def test_siemens_enhanced(realdata: Path, tmp_path: Path, series: str, sequence: str, shape: tuple, spacing: tuple) -> None:
    image, sidecar, record = _convert(realdata, tmp_path, SIEMENS, series, sequence)
    assert image.shape == shape
    assert np.allclose(image.header.get_zooms()[:3], spacing, atol=1e-3)
    assert record["inputs"]["enhanced"] is True
    assert record["versions"]["dcm2niix"].startswith("v1.0.")
    assert len(record["inputs"]["sha256"]) == 64
    assert sidecar["Manufacturer"] == "Siemens"
    assert sidecar["ThrombusConversion"]["sequence"] == sequence


def test_siemens_dwi_matches_dcm2niix_qa_reference(realdata: Path, tmp_path: Path) -> None:
    """b=0 + 20 x b=2500 in a 72x72x39 grid, b-values as in dcm2niix's own QA reference files."""
    series = single_series(realdata / SIEMENS / "10_DWI_dir80_PA", "real Siemens DWI")
    outputs, _ = dcm2niix.run(series, tmp_path)
    assert [o.shape for o in outputs] == [(72, 72, 39, 21)]
    reference = (realdata / SIEMENS / "_dcm_qa_Ref" / "10_DWI_dir80_PA.bval").read_text().split()
    assert outputs[0].bvals == tuple(float(b) for b in reference)


def test_siemens_dwi_is_the_trace_of_the_b2500_volumes(realdata: Path, tmp_path: Path) -> None:
    image, sidecar, record = _convert(realdata, tmp_path, SIEMENS, "10_DWI_dir80_PA", "dwi")
    assert sidecar["DiffusionBValue"] == 2500
    assert "geometric mean of 20 volume(s) at b=2500" in record["qc"]["note"]


def test_philips_classic_dti_and_its_split_trace(realdata: Path, tmp_path: Path) -> None:
    """680 single-slice files: b=0 + 15 x b=2000 (80x80x40 @3 mm); dcm2niix moves the scanner's
    derived trace volume into a second file, which the DWI conversion must not take."""
    series = single_series(realdata / PHILIPS / "601_WIP_dti_ax", "real Philips DTI")
    assert len(series.files) == 680 and not series.enhanced
    outputs, console = dcm2niix.run(series, tmp_path / "raw")
    shapes = {o.name: o.shape for o in outputs}
    main = [o for o in outputs if o.bvals is not None]
    assert len(main) == 1 and main[0].shape == (80, 80, 40, 16)
    assert main[0].bvals == (0.0,) + (2000.0,) * 15
    assert any(name.endswith("_ADC") for name in shapes), shapes
    image, sidecar, record = _convert(realdata, tmp_path, PHILIPS, "601_WIP_dti_ax", "dwi")
    assert image.shape == (80, 80, 40)
    assert np.allclose(image.header.get_zooms(), (3.0, 3.0, 3.0), atol=1e-3)
    assert sidecar["Manufacturer"] == "Philips"


def test_philips_adc_falls_back_to_computing_it(realdata: Path, tmp_path: Path) -> None:
    image, _, record = _convert(realdata, tmp_path, PHILIPS, "601_WIP_dti_ax", "adc")
    assert "fallback: ADC computed here" in record["qc"]["note"]
    data = np.asarray(image.dataobj)
    brain = data[data > 0]
    # b=2000 brain ADC of healthy tissue: a few hundred to ~1000 x 1e-6 mm^2/s
    assert 300 < float(np.median(brain)) < 1200
