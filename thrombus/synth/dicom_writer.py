"""Writing a synthetic series as classic DICOM: one MR Image Storage file per slice (and per b-value).

The files look like what the pipeline meets in a hospital export: explicit VR little endian, uint16
pixels with RescaleSlope/Intercept, full patient geometry, vendor-style descriptions, and fake but
realistic patient identifiers that the conversion step must keep out of every output. For DWI the
b-value goes in the public DiffusionBValue (0018,9087) and in the private tag the vendor's own files
use (Siemens (0019,100C), GE (0043,1039), Philips (2001,1003)), which is what dcm2niix reads to
write a .bval of "0 1000". GE needs more: dcm2niix treats a GE b>0 volume whose gradient vector
(0019,10BB-BD) is zero as b=0, so the trace volume carries the isotropic direction (1,1,1)/sqrt(3).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from thrombus.synth.acquisition import SeriesGeometry

#: Private creators and b-value tags by vendor family (group, creator, element, VR).
PRIVATE_B_VALUE: dict[str, tuple[int, str, int, str]] = {
    "siemens": (0x0019, "SIEMENS MR HEADER", 0x0C, "IS"),
    "ge": (0x0043, "GEMS_PARM_01", 0x39, "IS"),
    "philips": (0x2001, "Philips Imaging DD 001", 0x03, "FL"),
}


@dataclass(frozen=True)
class Patient:
    """Fake identifiers of one synthetic patient and their study (written to identifiers.json too)."""

    name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    accession: str
    institution: str
    station: str
    referring_physician: str
    study_date: str
    study_time: str


@dataclass(frozen=True)
class SeriesInfo:
    """What describes one series besides its pixels and geometry."""

    number: int
    description: str
    image_type: tuple[str, ...]
    echo_time_ms: float
    repetition_time_ms: float
    flip_angle_deg: float
    scanning_sequence: str
    sequence_variant: str
    acquisition_type: str
    series_time: str
    inversion_time_ms: float | None = None


class Uids:
    """Deterministic DICOM UIDs from the seed and names (same cohort, same UIDs, byte-identical files)."""

    def __init__(self, *scope: str) -> None:
        self.scope = [str(s) for s in scope]

    def __call__(self, *parts: str | int) -> str:
        return str(generate_uid(entropy_srcs=[*self.scope, *(str(p) for p in parts)]))


def series_folder(number: int, description: str) -> str:
    """'<NN>_<description with anything but letters and digits as _>', e.g. '03_t2_tirm_tra_dark_fluid'."""
    return f"{number:02d}_{re.sub(r'[^A-Za-z0-9]+', '_', description).strip('_')}"


def _file_meta(sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _series_dataset(patient: Patient, series: SeriesInfo, geometry: SeriesGeometry, manufacturer: str, model: str,
                    field_strength_t: float, uids: Uids, slope: float, bits: int) -> Dataset:
    """Attributes shared by every file of a series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = list(series.image_type)
    ds.SOPClassUID = MRImageStorage
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = patient.study_date
    ds.StudyTime = patient.study_time
    ds.SeriesTime = ds.ContentTime = series.series_time
    ds.AccessionNumber = patient.accession
    ds.Modality = "MR"
    ds.Manufacturer = manufacturer
    ds.InstitutionName = patient.institution
    ds.ReferringPhysicianName = patient.referring_physician
    ds.StationName = patient.station
    ds.StudyDescription = "NEURO^STROKE"
    ds.SeriesDescription = series.description
    ds.ManufacturerModelName = model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = patient.age
    ds.BodyPartExamined = "HEAD"
    ds.ScanningSequence = series.scanning_sequence
    ds.SequenceVariant = series.sequence_variant
    ds.MRAcquisitionType = series.acquisition_type
    ds.SliceThickness = f"{geometry.thickness_mm:g}"
    ds.RepetitionTime = f"{series.repetition_time_ms:g}"
    ds.EchoTime = f"{series.echo_time_ms:g}"
    if series.inversion_time_ms is not None:
        ds.InversionTime = f"{series.inversion_time_ms:g}"
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = f"{42.577478 * field_strength_t:.6f}"
    ds.ImagedNucleus = "1H"
    ds.MagneticFieldStrength = f"{field_strength_t:g}"
    ds.SpacingBetweenSlices = f"{geometry.spacing_mm:g}"
    ds.FlipAngle = f"{series.flip_angle_deg:g}"
    ds.ProtocolName = series.description
    ds.PatientPosition = "HFS"
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.StudyInstanceUID = uids("study")
    ds.SeriesInstanceUID = uids("series", series.number)
    ds.StudyID = patient.accession[-4:]
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = geometry.orientation_patient()
    ds.FrameOfReferenceUID = uids("frame-of-reference")
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geometry.rows
    ds.Columns = geometry.columns
    ds.PixelSpacing = [f"{geometry.pixel_mm:g}", f"{geometry.pixel_mm:g}"]
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = f"{slope:.8g}"
    ds.RescaleType = "US"
    return ds


def write_series(folder: Path, volumes: list[tuple[float | None, np.ndarray]], geometry: SeriesGeometry,
                 series: SeriesInfo, patient: Patient, manufacturer: str, family: str, model: str,
                 field_strength_t: float, uids: Uids, slope: float, bits: int) -> int:
    """Write one series; `volumes` holds (b-value or None, stored uint16 NIfTI-ordered volume). Returns the file count.

    One dataset is reused for every file of a volume, only the per-slice values changing, because
    building ~80 elements per file made writing the slowest part of the generator.
    """
    folder.mkdir(parents=True, exist_ok=True)
    instance = 0
    for b_value, volume in volumes:
        ds = _series_dataset(patient, series, geometry, manufacturer, model, field_strength_t, uids, slope, bits)
        ds.AcquisitionTime = series.series_time
        center = float(np.percentile(volume, 99.5)) / 2.0
        ds.WindowCenter = f"{center:.0f}"
        ds.WindowWidth = f"{max(2.0 * center, 1.0):.0f}"
        if b_value is not None:
            _add_b_value(ds, b_value, family)
        for k in range(geometry.slices):
            instance += 1
            ds.SOPInstanceUID = uids("sop", series.number, instance)
            ds.file_meta = _file_meta(ds.SOPInstanceUID)
            ds.InstanceNumber = instance
            ds.ImagePositionPatient = geometry.position_patient(k)
            ds.SliceLocation = f"{geometry.slice_location(k):.5f}"
            ds.PixelData = geometry.to_dicom(volume, k).astype("<u2").tobytes()
            ds.save_as(folder / f"IM_{instance:04d}.dcm", enforce_file_format=True)
    return instance


def _add_b_value(ds: Dataset, b_value: float, family: str) -> None:
    """Public DiffusionBValue plus the vendor's private b-value tag (what dcm2niix reads for that vendor)."""
    ds.add_new(0x00189087, "FD", float(b_value))
    group, creator, element, vr = PRIVATE_B_VALUE[family]
    block = ds.private_block(group, creator, create=True)
    if family == "ge":
        block.add_new(element, vr, [int(b_value), 0, 0, 0])
    else:
        block.add_new(element, vr, int(b_value) if vr == "IS" else float(b_value))
    if family == "ge":
        # dcm2niix reads a GE b>0 volume with a zero gradient vector as b=0; a trace image gets (1,1,1)/sqrt(3).
        directions = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
        for element in (0xBB, 0xBC, 0xBD):
            directions.add_new(element, "DS", f"{0.57735027 if b_value > 0 else 0.0:.8f}")
    if family == "philips":
        block.add_new(0x0B, "CS", "TRANSVERSAL")
        block.add_new(0x04, "CS", "I" if b_value > 0 else "O")
