rule convert:
    """DICOM series -> NIfTI + scrubbed JSON sidecar (dcm2niix), one job per subject and sequence."""
    input:
        dicom=convert_source,
    output:
        nifti="results/convert/{center}/{subject}/{sequence}.nii.gz",
        sidecar="results/convert/{center}/{subject}/{sequence}.json",
    log:
        record="logs/convert/{center}/{subject}/{sequence}.json",
        console="logs/convert/{center}/{subject}/{sequence}.log",
    benchmark:
        "logs/benchmarks/convert/{center}/{subject}/{sequence}.tsv"
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
        " --sequence {wildcards.sequence} --dicom-dir {params.dicom_dir:q} --series {params.series:q}"
        " --patterns {params.patterns:q} {params.derive_adc} --out {output.nifti:q}"
        " --sidecar {output.sidecar:q} --record {log.record:q} 2> {log.console:q}"
