# Training: the split file of each split kind (written once and kept) and one model per experiment and fold.
#
# The split file is flagged update(): Snakemake leaves it in place when the rule reruns (a changed seed,
# say), and `thrombus splits` then keeps it as it is, adds new subjects as test subjects, or refuses it
# when subjects were removed or relabelled; new splits are made only by deleting the file. Training and
# calibration read the fold's subjects from it (a checkpoint) but do not depend on the file itself. best.pt and latest.pt are update() too, so that with
# `train.resume: true` (the default) a killed training job continues from its last checkpoint.


checkpoint splits:
    """Center-aware split file of one split kind (monocentric or loco), kept once written; subjects added
    to the sheet later join it as test subjects. A checkpoint: the folds' inputs are read from it."""
    output:
        update("results/splits/{split}.json"),
    log:
        "logs/splits/{split}.log",
    benchmark:
        "logs/benchmarks/splits/{split}.tsv"
    wildcard_constraints:
        split="monocentric|loco",
    params:
        sheet=SHEET_PARAM,
        options=split_options(),
        seed=config["seed"],
        labelled=labelled_subjects_param(),  # not on the command line: reruns the step when subjects change
    threads: 1
    resources:
        mem_mb=mem_mb_for("splits"),
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus splits --sheet {params.sheet:q} --experiment {wildcards.split} --options {params.options:q}"
        " --seed {params.seed} --out {output:q} 2> {log:q}"


rule train:
    """One fold of an experiment: its model trained with (gradual) modality dropout; GPU on the cluster."""
    input:
        unpack(train_inputs),
    output:
        best=update("results/models/{experiment}/fold{fold}/best.pt"),
        latest=update("results/models/{experiment}/fold{fold}/latest.pt"),
        card="results/models/{experiment}/fold{fold}/model_card.json",
        log_csv="results/models/{experiment}/fold{fold}/training_log.csv",
        curves=report(
            "results/models/{experiment}/fold{fold}/learning_curves.png",
            category="Training",
            subcategory="{experiment}",
            labels={"experiment": "{experiment}", "fold": "{fold}"},
        ),
    log:
        "logs/train/{experiment}/fold{fold}.log",
    benchmark:
        "logs/benchmarks/train/{experiment}/fold{fold}.tsv"
    wildcard_constraints:
        fold="[0-9]+",
    params:
        sheet=SHEET_PARAM,
        splits=experiment_splits,  # read, not an input: a split file grown by new test subjects retrains nothing
        options=train_options,
        # not key-sorted: the order of harmonise.channels is the stacks' channel order, the model's too
        harmonise=json.dumps(config["harmonise"]),
        seed=experiment_seed,
        resume=resume_flag,
        out_dir="results/models/{experiment}/fold{fold}",
    threads: config["threads"]["train"]
    resources:
        mem_mb=train_mem_mb,
        runtime=train_runtime,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus train --sheet {params.sheet:q} --stacks-root . --splits {params.splits:q} --fold {wildcards.fold}"
        " --options {params.options:q} --harmonise {params.harmonise:q} --out-dir {params.out_dir:q}"
        " --threads {threads} --seed {params.seed} {params.resume} 2> {log:q}"
