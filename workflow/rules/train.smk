# Training: the split file of each experiment (written once and kept) and one model per experiment and fold.
#
# The split file is flagged update(): Snakemake leaves it in place when the rule reruns (a changed seed,
# say), and `thrombus splits` then keeps it as it is, or refuses it when the subjects changed; new
# splits are made only by deleting the file. best.pt and latest.pt are update() too, so that with
# `train.resume: true` and `snakemake --keep-incomplete` a killed training job continues where its
# last checkpoint left it.
import os

#: Keys of the train section that only steer the workflow (they must not retrigger training).
TRAIN_WORKFLOW_KEYS = ("experiments", "resume")


def labelled_subjects():
    """Subjects with a thrombus label (1 or 0): the ones the split files hold."""
    return [s for s in ALL_SUBJECTS.values() if s.thrombus in ("0", "1")]


def train_inputs(wildcards):
    """The split file, every labelled subject's stack, and the thrombus masks that exist.

    A fold's subjects are only known once the split file exists; every labelled stack is required
    instead of a checkpoint rule, which costs nothing since preprocessing needs them all anyway.
    """
    subjects = labelled_subjects()
    return {
        "splits": f"results/splits/{wildcards.experiment}.json",
        "stacks": [f"results/harmonise/{s.center}/{s.subject}/stack.nii.gz" for s in subjects],
        "masks": [s.thrombus_mask for s in subjects if s.thrombus_mask and os.path.exists(s.thrombus_mask)],
    }


def split_options():
    """The split fractions only, so that other train settings never touch the split file."""
    return json.dumps({key: config["train"][key] for key in ("val_fraction", "test_fraction")})


def train_options():
    """The train and model sections as the training reads them (workflow-only keys left out)."""
    train = {key: value for key, value in config["train"].items() if key not in TRAIN_WORKFLOW_KEYS}
    return json.dumps({"train": train, "model": config["model"]})


rule splits:
    """Center-aware split file of one experiment (monocentric or loco), kept once written."""
    output:
        update("results/splits/{experiment}.json"),
    log:
        "logs/splits/{experiment}.log",
    wildcard_constraints:
        experiment="monocentric|loco",
    params:
        sheet=config["samples"],
        options=split_options(),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus splits --sheet {params.sheet:q} --experiment {wildcards.experiment} --options {params.options:q}"
        " --seed {params.seed} --out {output:q} 2> {log:q}"


rule train:
    """One fold of an experiment: the configured model trained with gradual modality dropout."""
    input:
        unpack(train_inputs),
    output:
        best=update("results/models/{experiment}/fold{fold}/best.pt"),
        latest=update("results/models/{experiment}/fold{fold}/latest.pt"),
        card="results/models/{experiment}/fold{fold}/model_card.json",
        log_csv="results/models/{experiment}/fold{fold}/training_log.csv",
        curves="results/models/{experiment}/fold{fold}/learning_curves.png",
    log:
        "logs/train/{experiment}/fold{fold}.log",
    wildcard_constraints:
        experiment="monocentric|loco",
        fold="[0-9]+",
    params:
        sheet=config["samples"],
        options=train_options(),
        harmonise=json.dumps(config["harmonise"]),
        seed=config["seed"],
        resume="--resume" if config["train"]["resume"] else "",
        out_dir="results/models/{experiment}/fold{fold}",
    threads: config["threads"]["train"]
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        "../../envs/train.yaml"
    shell:
        "thrombus train --sheet {params.sheet:q} --stacks-root . --splits {input.splits:q} --fold {wildcards.fold}"
        " --options {params.options:q} --harmonise {params.harmonise:q} --out-dir {params.out_dir:q}"
        " --threads {threads} --seed {params.seed} {params.resume} 2> {log:q}"
