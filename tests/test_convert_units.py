"""The small pure pieces of conversion: diffusion maps and identifier scrubbing."""

from __future__ import annotations

import numpy as np
import pytest

from thrombus.convert.diffusion import adc_map, highest_b, trace_image
from thrombus.convert.sidecar import REMOVED, scrub_sidecar, scrub_text


def _dwi(adc: np.ndarray, bvals: tuple[float, ...], s0: float = 1000.0) -> np.ndarray:
    return np.stack([s0 * np.exp(-b * adc * 1e-6) for b in bvals], axis=-1).astype(np.float32)


def test_adc_is_recovered_from_b0_and_b1000() -> None:
    truth = np.full((4, 4, 3), 800.0)
    truth[1:3, 1:3, 1] = 450.0  # an infarct-like restriction
    adc, bvalue = adc_map(_dwi(truth, (0.0, 1000.0, 1000.0, 1000.0)), (0.0, 1000.0, 1000.0, 1000.0))
    assert bvalue == 1000.0
    np.testing.assert_allclose(adc, truth, rtol=1e-3)


def test_trace_is_the_geometric_mean_over_directions() -> None:
    data = np.ones((2, 2, 2, 4), dtype=np.float32)
    data[..., 1], data[..., 2], data[..., 3] = 2.0, 8.0, 4.0
    trace, bvalue, count = trace_image(data, (0.0, 995.0, 1000.0, 1005.0))
    assert (bvalue, count) == (1000.0, 3)
    np.testing.assert_allclose(trace, 4.0, rtol=1e-6)


def test_highest_b_rounds_scanner_jitter() -> None:
    assert highest_b((5.0, 998.0, 1002.0, 500.0)) == (1000.0, [1, 2])


@pytest.mark.bad_input
def test_no_diffusion_weighting_is_an_error() -> None:
    with pytest.raises(ValueError, match="no diffusion-weighted volume"):
        trace_image(np.ones((2, 2, 2, 2)), (0.0, 0.0))


def test_sidecar_loses_identifying_fields_and_values() -> None:
    sidecar = {
        "PatientName": "SYNTH^JANE", "PatientBirthDate": "19500101", "InstitutionName": "General",
        "ImageComments": "scan of Jane ok", "ProtocolName": "ep2d_diff", "EchoTime": 0.08,
        "Nested": ["FAKEID-123 here", "fine"],
    }
    scrubbed = scrub_sidecar(sidecar, {"SYNTH^JANE", "JANE", "FAKEID-123"})
    assert "PatientName" not in scrubbed and "InstitutionName" not in scrubbed
    assert scrubbed["ImageComments"] == REMOVED
    assert scrubbed["Nested"] == [REMOVED, "fine"]
    assert scrubbed["ProtocolName"] == "ep2d_diff" and scrubbed["EchoTime"] == 0.08


def test_short_identifiers_do_not_wipe_ordinary_words() -> None:
    assert scrub_sidecar({"ProtocolName": "t1 mprage"}, {"t1"}) == {"ProtocolName": "t1 mprage"}
    assert scrub_text("Convert 20 DICOM of SYNTH^JANE", {"SYNTH^JANE"}) == f"Convert 20 DICOM of {REMOVED}"


def test_duplicate_scans_are_grouped_across_subjects_only(tmp_path: Path) -> None:
    """A series under two pseudonyms is one row with its evidence; a derived ADC sharing its own DWI's
    series UID is not a duplicate; a scan of one subject alone gives an empty table with its header."""
    import json

    from thrombus.convert.duplicates import find_duplicates, write_duplicates

    def sidecar(subject: str, center: str, sequence: str, uid: str, voxels: str) -> None:
        folder = tmp_path / center / subject
        folder.mkdir(parents=True, exist_ok=True)
        block = {"subject": subject, "center": center, "sequence": sequence, "series_uid_sha256": uid, "voxels_sha256": voxels}
        (folder / f"{sequence}.json").write_text(json.dumps({"ThrombusConversion": block}))

    sidecar("A001", "A", "dwi", "u1", "v1")
    sidecar("A001", "A", "adc", "u1", "v2")   # derived from its own DWI: same UID, other voxels
    sidecar("B007", "B", "dwi", "u9", "v1")   # re-exported copy of A001's DWI: new UID, same voxels
    sidecar("B007", "B", "swi", "u3", "v3")
    sidecar("N001", "A", "swi", "u3", "v3")   # the same SWI under a third pseudonym
    folders = [tmp_path / "A" / "A001", tmp_path / "B" / "B007", tmp_path / "A" / "N001"]
    table = find_duplicates(folders, labelled=["A001", "B007"])
    assert table.to_dict("records") == [
        {"subjects": "A001, B007", "centers": "A, B", "sequences": "dwi", "evidence": "identical voxels", "labelled": 2},
        {"subjects": "B007, N001", "centers": "A, B", "sequences": "swi",
         "evidence": "identical voxels; the same DICOM series (SeriesInstanceUID)", "labelled": 1},
    ]
    empty = write_duplicates(find_duplicates(folders[:1]), tmp_path / "none.tsv")
    assert empty.read_text() == "subjects\tcenters\tsequences\tevidence\tlabelled\n"
