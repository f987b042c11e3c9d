# Bookkeeping done once: config and sample-sheet validation, wildcard constraints, input functions.
import json

from snakemake.utils import validate

from thrombus import samples as sheets


validate(config, schema="../schemas/config.schema.yaml")
sheets.check_patterns(config)
_RAW_SHEET = sheets.read_sheet(config["samples"])
validate(_RAW_SHEET, schema="../schemas/samples.schema.yaml")
SHEET = sheets.check_sheet(_RAW_SHEET, config, source=config["samples"])
SUBJECTS = {s.subject: s for s in sheets.subjects(SHEET, config)}


def converted(subject):
    """The converted NIfTI of every sequence a subject has."""
    s = SUBJECTS[subject]
    return [f"results/convert/{s.center}/{s.subject}/{seq}.nii.gz" for seq in s.sequences]


def all_targets():
    """The final targets of the workflow: for now every converted sequence of every subject."""
    return [path for subject in SUBJECTS for path in converted(subject)]


def convert_source(wildcards):
    """The DICOM folder a convert job reads: the series folder, or the subject's folder for `auto`."""
    return sheets.series_folder(SUBJECTS[wildcards.subject], wildcards.sequence)


def convert_series(wildcards):
    return SUBJECTS[wildcards.subject].series[wildcards.sequence]


def convert_dicom_dir(wildcards):
    return SUBJECTS[wildcards.subject].dicom_dir


def center_patterns(wildcards):
    """The series-description patterns of the subject's center, as JSON for the command line."""
    return json.dumps(sheets.series_patterns(config, SUBJECTS[wildcards.subject].center), sort_keys=True)
