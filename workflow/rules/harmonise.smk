rule harmonise:
    """Normalised channel stack on the reference grid, its availability vector, and a QC picture."""
    input:
        unpack(harmonise_inputs),
    output:
        stack="results/harmonise/{center}/{subject}/stack.nii.gz",
        summary="results/harmonise/{center}/{subject}/stack.json",
        png=report(
            "results/qc/{center}/{subject}/preprocess.png",
            category="QC",
            labels={"center": "{center}", "subject": "{subject}"},
        ),
    log:
        record="logs/harmonise/{center}/{subject}.json",
        console="logs/harmonise/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/harmonise/{center}/{subject}.tsv"
    params:
        reference=reference_image,
        reference_sequence=reference_sequence,
        sequences=harmonise_sequences,
        scales=harmonise_flags,
        options=json.dumps(config["harmonise"]),
    threads: config["threads"]["harmonise"]
    resources:
        mem_mb=mem_mb_for("harmonise"),
        runtime=10,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus harmonise --center {wildcards.center} --subject {wildcards.subject}"
        " --reference {params.reference:q} --reference-sequence {params.reference_sequence}"
        " --brain-mask {input.brain_mask:q} --sequences {params.sequences} --images {input.images:q}"
        " --records {input.records:q} --options {params.options:q} {params.scales} --out-stack {output.stack:q}"
        " --out-json {output.summary:q} --out-png {output.png:q} --record {log.record:q} 2> {log.console:q}"


rule learn_histograms:
    """Standard histogram scale per channel from the training centers (harmonise.method: histogram)."""
    input:
        unpack(learn_histograms_inputs),
    output:
        "results/harmonise/histogram_scales.json",
    log:
        "logs/learn_histograms.log",
    benchmark:
        "logs/benchmarks/learn_histograms/all.tsv"
    params:
        images=learn_histograms_images,
        options=json.dumps(config["harmonise"]),
    threads: 1
    resources:
        mem_mb=mem_mb_for("learn_histograms"),
        runtime=20,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus learn-histograms --masks {input.masks:q} --images {params.images}"
        " --options {params.options:q} --out {output:q} 2> {log:q}"


rule qc_center:
    """Per-center table of registration metrics and brain volumes (outliers flagged) and the fingerprint."""
    input:
        unpack(qc_center_inputs),
    output:
        table="results/qc/{center}/preprocess.tsv",
        fingerprint="results/harmonise/{center}/fingerprint.json",
    log:
        "logs/qc_center/{center}.log",
    benchmark:
        "logs/benchmarks/qc_center/{center}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_for("qc_center"),
        runtime=5,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus qc-center --center {wildcards.center} --skullstrip {input.skullstrip:q}"
        " --register {input.register:q} --summaries {input.summaries:q}"
        " --out-table {output.table:q} --out-fingerprint {output.fingerprint:q} 2> {log:q}"
