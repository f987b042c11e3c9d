"""A sequence given as NIfTI instead of DICOM: imported, not converted.

Many groups keep their stroke MRI as a BIDS dataset (ISLES 2022 is one), already converted by dcm2niix
or their scanner's software; sending them back through DICOM is not possible. The `convert` step takes
such a file when the sample sheet's cell names a `.nii`/`.nii.gz` file: it keeps the voxels and the
grid as given, applies the same rules as a DICOM conversion where they carry over (a DWI series with
b-values gives its isotropic trace, an ADC may be derived from it, the BIDS sidecar is scrubbed of the
same identifying fields), refuses an image no step can use, and records what it did. What cannot carry
over is said in the record: no dcm2niix, and no series UID unless the sidecar has one (duplicate scans are
then found by voxels alone).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np

from thrombus.convert.diffusion import adc_map, trace_image
from thrombus.convert.fingerprints import fingerprints, geometry
from thrombus.convert.sidecar import scrub_sidecar
from thrombus.errors import UserError
from thrombus.io import PathLike, read_json, sha256_files, write_json
from thrombus.nifti import check_volume, image_like, save_nifti
from thrombus.provenance import StepRecord, package_versions

if TYPE_CHECKING:
    from thrombus.convert.sequence import ConvertRequest

class NiftiSourceError(UserError, ValueError):
    """A NIfTI source no step can use; the message names the subject, sequence and file."""


def companion(path: PathLike, suffix: str) -> Path:
    """The BIDS companion of a NIfTI file (`.json`, `.bval`), looked up beside the file itself: a source
    link of the workflow points at the image only."""
    real = Path(os.path.realpath(path))
    stem = real.name[: -len(".nii.gz")] if real.name.lower().endswith(".nii.gz") else real.stem
    return real.with_name(stem + suffix)


def _bvals(path: PathLike) -> tuple[float, ...] | None:
    table = companion(path, ".bval")
    if not table.exists():
        return None
    return tuple(float(v) for v in table.read_text().split())


def _check_grid(image: nib.Nifti1Image, what: str, name: str) -> None:
    """A NIfTI without a scanner orientation (qform and sform codes 0) puts the head nowhere: every later
    step (registration, the side of a clot, MNI coordinates) would be wrong without saying so."""
    if int(image.header["qform_code"]) == 0 and int(image.header["sform_code"]) == 0:
        raise NiftiSourceError(f"{what}: {name} has neither a qform nor an sform (both codes 0), so its "
                               "orientation is unknown; re-export it with dcm2niix or set its scanner affine")


def read_source(request: ConvertRequest, path: Path) -> tuple[nib.Nifti1Image, str]:
    """The image of the requested sequence from the file, with a note of how: a 4-D diffusion series
    with b-values gives its isotropic trace (`dwi`) or a derived ADC (`adc`), as a DICOM one does."""
    source = nib.load(str(path))
    _check_grid(source, request.what, path.name)
    if len(source.shape) == 4 and source.shape[3] == 1:
        source = nib.Nifti1Image(np.asanyarray(source.dataobj)[..., 0], source.affine, source.header)
    if len(source.shape) == 4 and request.sequence in ("dwi", "adc"):
        bvals = _bvals(path)
        if bvals is None or len(bvals) != source.shape[3]:
            raise NiftiSourceError(f"{request.what}: {path.name} is 4-D {tuple(source.shape)} but has no .bval "
                                   "file of as many b-values beside it; give the trace (or ADC) image instead")
        data = np.asarray(source.dataobj, dtype=np.float32)
        if request.sequence == "dwi":
            trace, bvalue, count = trace_image(data, bvals)
            return image_like(trace, source), f"isotropic trace: geometric mean of {count} volume(s) at b={bvalue:g} of {path.name}"
        if not request.derive_adc:
            raise NiftiSourceError(f"{request.what}: {path.name} is a diffusion series, not an ADC map, and "
                                   "convert.derive_adc is off")
        adc, bvalue = adc_map(data, bvals)
        return image_like(adc, source), f"fallback: ADC computed here from b=0 and b={bvalue:g} of {path.name} (1e-6 mm^2/s)"
    return source, f"NIfTI as given: {path.name}"


def _sidecar(path: Path) -> tuple[dict[str, Any], str]:
    """The scrubbed BIDS sidecar and the series UID it names (if any; hashed before it is kept)."""
    side = companion(path, ".json")
    document = read_json(side) if side.exists() else {}
    if not isinstance(document, dict):
        raise NiftiSourceError(f"{side}: a BIDS sidecar must be a JSON object")
    return scrub_sidecar(document, ()), str(document.get("SeriesInstanceUID", ""))


def import_sequence(request: ConvertRequest, source: Path, out_nifti: PathLike, out_sidecar: PathLike) -> dict[str, Any]:
    """Import one NIfTI sequence; writes the image, its sidecar and returns the step record, as
    `convert_sequence` does for a DICOM series. `source` may be the workflow's link to the file; the
    record names it, never the file behind it (whose path may identify the patient)."""
    real = Path(os.path.realpath(source))
    record = StepRecord("convert", subject=request.subject, center=request.center)
    companions = [p for p in (companion(real, ".json"), companion(real, ".bval"), companion(real, ".bvec")) if p.exists()]
    record.inputs = {"nifti": str(source), "format": "nifti", "n_files": 1 + len(companions),
                     "sha256": sha256_files([real, *companions], root=real.parent)}
    record.params = {"sequence": request.sequence, "selection": "nifti", "derive_adc": request.derive_adc}
    record.versions = package_versions(("nibabel",))
    image, note = read_source(request, real)
    data = np.asanyarray(image.dataobj)
    check_volume(data, source, request.what)
    sidecar, uid = _sidecar(real)
    prints = fingerprints(uid, data)
    if not uid:
        prints.pop("series_uid_sha256")
    sidecar["ThrombusConversion"] = {"subject": request.subject, "center": request.center,
                                     "sequence": request.sequence, "source": note, **prints}
    save_nifti(image, out_nifti)
    write_json(out_sidecar, sidecar)
    record.outputs = {"nifti": str(out_nifti), **geometry(image)}
    record.qc = {"note": note, "dcm2niix_outputs": [], "dcm2niix_warnings": [],
                 "checks": [] if uid else ["no SeriesInstanceUID in the sidecar: duplicate scans are found by voxels only"]}
    return record.as_dict()
