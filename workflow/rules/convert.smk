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
        dicom_dir=convert_dicom_dir,
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
        " --dicom-dir {params.dicom_dir:q} --series {params.series:q} --patterns {params.patterns:q}"
        " {params.derive_adc} --out-dir {output:q} --record {log.record:q} 2> {log.console:q}"
