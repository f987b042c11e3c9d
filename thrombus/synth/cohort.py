"""Generating the whole synthetic cohort: every subject of every center, its DICOM series, ground
truth, QC picture, and the cohort's sample sheet.

Each subject draws from its own random stream, SeedSequence(seed, center index, subject index), split
into independent streams for identity, protocol, anatomy and acquisition, so adding a center or
changing one subject's protocol does not change any other subject, and the same preset and seed give
byte-identical DICOM and NIfTI files. The sample sheet is written last: its presence means the
cohort is complete.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from thrombus import SEQUENCES, __version__
from thrombus.io import write_json, write_text
from thrombus.nifti import save_array
from thrombus.synth import acquisition, contrast, qc, truth
from thrombus.synth.anatomy import HeadModel, build_head_model
from thrombus.synth.dicom_writer import Patient, SeriesInfo, Uids, series_folder, write_series
from thrombus.synth.lesions import SubjectLesions, draw_lesions
from thrombus.synth.preset import CenterSpec, Preset, PresetError, SeriesSpec, load_preset

log = logging.getLogger(__name__)

#: Bumped whenever the same preset and seed would give different files.
GENERATOR_VERSION = "1"

#: Marks a folder as a synthetic cohort that a new generation may clear.
MARKER = ".thrombus-synth"

#: The sample sheet's columns, in order (the workflow's contract).
SHEET_COLUMNS: tuple[str, ...] = ("subject", "center", "dicom_dir", *SEQUENCES, "thrombus", "thrombus_mask", "infarct_mask")

#: Where the head's centre (for planning slices) sits in MNI mm.
HEAD_CENTRE_MNI = np.array([0.0, -18.0, 8.0])


class SequenceDetails(NamedTuple):
    """DICOM acquisition attributes that depend on the sequence, not on the center."""

    scanning_sequence: str
    sequence_variant: str
    acquisition_type: str
    flip_angle_deg: float
    image_type: tuple[str, ...]
    inversion_time_ms: float | None = None


#: Per-sequence DICOM attributes (the ADC series is derived from the DWI acquisition).
SEQUENCE_DETAILS: dict[str, SequenceDetails] = {
    "swi": SequenceDetails("GR", "SP\\OSP", "3D", 15.0, ("ORIGINAL", "PRIMARY", "M", "SWI")),
    "t2star": SequenceDetails("GR", "SS", "2D", 20.0, ("ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE")),
    "dwi": SequenceDetails("EP", "SK\\SP", "2D", 90.0, ("ORIGINAL", "PRIMARY", "DIFFUSION", "NONE")),
    "adc": SequenceDetails("EP", "SK\\SP", "2D", 90.0, ("DERIVED", "PRIMARY", "ADC")),
    "flair": SequenceDetails("SE\\IR", "SK\\SP\\MP", "2D", 150.0, ("ORIGINAL", "PRIMARY", "M", "NORM"), 2500.0),
    "t1": SequenceDetails("SE", "SK\\SP", "2D", 90.0, ("ORIGINAL", "PRIMARY", "M", "NORM")),
}

#: Pools for the fake identifiers (SYNTH^GIVEN^MIDDLE; institutions that do not exist).
GIVEN_NAMES = ("JANE", "JOHN", "MARIE", "PIERRE", "ANNA", "LUCAS", "SOFIA", "HUGO", "CLARA", "PAUL", "ELENA", "LOUIS",
               "NORA", "VICTOR", "IRENE", "MARC", "ALICE", "THEO", "JULIA", "SIMON")
MIDDLE_NAMES = ("ROSE", "ANDRE", "LOUISE", "MICHEL", "CLAIRE", "JEAN", "ELISE", "RENE", "MAY", "NOEL")
INSTITUTIONS = ("Northfield General Hospital", "Saint Aldric University Hospital", "Riverside Neurovascular Centre",
                "Lakeshore Regional Medical Center", "Hopital des Quatre Vents", "Westbrook Stroke Unit",
                "Clinique du Val Fleuri", "Eastgate University Medical Centre")


@dataclass(frozen=True)
class CohortSummary:
    """What generate_cohort made."""

    out_dir: Path
    samples_tsv: Path
    n_subjects: int
    centers: list[str]
    seconds: float


@dataclass(frozen=True)
class SubjectTask:
    """Everything one worker needs to generate one subject."""

    preset: Preset
    seed: int
    center_index: int
    subject_index: int
    subject: str
    positive: bool
    auto_series: bool
    institution: str
    out_dir: Path


@dataclass(frozen=True)
class SubjectContext:
    """What every series of one subject shares."""

    center: CenterSpec
    model: HeadModel
    lesions: SubjectLesions
    signals: dict[str, dict[str, float]]
    frame: acquisition.SubjectFrame
    patient: Patient
    uids: Uids
    dicom_dir: Path

    @property
    def family(self) -> str:
        return self.center.vendor_family


@dataclass(frozen=True)
class SubjectResult:
    """What the cohort files need from one generated subject."""

    row: dict[str, str]
    identifiers: dict[str, str]
    summary: dict[str, Any]


def generate_cohort(preset: str | Path | Preset, out_dir: Path, seed: int | None = None, progress: bool = True,
                    threads: int = 1, only: Sequence[str] | None = None) -> CohortSummary:
    """Generate the synthetic multi-center cohort as DICOM series plus ground truth and a sample sheet.

    `preset` is 'tiny', 'demo', 'paper', a preset YAML file or a loaded Preset; `seed` overrides the preset's.
    `threads` subjects are generated in parallel (worker processes); the files do not depend on it.
    `only` keeps these subjects (e.g. ['B008']): each is exactly as in the whole cohort, since every
    subject draws from its own stream, so a test can rebuild one subject of a large preset in seconds.
    """
    started = time.perf_counter()
    spec = preset if isinstance(preset, Preset) else load_preset(preset)
    seed = spec.seed if seed is None else int(seed)
    out_dir = Path(out_dir)
    _prepare(out_dir)
    tasks = _tasks(spec, seed, out_dir)
    if only is not None:
        wanted = set(only)
        unknown = sorted(wanted - {task.subject for task in tasks})
        if unknown:
            raise PresetError(f"preset {spec.name} has no subject {', '.join(unknown)}")
        tasks = [task for task in tasks if task.subject in wanted]
    build_head_model(spec.template_resolution_mm)
    log.info("generating %d subjects of %d centers (preset %s, seed %d)", len(tasks), len(spec.centers), spec.name, seed)
    with ExitStack() as stack:
        mapper = map
        if threads > 1:
            # Forked workers inherit the head model built above instead of rebuilding it.
            mapper = stack.enter_context(ProcessPoolExecutor(max_workers=threads, mp_context=get_context("fork"))).map
        results = list(tqdm(mapper(generate_subject, tasks), total=len(tasks), desc="synthetic cohort", unit="subject",
                            disable=not progress))
    _write_identifiers(out_dir / "identifiers.json", results)
    write_json(out_dir / "cohort.json", _cohort_record(spec, seed, results))
    samples = _write_sheet(out_dir / "samples.tsv", results)
    seconds = time.perf_counter() - started
    log.info("cohort written to %s in %.1f s", out_dir, seconds)
    return CohortSummary(out_dir=out_dir, samples_tsv=samples, n_subjects=len(results),
                         centers=[c.name for c in spec.centers], seconds=round(seconds, 2))


def _prepare(out_dir: Path) -> None:
    """Clear a previous (possibly interrupted) synthetic cohort, recognised by its marker file; refuse
    any other non-empty folder, so that pointing --out at real data can never delete it."""
    marker = out_dir / MARKER
    if out_dir.exists() and any(out_dir.iterdir()):
        if not marker.exists():
            raise FileExistsError(f"{out_dir} is not empty and holds no synthetic cohort ({MARKER} missing); "
                                  "choose an empty or new folder")
        for name in ("dicom", "truth", "qc"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in ("samples.tsv", "cohort.json", "identifiers.json"):
            (out_dir / name).unlink(missing_ok=True)
    write_text(marker, "written by thrombus.synth; the folder may be cleared and regenerated\n")


def _tasks(spec: Preset, seed: int, out_dir: Path) -> list[SubjectTask]:
    """One task per subject; which subjects are negative is drawn per center."""
    tasks = []
    for ci, center in enumerate(spec.centers):
        rng = np.random.default_rng(np.random.SeedSequence([seed, ci]))
        negatives = set(rng.permutation(center.n_subjects)[: int(round(center.n_subjects * center.negative_fraction))].tolist())
        institution = INSTITUTIONS[int(rng.integers(len(INSTITUTIONS)))]
        for si in range(center.n_subjects):
            tasks.append(SubjectTask(preset=spec, seed=seed, center_index=ci, subject_index=si,
                                     subject=f"{center.name}{si + 1:03d}", positive=si not in negatives,
                                     auto_series=ci == 1, institution=institution, out_dir=out_dir))
    return tasks


def _patient(rng: np.random.Generator, seed: int, institution: str) -> Patient:
    """Fake, realistic-looking identifiers (none equal to the pseudonym), dates derived from the seed."""
    birth_year = int(rng.integers(1935, 1992))
    study_day = np.datetime64("2023-01-01") + np.timedelta64(int(seed % 365) + int(rng.integers(0, 540)), "D")
    study_year = int(str(study_day)[:4])
    sex = str(rng.choice(["F", "M"]))
    return Patient(
        name=f"SYNTH^{rng.choice(GIVEN_NAMES)}^{rng.choice(MIDDLE_NAMES)}",
        patient_id=f"{int(rng.integers(10_000_000, 99_999_999))}",
        birth_date=f"{birth_year}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        sex=sex,
        age=f"{study_year - birth_year:03d}Y",
        accession=f"{int(rng.integers(10**9, 10**10 - 1))}",
        institution=institution,
        station=f"MR{int(rng.integers(1000, 9999))}",
        referring_physician=f"DR^{rng.choice(GIVEN_NAMES)}",
        study_date=str(study_day).replace("-", ""),
        study_time=f"{int(rng.integers(0, 24)):02d}{int(rng.integers(0, 60)):02d}{int(rng.integers(0, 60)):02d}",
    )


def _series_time(study_time: str, minutes: int) -> str:
    total = int(study_time[:2]) * 3600 + int(study_time[2:4]) * 60 + int(study_time[4:6]) + 60 * minutes
    total %= 86400
    return f"{total // 3600:02d}{total % 3600 // 60:02d}{total % 60:02d}.000000"


def _acquired(center: CenterSpec, reference: str, rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Which of the center's sequences this subject has; the reference is never dropped."""
    kept, dropped = [], []
    for sequence in center.series:
        missing = sequence != reference and rng.random() < center.missing.get(sequence, 0.0)
        (dropped if missing else kept).append(sequence)
        if sequence == "dwi" and missing:
            dropped.append("adc")
    return kept, dropped


def generate_subject(task: SubjectTask) -> SubjectResult:
    """Generate one subject: template-space model, every acquired series, truth, QC."""
    spec = task.preset
    center = spec.centers[task.center_index]
    streams = np.random.SeedSequence([task.seed, task.center_index, task.subject_index]).spawn(4)
    identity_rng, protocol_rng, anatomy_rng, acquisition_rng = (np.random.default_rng(s) for s in streams)
    model = build_head_model(spec.template_resolution_mm)
    patient = _patient(identity_rng, task.seed, task.institution)
    reference = center.reference(spec.reference_priority)
    acquired, dropped = _acquired(center, reference, protocol_rng)
    frame = acquisition.draw_frame(anatomy_rng, spec.pose_rotation_deg, spec.pose_scale, spec.pose_translation_mm, spec.warp_mm)
    lesions = draw_lesions(model, anatomy_rng, task.positive, center.field_strength_t)
    subject = SubjectContext(center=center, model=model, lesions=lesions, signals=contrast.subject_signals(anatomy_rng),
                             frame=frame, patient=patient, uids=Uids("thrombus-synth", task.seed, center.name, task.subject),
                             dicom_dir=task.out_dir / "dicom" / center.name / task.subject)
    head_centre = frame.pose[:3, :3] @ HEAD_CENTRE_MNI + frame.pose[:3, 3]
    sequences: dict[str, dict[str, Any]] = {}
    images: dict[str, tuple[np.ndarray, acquisition.SeriesGeometry, np.ndarray]] = {}
    number = 2
    for order, sequence in enumerate(acquired):
        series = center.series[sequence]
        motion = acquisition.Rigid((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), tuple(head_centre)) if sequence == reference else \
            acquisition.draw_motion(acquisition_rng, spec.motion_rotation_deg, spec.motion_translation_mm, head_centre)
        geometry = acquisition.plan_geometry(*series.matrix, series.n_slices, series.pixel_mm, series.slice_mm,
                                             series.spacing_mm, series.tilt_deg, head_centre + acquisition_rng.normal(0.0, 3.0, 3),
                                             three_d=SEQUENCE_DETAILS[sequence].acquisition_type == "3D")
        written = _acquire(subject, series, motion, geometry, acquisition_rng, number, 3 * order)
        for name, (folder, volume) in written.items():
            sequences[name] = _series_record(folder, geometry, motion, volume.shape)
            images[name] = (volume, geometry, motion.matrix())
        number += len(written)
    return _finish(task, subject, reference, dropped, sequences, images)


def _acquire(subject: SubjectContext, series: SeriesSpec, motion: acquisition.Rigid, geometry: acquisition.SeriesGeometry,
             rng: np.random.Generator, number: int, minutes: int) -> dict[str, tuple[str, np.ndarray]]:
    """Simulate and write one sequence (two series for DWI: the trace and its ADC map).

    Returns, per written sequence, its folder name and the physical image on the NIfTI grid
    (for DWI the b1000 volume) for truth and QC.
    """
    sequence, center, model = series.sequence, subject.center, subject.model
    unit, bits = acquisition.VENDOR_SCALING[subject.family]
    habit = center.contrast.get(sequence)
    bias = acquisition.bias_field(geometry, rng, center.bias_field)
    sigma = center.noise * subject.signals["dwi_b0" if sequence == "dwi" else sequence]["wm"]
    if sequence == "dwi":
        templates = contrast.render_diffusion(model, subject.lesions, subject.signals)
    else:
        power = contrast.susceptibility_power(center.field_strength_t, series.echo_time_ms, series.slice_mm)
        templates = (contrast.render(sequence, model, subject.lesions, subject.signals, power),)
    acquired = []
    for volume in acquisition.sample(templates, model.affine, geometry, subject.frame, motion.matrix()):
        if habit is not None:
            volume = np.float32(habit.scale) * np.power(volume, np.float32(habit.gamma))
        acquired.append(acquisition.rician(volume * bias, sigma, rng) * np.float32(unit))
    details = SEQUENCE_DETAILS[sequence]
    info = SeriesInfo(number=number, description=series.description, image_type=details.image_type,
                      echo_time_ms=series.echo_time_ms, repetition_time_ms=series.repetition_time_ms,
                      flip_angle_deg=details.flip_angle_deg, scanning_sequence=details.scanning_sequence,
                      sequence_variant=details.sequence_variant, acquisition_type=details.acquisition_type,
                      series_time=_series_time(subject.patient.study_time, minutes),
                      inversion_time_ms=details.inversion_time_ms)
    peak = max(float(np.percentile(v, 99.9)) for v in acquired) * 1.3
    stored = [acquisition.quantise(v, subject.family, peak) for v in acquired]
    slope = stored[0][1]
    b_values = [0.0, 1000.0] if sequence == "dwi" else [None]
    folder = series_folder(number, series.description)
    write_series(subject.dicom_dir / folder, [(b, s[0]) for b, s in zip(b_values, stored)], geometry, info,
                 subject.patient, center.vendor, subject.family, center.model, center.field_strength_t, subject.uids, slope, bits)
    out = {sequence: (folder, stored[-1][0].astype(np.float32) * np.float32(slope))}
    if sequence == "dwi":
        out["adc"] = _write_adc(subject, acquired, geometry, info, series.adc_description, number + 1)
    return out


def _write_adc(subject: SubjectContext, dwi: list[np.ndarray], geometry: acquisition.SeriesGeometry, dwi_info: SeriesInfo,
               description: str, number: int) -> tuple[str, np.ndarray]:
    """The scanner's ADC map (1e-6 mm^2/s) from the acquired b0 and b1000, zero where b0 is background."""
    b0, b1000 = dwi
    valid = b0 > 0.15 * float(np.percentile(b0, 99))
    adc = np.zeros_like(b0)
    adc[valid] = np.log(b0[valid] / np.maximum(b1000[valid], 1e-3)) * 1000.0
    adc = np.clip(adc, 0.0, 4000.0)
    details = SEQUENCE_DETAILS["adc"]
    info = SeriesInfo(number=number, description=description, image_type=details.image_type,
                      echo_time_ms=dwi_info.echo_time_ms, repetition_time_ms=dwi_info.repetition_time_ms,
                      flip_angle_deg=details.flip_angle_deg, scanning_sequence=details.scanning_sequence,
                      sequence_variant=details.sequence_variant, acquisition_type=details.acquisition_type,
                      series_time=dwi_info.series_time)
    stored, slope, _ = acquisition.quantise(adc, subject.family, 4000.0 * 1.02)
    folder = series_folder(number, description)
    center = subject.center
    write_series(subject.dicom_dir / folder, [(None, stored)], geometry, info, subject.patient, center.vendor,
                 subject.family, center.model, center.field_strength_t, subject.uids, slope,
                 acquisition.VENDOR_SCALING[subject.family][1])
    return folder, stored.astype(np.float32) * np.float32(slope)


def _series_record(folder: str, geometry: acquisition.SeriesGeometry, motion: acquisition.Rigid,
                   shape: tuple[int, ...]) -> dict[str, Any]:
    """truth.json entry for one series: what dcm2niix should produce and the motion applied."""
    return {
        "series": folder,
        "shape": list(shape),
        "spacing_mm": [geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm],
        "slice_thickness_mm": geometry.thickness_mm,
        "orientation": geometry.axcodes(),
        "affine": np.round(geometry.affine(), 5).tolist(),
        "motion": motion.as_dict(),
    }


def _finish(task: SubjectTask, subject: SubjectContext, reference: str, dropped: list[str],
            sequences: dict[str, dict[str, Any]], images: dict[str, tuple[np.ndarray, acquisition.SeriesGeometry, np.ndarray]],
            ) -> SubjectResult:
    """Truth masks and truth.json on the reference grid, QC picture, and the sample-sheet row."""
    center, model, lesions, frame, patient = subject.center, subject.model, subject.lesions, subject.frame, subject.patient
    out = task.out_dir
    truth_dir = out / "truth" / center.name / task.subject
    image, geometry, _ = images[reference]
    affine = geometry.affine()
    brain = truth.fraction_mask(model.brain.view(np.uint8), model.affine, geometry, frame)
    infarct = truth.patch_mask(lesions.infarct, model.affine, model.shape, geometry, frame)
    record_thrombus: dict[str, Any] = {"present": False}
    if lesions.thrombus is not None:
        thrombus, counts = truth.thrombus_mask(lesions.thrombus, geometry, frame)
        record_thrombus = _thrombus_record(lesions, frame, geometry, counts, image, thrombus, brain)
    else:
        thrombus = np.zeros(geometry.shape, np.uint8)
    for name, mask in (("thrombus", thrombus), ("infarct", infarct), ("brain", brain)):
        save_array(mask, affine, truth_dir / f"{name}.nii.gz", dtype=np.uint8)
    voxel_ml = float(np.prod([geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm])) / 1000.0
    record = {
        "subject": task.subject,
        "center": center.name,
        "reference": reference,
        "grid": {"shape": list(geometry.shape), "affine": np.round(affine, 5).tolist(), "orientation": geometry.axcodes()},
        "thrombus": record_thrombus,
        "infarct": {"present": lesions.infarct is not None, "voxels": int(infarct.sum()),
                    "volume_ml": round(int(infarct.sum()) * voxel_ml, 3),
                    "adc_1e-6_mm2_s": round(lesions.infarct_adc, 1) if lesions.infarct is not None else None},
        "sequences": sequences,
        "dropped": dropped,
        "not_acquired_by_center": [s for s in SEQUENCES if s not in center.series and not (s == "adc" and "dwi" in center.series)],
        "lookalikes": lesions.lookalikes,
        "pose": {"matrix_mni_to_ras": np.round(frame.pose, 6).tolist(), "anatomy_warp_mm": task.preset.warp_mm},
    }
    write_json(truth_dir / "truth.json", record)
    dwi = images.get("dwi")
    dwi_infarct = truth.patch_mask(lesions.infarct, model.affine, model.shape, dwi[1], frame, dwi[2]) if dwi else None
    title = (f"{task.subject} (center {center.name}, {center.vendor} {center.field_strength_t:g} T), reference {reference}; "
             + (f"thrombus {record_thrombus['segment']} {record_thrombus['side']}, {record_thrombus['length_mm']:.1f} mm, "
                f"{record_thrombus['voxels']} voxels" if record_thrombus["present"] else "no thrombus"))
    qc.write_qc(out / "qc" / center.name / f"{task.subject}.png", title, image, affine, thrombus, infarct, brain, reference,
                dwi[0] if dwi else None, dwi[1].affine() if dwi else None, dwi_infarct)
    row = {column: "" for column in SHEET_COLUMNS}
    row.update(subject=task.subject, center=center.name, dicom_dir=f"dicom/{center.name}/{task.subject}",
               thrombus="1" if lesions.thrombus is not None else "0",
               thrombus_mask=f"truth/{center.name}/{task.subject}/thrombus.nii.gz",
               infarct_mask=f"truth/{center.name}/{task.subject}/infarct.nii.gz")
    for name, entry in sequences.items():
        row[name] = "auto" if task.auto_series else entry["series"]
    identifiers = {"subject": task.subject, "PatientName": patient.name, "PatientID": patient.patient_id,
                   "PatientBirthDate": patient.birth_date, "InstitutionName": patient.institution,
                   "AccessionNumber": patient.accession, "StationName": patient.station,
                   "ReferringPhysicianName": patient.referring_physician}
    summary = {"subject": task.subject, "center": center.name, "thrombus": record_thrombus, "sequences": sorted(sequences),
               "dropped": dropped, "infarct_ml": record["infarct"]["volume_ml"]}
    return SubjectResult(row=row, identifiers=identifiers, summary=summary)


def _thrombus_record(lesions: SubjectLesions, frame: acquisition.SubjectFrame, geometry: acquisition.SeriesGeometry,
                     counts: dict[str, int], image: np.ndarray, mask: np.ndarray, brain: np.ndarray) -> dict[str, Any]:
    """truth.json entry of the thrombus, with lengths and volumes in scanner mm (after pose and warp)."""
    clot = lesions.thrombus
    centreline = frame.template_to_world(clot.tube.dense(0.5).points.T)
    scale = float(np.cbrt(abs(np.linalg.det(frame.pose[:3, :3]))))
    length = float(np.linalg.norm(np.diff(centreline, axis=1), axis=0).sum()) + 2.0 * clot.radius_mm * scale
    radius = clot.radius_mm * scale
    volume = np.pi * radius**2 * (length - 2 * radius) + 4.0 / 3.0 * np.pi * radius**3
    voxel_ml = float(np.prod([geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm])) / 1000.0
    return {
        "present": True,
        "segment": clot.segment,
        "side": clot.side,
        "artery": clot.artery,
        "length_mm": round(length, 2),
        "radius_mm": round(radius, 3),
        "volume_ml": round(volume / 1000.0, 5),
        "voxels": counts["total"],
        "voxels_by_rule": counts,
        "mask_volume_ml": round(counts["total"] * voxel_ml, 5),
        "centre_ras_mm": np.round(centreline.mean(axis=1), 2).tolist(),
        "bloom_ratio": round(clot.bloom_ratio, 3),
        "susceptibility": round(clot.susceptibility, 3),
        "contrast": truth.thrombus_contrast(image, mask, brain, (geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm))
        if counts["total"] else None,
    }


def _write_sheet(path: Path, results: list[SubjectResult]) -> Path:
    lines = ["\t".join(SHEET_COLUMNS)] + ["\t".join(r.row[c] for c in SHEET_COLUMNS) for r in results]
    return write_text(path, "\n".join(lines) + "\n")


def _write_identifiers(path: Path, results: list[SubjectResult]) -> Path:
    """Every fake identifier written into the DICOM headers, for privacy tests of later steps."""
    return write_json(path, {"note": "fake identifiers written into the synthetic DICOM headers; none may reach any output",
                             "subjects": [r.identifiers for r in results]})


def _cohort_record(spec: Preset, seed: int, results: list[SubjectResult]) -> dict[str, Any]:
    centers = {}
    for index, center in enumerate(spec.centers):
        rows = [r.summary for r in results if r.summary["center"] == center.name]
        centers[center.name] = {
            "vendor": center.vendor, "model": center.model, "field_strength_t": center.field_strength_t,
            "reference": center.reference(spec.reference_priority), "acquires": list(center.series),
            "n_subjects": len(rows), "n_positive": sum(r["thrombus"]["present"] for r in rows),
            "sample_sheet_series": "auto" if index == 1 else "folder names",
            "subjects": rows,
        }
    return {"preset": spec.as_dict(), "seed": seed, "generator_version": GENERATOR_VERSION, "thrombus_version": __version__,
            "centers": centers}
