# thrombus: multi-center thrombus segmentation on stroke MRI.
# Table of contents only: the rules live in workflow/rules/, the logic in the `thrombus` package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/convert.smk"


rule all:
    input:
        all_targets(),
    default_target: True
