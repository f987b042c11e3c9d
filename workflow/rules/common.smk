# Bookkeeping done once: config and sample-sheet validation, wildcard constraints, input functions.
import json
import shlex

from snakemake.utils import validate

from thrombus import samples as sheets


validate(config, schema="../schemas/config.schema.yaml")
sheets.check_patterns(config)
_RAW_SHEET = sheets.read_sheet(config["samples"])
validate(_RAW_SHEET, schema="../schemas/samples.schema.yaml")
SHEET = sheets.check_sheet(_RAW_SHEET, config, source=config["samples"])
SUBJECTS = {s.subject: s for s in sheets.subjects(SHEET, config)}
ALL_SUBJECTS = {s.subject: s for s in sheets.subjects(SHEET, {**config, "center": None})}


def converted(subject):
    """The converted NIfTI of every sequence a subject has."""
    s = ALL_SUBJECTS[subject]
    return [f"results/convert/{s.center}/{s.subject}/{seq}.nii.gz" for seq in s.sequences]


def all_targets():
    """The final targets of the workflow: for now the preprocessed stacks and QC of every center."""
    return preprocess_targets()


def preprocess_targets():
    """Harmonised stacks, QC pictures, and each center's QC table and fingerprint."""
    centers = sorted({s.center for s in SUBJECTS.values()})
    stacks = [f"results/harmonise/{s.center}/{s.subject}/stack.nii.gz" for s in SUBJECTS.values()]
    return stacks + [f"results/qc/{c}/preprocess.tsv" for c in centers]


def reference_of(subject):
    """The subject's reference sequence: the first of its center's priority list that it has."""
    s = ALL_SUBJECTS[subject]
    return s.reference(sheets.reference_priority(config, s.center))


def mask_sequence_of(subject):
    """The sequence HD-BET runs on: the first of the skullstrip priority list the subject has."""
    s = ALL_SUBJECTS[subject]
    return s.reference(config["skullstrip"]["priority"] + list(s.sequences))


def registered_sequences(subject):
    """Every sequence of the subject except its reference."""
    reference = reference_of(subject)
    return [seq for seq in ALL_SUBJECTS[subject].sequences if seq != reference]


def skullstrip_image(wildcards):
    s = ALL_SUBJECTS[wildcards.subject]
    return f"results/convert/{s.center}/{s.subject}/{mask_sequence_of(s.subject)}.nii.gz"


def skullstrip_sequence(wildcards):
    return mask_sequence_of(wildcards.subject)


def reference_image(wildcards):
    s = ALL_SUBJECTS[wildcards.subject]
    return f"results/convert/{s.center}/{s.subject}/{reference_of(s.subject)}.nii.gz"


def register_inputs(wildcards):
    """Reference and moving image, plus the mask that steers the metric.

    The sequence HD-BET ran on is registered with its own (moving) brain mask, since the reference-grid
    mask is made from its transform; every other sequence uses the reference-grid mask. ADC also gets
    the DWI image and transform, reused when both share one grid.
    """
    s, seq = ALL_SUBJECTS[wildcards.subject], wildcards.sequence
    base = f"results/convert/{s.center}/{s.subject}"
    inputs = {"reference": reference_image(wildcards), "moving": f"{base}/{seq}.nii.gz"}
    if seq == mask_sequence_of(s.subject):
        inputs["moving_mask"] = f"results/skullstrip/{s.center}/{s.subject}/brain_mask_native.nii.gz"
    else:
        inputs["fixed_mask"] = f"results/register/{s.center}/{s.subject}/brain_mask.nii.gz"
    if seq == "adc" and "dwi" in registered_sequences(s.subject):
        inputs["partner_image"] = f"{base}/dwi.nii.gz"
        inputs["partner_transform"] = f"results/register/{s.center}/{s.subject}/dwi.mat"
        inputs["partner_record"] = f"results/register/{s.center}/{s.subject}/dwi.json"
    return inputs


def optional_flags(inputs, names):
    """`--flag 'path'` for each optional named input the job has (quoted for the shell)."""
    present = inputs.keys()
    return " ".join(f"--{flag} {shlex.quote(str(inputs[key]))}" for flag, key in names if key in present)


def register_flags(wildcards, input):
    return optional_flags(
        input,
        [("fixed-mask", "fixed_mask"), ("moving-mask", "moving_mask"),
         ("partner-image", "partner_image"), ("partner-transform", "partner_transform"),
         ("partner-record", "partner_record")],
    )


def brainmask_flags(wildcards, input):
    return optional_flags(input, [("transform", "transform")])


def reference_sequence(wildcards):
    return reference_of(wildcards.subject)


def brainmask_inputs(wildcards):
    """The native mask, the reference, and the mask sequence's transform unless it is the reference."""
    s = ALL_SUBJECTS[wildcards.subject]
    inputs = {
        "native_mask": f"results/skullstrip/{s.center}/{s.subject}/brain_mask_native.nii.gz",
        "reference": reference_image(wildcards),
    }
    mask_seq = mask_sequence_of(s.subject)
    if mask_seq != reference_of(s.subject):
        inputs["transform"] = f"results/register/{s.center}/{s.subject}/{mask_seq}.mat"
    return inputs


def harmonise_inputs(wildcards):
    s = ALL_SUBJECTS[wildcards.subject]
    root = f"results/register/{s.center}/{s.subject}"
    others = registered_sequences(s.subject)
    inputs = {
        "reference": reference_image(wildcards),
        "brain_mask": f"{root}/brain_mask.nii.gz",
        "images": [f"{root}/{seq}.nii.gz" for seq in others],
        "records": [f"{root}/{seq}.json" for seq in others],
    }
    if config["harmonise"]["method"] == "histogram":
        inputs["scales"] = "results/harmonise/histogram_scales.json"
    return inputs


def harmonise_flags(wildcards, input):
    return optional_flags(input, [("scales", "scales")])


def histogram_subjects():
    """Subjects whose images define the standard histogram scale (every center unless listed)."""
    centers = config["harmonise"]["histogram_centers"]
    return [s for s in ALL_SUBJECTS.values() if not centers or s.center in centers]


def histogram_images(subject):
    """A subject's images on the reference grid, by sequence: the reference and the registered ones."""
    s = ALL_SUBJECTS[subject]
    images = {reference_of(subject): f"results/convert/{s.center}/{s.subject}/{reference_of(subject)}.nii.gz"}
    images.update({seq: f"results/register/{s.center}/{s.subject}/{seq}.nii.gz" for seq in registered_sequences(subject)})
    return images


def learn_histograms_inputs(wildcards):
    """Brain masks and reference-grid images of the training subjects (grouped by folder in the CLI)."""
    subjects = histogram_subjects()
    return {
        "masks": [f"results/register/{s.center}/{s.subject}/brain_mask.nii.gz" for s in subjects],
        "images": [path for s in subjects for path in histogram_images(s.subject).values()],
    }


def harmonise_sequences(wildcards):
    return " ".join(registered_sequences(wildcards.subject))


def center_subjects(center):
    return [s for s in SUBJECTS.values() if s.center == center]


def qc_center_inputs(wildcards):
    subjects = center_subjects(wildcards.center)
    return {
        "skullstrip": [f"results/skullstrip/{s.center}/{s.subject}/record.json" for s in subjects],
        "register": [f"results/register/{s.center}/{s.subject}/{seq}.json" for s in subjects for seq in registered_sequences(s.subject)],
        "summaries": [f"results/harmonise/{s.center}/{s.subject}/stack.json" for s in subjects],
    }


def convert_source(wildcards):
    """The DICOM folder a convert job reads: the series folder, or the subject's folder for `auto`."""
    return sheets.series_folder(ALL_SUBJECTS[wildcards.subject], wildcards.sequence)


def convert_series(wildcards):
    return ALL_SUBJECTS[wildcards.subject].series[wildcards.sequence]


def convert_dicom_dir(wildcards):
    return ALL_SUBJECTS[wildcards.subject].dicom_dir


def center_patterns(wildcards):
    """The series-description patterns of the subject's center, as JSON for the command line."""
    return json.dumps(sheets.series_patterns(config, ALL_SUBJECTS[wildcards.subject].center), sort_keys=True)
