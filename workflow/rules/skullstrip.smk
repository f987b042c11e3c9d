rule skullstrip:
    """HD-BET brain mask on the subject's mask sequence (first of skullstrip.priority it has), on its own grid."""
    input:
        converted=converted_of,
    output:
        mask="results/skullstrip/{center}/{subject}/brain_mask_native.nii.gz",
        record="results/skullstrip/{center}/{subject}/record.json",
    log:
        "logs/skullstrip/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/skullstrip/{center}/{subject}.tsv"
    params:
        image=skullstrip_image,
        sequence=skullstrip_sequence,
        options=json.dumps(config["skullstrip"], sort_keys=True),
    threads: config["threads"]["skullstrip"]
    resources:
        mem_mb=mem_mb_for("skullstrip"),
        runtime=20,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus skullstrip --center {wildcards.center} --subject {wildcards.subject} --sequence {params.sequence}"
        " --image {params.image:q} --out-mask {output.mask:q} --options {params.options:q}"
        " --threads {threads} --record {output.record:q} 2> {log:q}"
