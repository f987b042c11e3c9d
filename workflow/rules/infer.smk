rule calibrate:
    """Threshold and smallest component of a fold's model, chosen with best.pt on its validation subjects,
    with every sequence and with each sequence subset the experiment's tables test."""
    input:
        unpack(calibrate_inputs),
    output:
        "results/models/{experiment}/fold{fold}/postprocessing.json",
    log:
        "logs/calibrate/{experiment}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/calibrate/{experiment}/fold{fold}.tsv"
    wildcard_constraints:
        fold="[0-9]+",
    params:
        sheet=SHEET_PARAM,
        splits=experiment_splits,  # read, not an input: new test subjects do not change the calibration
        checkpoint="results/models/{experiment}/fold{fold}/best.pt",  # also an input; named here for the command
        lesion_gate=json.dumps(config["lesion_gate"], sort_keys=True),
        subsets=experiment_subsets,
    threads: config["threads"]["infer"]
    resources:
        mem_mb=calibrate_mem_mb,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus calibrate --sheet {params.sheet:q} --stacks-root . --splits {params.splits:q} --fold {wildcards.fold}"
        " --checkpoint {params.checkpoint:q} --lesion-gate {params.lesion_gate:q} --subsets {params.subsets:q} --out {output:q} --threads {threads} --quiet 2> {log:q}"


rule infer:
    """Probability maps and masks of a fold's test subjects with every sequence subset its tables show; GPU on the cluster."""
    input:
        unpack(infer_inputs),
    output:
        directory("results/heldout/{experiment}/fold{fold}"),
    log:
        "logs/infer/{experiment}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/infer/{experiment}/fold{fold}.tsv"
    wildcard_constraints:
        fold="[0-9]+",
    params:
        sheet=SHEET_PARAM,
        harmonise=json.dumps(config["harmonise"]),
        subsets=experiment_subsets,
        lesion_gate=json.dumps(config["lesion_gate"], sort_keys=True),
        # the inputs' paths, for the command: the inputs are known only once the split checkpoint ran
        splits=experiment_splits,
        model="results/models/{experiment}/fold{fold}",
    threads: config["threads"]["infer"]
    resources:
        mem_mb=infer_mem_mb,
        runtime=30,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus predict-fold --sheet {params.sheet:q} --stacks-root . --splits {params.splits:q} --fold {wildcards.fold}"
        " --checkpoint {params.model:q}/best.pt --postprocessing {params.model:q}/postprocessing.json --harmonise {params.harmonise:q}"
        " --subsets {params.subsets:q} --lesion-gate {params.lesion_gate:q} --out-dir {output:q} --threads {threads} 2> {log:q}"


rule evaluate:
    """Per-subject metrics of one experiment and fold, every subset, against the reference masks."""
    input:
        predictions="results/heldout/{experiment}/fold{fold}",
        card="results/models/{experiment}/fold{fold}/model_card.json",
    output:
        table="results/evaluation/{experiment}/fold{fold}.tsv",
        record="results/evaluation/{experiment}/fold{fold}.json",
    log:
        "logs/evaluate/{experiment}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/evaluate/{experiment}/fold{fold}.tsv"
    wildcard_constraints:
        fold="[0-9]+",
    params:
        sheet=SHEET_PARAM,
        options=json.dumps(config["evaluation"], sort_keys=True),
    threads: 1
    resources:
        mem_mb=mem_mb_for("evaluate"),
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus evaluate --sheet {params.sheet:q} --fold {wildcards.fold} --card {input.card:q}"
        " --predictions {input.predictions:q} --experiment {wildcards.experiment}"
        " --options {params.options:q} --out {output.table:q} --record {output.record:q} 2> {log:q}"


rule tables:
    """One result table (overall, per center, and paired against its first experiment; CSV + Markdown + LaTeX) with its figures."""
    input:
        unpack(table_inputs),
    output:
        csv="results/tables/{table}.csv",
        md="results/tables/{table}.md",
        tex="results/tables/{table}.tex",
        html=report("results/tables/{table}.html", category="Tables", labels={"table": "{table}", "rows": "overall"}),
        centers="results/tables/{table}_per_center.csv",
        centers_md="results/tables/{table}_per_center.md",
        centers_tex="results/tables/{table}_per_center.tex",
        centers_html=report(
            "results/tables/{table}_per_center.html", category="Tables", labels={"table": "{table}", "rows": "per center"}
        ),
        subjects="results/tables/{table}_subjects.tsv",
        paired="results/tables/{table}_paired.csv",
        paired_md="results/tables/{table}_paired.md",
        paired_tex="results/tables/{table}_paired.tex",
        paired_html=report(
            "results/tables/{table}_paired.html", category="Tables", labels={"table": "{table}", "rows": "paired against the first experiment"}
        ),
        boxplots=report("results/tables/figures/{table}_boxplots.png", category="Figures", labels={"table": "{table}", "figure": "box plots"}),
        overlays=report("results/tables/figures/{table}_overlays.png", category="Figures", labels={"table": "{table}", "figure": "overlays"}),
    log:
        "logs/tables/{table}.log",
    benchmark:
        "logs/benchmarks/tables/{table}.tsv"
    params:
        title=table_title,
        experiments=table_experiments,
        subsets=table_subsets,
        sheet=SHEET_PARAM,
        options=json.dumps(config["evaluation"], sort_keys=True),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb_for("tables"),
        runtime=10,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus tables --table {wildcards.table} --title {params.title:q} --experiments {params.experiments}"
        " --subsets {params.subsets} --evaluations {input.evaluations:q} --records {input.records:q}"
        " --sheet {params.sheet:q} --stacks-root . --options {params.options:q} --seed {params.seed} --out-dir results/tables 2> {log:q}"


rule predict:
    """A subject without a label (new data): probability map and mask from the configured model."""
    input:
        unpack(predict_inputs),
    output:
        probability="results/predictions/{center}/{subject}/probability.nii.gz",
        mask="results/predictions/{center}/{subject}/mask.nii.gz",
        record="results/predictions/{center}/{subject}/record.json",
    log:
        "logs/predict/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/predict/{center}/{subject}.tsv"
    params:
        harmonise=json.dumps(config["harmonise"]),
        lesion_gate=json.dumps(config["lesion_gate"], sort_keys=True),
        adc=predict_adc_flag,
    threads: config["threads"]["infer"]
    resources:
        mem_mb=infer_mem_mb,
        runtime=15,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus predict --subject {wildcards.subject} --center {wildcards.center} --checkpoint {input.checkpoint:q}"
        " --postprocessing {input.postprocessing:q} --stack {input.stack:q} --summary {input.summary:q}"
        " --harmonise {params.harmonise:q} --lesion-gate {params.lesion_gate:q} {params.adc}"
        " --out-probability {output.probability:q} --out-mask {output.mask:q} --record {output.record:q} --threads {threads} 2> {log:q}"


rule measure:
    """A new subject's readout: each component's volume, length, width, side, MNI centroid and segment."""
    input:
        mask="results/predictions/{center}/{subject}/mask.nii.gz",
        probability="results/predictions/{center}/{subject}/probability.nii.gz",
        record="results/predictions/{center}/{subject}/record.json",
        stack="results/harmonise/{center}/{subject}/stack.nii.gz",
    output:
        measurements="results/predictions/{center}/{subject}/measurements.json",
        transform="results/predictions/{center}/{subject}/to_mni.mat",
    log:
        "logs/measure/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/measure/{center}/{subject}.tsv"
    params:
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=mem_mb_for("measure"),
        runtime=10,
    conda:
        "../../envs/preprocess.yaml"
    shell:
        "thrombus measure --subject {wildcards.subject} --center {wildcards.center} --mask {input.mask:q}"
        " --probability {input.probability:q} --stack {input.stack:q} --record {input.record:q}"
        " --out {output.measurements:q} --out-transform {output.transform:q} --threads {threads} --seed {params.seed}"
        " 2> {log:q}"


rule measurements:
    """A center's predicted thrombi, one row per new subject: volume, length, width, side, centroid."""
    input:
        center_measurements,
    output:
        "results/predictions/{center}/measurements.tsv",
    log:
        "logs/measurements/{center}.log",
    benchmark:
        "logs/benchmarks/measurements/{center}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_for("measurements"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus measurements --inputs {input:q} --out {output:q} 2> {log:q}"


rule dicom_seg:
    """A new subject's mask as a DICOM Segmentation over its reference series (pseudonymised), for PACS."""
    input:
        mask="results/predictions/{center}/{subject}/mask.nii.gz",
        converted=converted_of,
        sources=reference_source,
    output:
        "results/predictions/{center}/{subject}/thrombus_seg.dcm",
    log:
        "logs/dicom_seg/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/dicom_seg/{center}/{subject}.tsv"
    params:
        sidecar=reference_sidecar,
    threads: 1
    resources:
        mem_mb=mem_mb_for("dicom_seg"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus dicom-seg --mask {input.mask:q} --sources {input.sources:q} --sidecar {params.sidecar:q}"
        " --subject {wildcards.subject} --center {wildcards.center} --out {output:q} 2> {log:q}"


rule prediction_figure:
    """A new subject's prediction on its susceptibility channel, sides marked, zoomed on the thrombus."""
    input:
        stack="results/harmonise/{center}/{subject}/stack.nii.gz",
        mask="results/predictions/{center}/{subject}/mask.nii.gz",
    output:
        report(
            "results/predictions/{center}/{subject}/overview.png",
            category="Predictions",
            labels={"center": "{center}", "subject": "{subject}"},
        ),
    log:
        "logs/prediction_figure/{center}/{subject}.log",
    benchmark:
        "logs/benchmarks/prediction_figure/{center}/{subject}.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_for("prediction_figure"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus prediction-figure --stack {input.stack:q} --mask {input.mask:q} --subject {wildcards.subject}"
        " --center {wildcards.center} --out {output:q} 2> {log:q}"


rule bids_description:
    """dataset_description.json of the BIDS-Derivatives dataset of new subjects' predictions."""
    output:
        "results/bids/dataset_description.json",
    log:
        "logs/bids/dataset_description.log",
    benchmark:
        "logs/benchmarks/bids_description/all.tsv"
    threads: 1
    resources:
        mem_mb=mem_mb_for("bids_description"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus bids --root results/bids 2> {log:q}"


rule bids_subject:
    """A new subject's mask (with its readout) and probability map as BIDS derivatives, space-<reference>."""
    input:
        unpack(bids_subject_inputs),
    output:
        multiext(
            "results/bids/sub-{subject}/anat/sub-{subject}_space-{reference}_label-thrombus",
            "_mask.nii.gz", "_mask.json", "_probseg.nii.gz", "_probseg.json",
        ),
    log:
        "logs/bids/{subject}_{reference}.log",
    benchmark:
        "logs/benchmarks/bids_subject/{subject}_{reference}.tsv"
    params:
        center=lambda wildcards: ALL_SUBJECTS[wildcards.subject].center,
    threads: 1
    resources:
        mem_mb=mem_mb_for("bids_subject"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus bids --root results/bids --subject {wildcards.subject} --center {params.center:q}"
        " --reference {wildcards.reference} --mask {input.mask:q} --probability {input.probability:q}"
        " --measurements {input.measurements:q} 2> {log:q}"
