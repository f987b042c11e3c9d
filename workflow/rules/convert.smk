rule convert:
    """DICOM series -> NIfTI + scrubbed JSON sidecar (dcm2niix), every sequence of a subject in one job."""
    input:
        dicom=convert_sources,
    output:
        directory("results/convert/{center}/{subject}"),
    log:
        record="logs/convert/{center}/{subject}.json",
        console="logs/convert/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/convert/{center}/{subject}.tsv"
    params:
        series=convert_series,
        patterns=center_patterns,
        derive_adc="--derive-adc" if config["convert"]["derive_adc"] else "--no-derive-adc",
    threads: 1
    resources:
        mem_mb=mem_mb_for("convert"),
        runtime=10,
    conda:
        "../../envs/convert.yaml"
    shell:
        "thrombus convert --center {wildcards.center} --subject {wildcards.subject}"
        " --sources results/dicom/{wildcards.center}/{wildcards.subject} --series {params.series:q} --patterns {params.patterns:q}"
        " {params.derive_adc} --out-dir {output:q} --record {log.record:q} 2> {log.console:q}"


rule duplicate_scans:
    """Subjects whose converted series share a series UID or voxels: one scan under two pseudonyms."""
    input:
        [converted(subject) for subject in ALL_SUBJECTS],
    output:
        "results/qc/duplicate_scans.tsv",
    log:
        "logs/duplicate_scans.log",
    benchmark:
        "logs/benchmarks/duplicate_scans/all.tsv"
    params:
        labelled=[s.subject for s in ALL_SUBJECTS.values() if s.thrombus in ("0", "1")],
    threads: 1
    resources:
        mem_mb=mem_mb_for("duplicate_scans"),
        runtime=5,
    conda:
        "../../envs/convert.yaml"
    shell:
        "thrombus duplicate-scans --converted {input:q} --labelled {params.labelled:q} --out {output:q} 2> {log:q}"
