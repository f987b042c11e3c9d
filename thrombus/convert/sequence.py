"""DICOM -> NIfTI for one subject and one sequence: the `convert` step."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from thrombus.convert import dcm2niix
from thrombus.convert.diffusion import adc_map, trace_image
from thrombus.convert.fingerprints import fingerprints, geometry
from thrombus.convert.nifti_source import import_sequence
from thrombus.convert.series import NoSeriesMatch, Series, check_slices, match_series, scan_series, single_series
from thrombus.convert.sidecar import scrub_sidecar, scrub_text
from thrombus.io import PathLike, sha256_files, write_json
from thrombus.nifti import check_volume, image_like, save_nifti
from thrombus.provenance import StepRecord, package_versions
from thrombus.samples import is_nifti

AUTO = "auto"


@dataclass(frozen=True)
class ConvertRequest:
    """What the sample sheet and the config say about one subject's sequence."""

    subject: str
    center: str
    sequence: str
    dicom_dir: Path
    series: str = AUTO
    patterns: Mapping[str, str] = field(default_factory=dict)
    derive_adc: bool = True

    @property
    def what(self) -> str:
        """How errors name this job: center, subject and sequence."""
        return f"center {self.center}, subject {self.subject}, {self.sequence}"


@dataclass
class Converted:
    """The image chosen (or derived) from dcm2niix's outputs, with a note of how."""

    image: nib.Nifti1Image
    sidecar: dict[str, Any]
    note: str


def find_series(request: ConvertRequest) -> Series:
    """The series of the request: the folder the sample sheet names, or the one its pattern matches."""
    if request.series == AUTO:
        found = scan_series(request.dicom_dir, request.what, recursive=True)
        try:
            return match_series(found, request.patterns, request.sequence, request.what, request.dicom_dir)
        except NoSeriesMatch:
            if not (request.sequence == "adc" and request.derive_adc and "dwi" in request.patterns):
                raise
        # no scanner ADC: the ADC is computed from the DWI series' b-values (`choose_output`)
        return match_series(found, request.patterns, "dwi", request.what, request.dicom_dir)
    return single_series(selected_path(request), request.what)


def selected_path(request: ConvertRequest) -> Path:
    """The series folder (or NIfTI file) the sheet names, relative to the subject's folder."""
    path = Path(request.series)
    return path if path.is_absolute() else request.dicom_dir / path


def _squeeze(image: nib.Nifti1Image) -> nib.Nifti1Image:
    """Drop a trailing singleton 4th axis, which some exports carry."""
    if len(image.shape) == 4 and image.shape[3] == 1:
        return nib.Nifti1Image(np.asanyarray(image.dataobj)[..., 0], image.affine, image.header)
    return image


def _is_adc(output: dcm2niix.Dcm2niixOutput) -> bool:
    return "ADC" in output.image_type or output.name.upper().endswith("_ADC")


def _diffusion(outputs: list[dcm2niix.Dcm2niixOutput]) -> dcm2niix.Dcm2niixOutput | None:
    """The output carrying b-values and the most volumes, if any."""
    weighted = [o for o in outputs if o.bvals is not None and o.volumes > 1]
    return max(weighted, key=lambda o: o.volumes) if weighted else None


def _single_3d(outputs: list[dcm2niix.Dcm2niixOutput], request: ConvertRequest) -> dcm2niix.Dcm2niixOutput:
    """The one 3-D output; for multi-echo output the last echo, whose susceptibility contrast is strongest."""
    volumes = [o for o in outputs if o.volumes == 1]
    echoes = [o for o in volumes if o.echo is not None]
    if len(volumes) > 1 and len(echoes) == len(volumes) and request.sequence in ("swi", "t2star"):
        return max(echoes, key=lambda o: o.echo or 0)
    if len(volumes) != 1:
        names = ", ".join(f"{o.nifti.name} {o.shape}" for o in outputs)
        raise dcm2niix.ConversionError(
            f"{request.what}: expected one 3-D volume from the series, dcm2niix wrote {names}; "
            "point the sample sheet at a single-volume series"
        )
    return volumes[0]


def choose_output(outputs: list[dcm2niix.Dcm2niixOutput], request: ConvertRequest) -> Converted:
    """Pick or derive the image of the requested sequence from what dcm2niix wrote for the series."""
    diffusion = _diffusion(outputs)
    if request.sequence == "dwi" and diffusion is not None:
        source = nib.load(str(diffusion.nifti))
        trace, bvalue, count = trace_image(np.asarray(source.dataobj, dtype=np.float32), diffusion.bvals or ())
        note = f"isotropic trace: geometric mean of {count} volume(s) at b={bvalue:g} of {diffusion.nifti.name}"
        return Converted(image_like(trace, source), dict(diffusion.sidecar, DiffusionBValue=bvalue), note)
    if request.sequence == "adc":
        adcs = [o for o in outputs if _is_adc(o) and o.volumes == 1]
        if len(adcs) == 1:
            return Converted(_squeeze(nib.load(str(adcs[0].nifti))), adcs[0].sidecar, f"scanner ADC {adcs[0].nifti.name}")
        if diffusion is not None and request.derive_adc:
            source = nib.load(str(diffusion.nifti))
            adc, bvalue = adc_map(np.asarray(source.dataobj, dtype=np.float32), diffusion.bvals or ())
            note = f"fallback: ADC computed here from b=0 and b={bvalue:g} of {diffusion.nifti.name} (1e-6 mm^2/s)"
            return Converted(image_like(adc, source), diffusion.sidecar, note)
    # a derived ADC written beside a non-ADC image (Philips trace split) is not what was asked for
    non_adc = [o for o in outputs if not _is_adc(o)] if request.sequence != "adc" else outputs
    chosen = _single_3d(non_adc or outputs, request)
    return Converted(_squeeze(nib.load(str(chosen.nifti))), chosen.sidecar, f"as converted: {chosen.nifti.name}")


def convert_sequence(request: ConvertRequest, out_nifti: PathLike, out_sidecar: PathLike, record_path: PathLike | None = None) -> dict[str, Any]:
    """Convert one sequence; writes the NIfTI, its scrubbed sidecar and the step record (all atomic).
    A sheet cell naming a NIfTI file (a BIDS dataset) is imported instead (`nifti_source`)."""
    if request.series != AUTO and is_nifti(selected_path(request)):
        done = import_sequence(request, selected_path(request), out_nifti, out_sidecar)
        if record_path is not None:
            write_json(record_path, done)
        return done
    record = StepRecord("convert", subject=request.subject, center=request.center)
    series = find_series(request)
    notes = check_slices(series, request.what)
    if series.skipped:
        notes.append(f"skipped {len(series.skipped)} object(s) of the series without pixel data: "
                     + ", ".join(sorted(p.name for p in series.skipped)[:10]))
    record.inputs = {
        "series_folder": str(series.folder),
        "series_description": series.description,
        "series_number": series.number,
        "n_files": len(series.files),
        "enhanced": series.enhanced,
        "sha256": sha256_files([f.path for f in series.files], root=series.folder),
    }
    record.params = {"sequence": request.sequence, "selection": request.series, "derive_adc": request.derive_adc}
    if request.series == AUTO:
        record.params["pattern"] = request.patterns.get(request.sequence)
    record.versions = {"dcm2niix": dcm2niix.version(), **package_versions(("pydicom", "nibabel"))}
    with tempfile.TemporaryDirectory(prefix="thrombus-convert-") as staging:
        outputs, console = dcm2niix.run(series, Path(staging), what=request.what)
        converted = choose_output(outputs, request)
        data = np.asanyarray(converted.image.dataobj)
        check_volume(data, series.folder, request.what)
        sidecar = scrub_sidecar(converted.sidecar, series.identifiers)
        sidecar["ThrombusConversion"] = {
            "subject": request.subject, "center": request.center, "sequence": request.sequence,
            "source": converted.note, "dcm2niix": dcm2niix.version(), **fingerprints(series.uid, data),
        }
        save_nifti(converted.image, out_nifti)
        write_json(out_sidecar, sidecar)
    record.outputs = {"nifti": str(out_nifti), **geometry(converted.image)}
    record.qc = {
        "note": converted.note,
        "dcm2niix_outputs": [f"{o.nifti.name} {list(o.shape)}" for o in outputs],
        "dcm2niix_warnings": [scrub_text(line, series.identifiers) for line in console.splitlines() if re.match(r"(?i)warning", line)],
        "checks": notes,
    }
    if record_path is not None:
        record.write(record_path)
    return record.as_dict()
