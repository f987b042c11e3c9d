# thrombus: multi-center thrombus segmentation on stroke MRI.
# Table of contents only: the rules live in workflow/rules/, the logic in the `thrombus` package.
from snakemake.utils import min_version

from thrombus import SEQUENCES

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"


wildcard_constraints:
    center="[A-Za-z0-9]+",
    subject="[A-Za-z0-9]+",
    sequence="|".join(SEQUENCES),
    experiment=names_pattern(EXPERIMENTS),
    table=names_pattern(config["tables"]),


include: "workflow/rules/convert.smk"
include: "workflow/rules/skullstrip.smk"
include: "workflow/rules/register.smk"
include: "workflow/rules/harmonise.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"


# targets and table assembly run on the submit host, not as cluster jobs
localrules:
    all,
    convert_all,
    duplicate_scans,
    measurements,
    bids_description,
    bids_subject,
    preprocess,
    qc_center,
    splits,
    tables,
    models,


rule all:
    input:
        all_targets(),
    default_target: True


rule convert_all:
    """Only the conversion of every subject (one center with --config center=X)."""
    input:
        [converted(subject) for subject in SUBJECTS],


rule preprocess:
    """Conversion, skull stripping, registration and harmonisation (one center with --config center=X)."""
    input:
        preprocess_targets(),


rule models:
    """Every model the tables need, trained (and calibrated on its validation subjects)."""
    input:
        model_targets(),
