# Bookkeeping done once: config and sample-sheet validation, wildcard constraints, input functions.
import json
import os
import shlex

from snakemake.utils import validate

from thrombus import experiments as exps
from thrombus import resources
from thrombus import samples as sheets
from thrombus.training import pretrained


validate(config, schema="../schemas/config.schema.yaml")
sheets.check_patterns(config)
_RAW_SHEET = sheets.read_sheet(config["samples"])
validate(_RAW_SHEET, schema="../schemas/samples.schema.yaml")
SHEET = sheets.check_sheet(_RAW_SHEET, config, source=config["samples"])
SUBJECTS = {s.subject: s for s in sheets.subjects(SHEET, config)}
ALL_SUBJECTS = {s.subject: s for s in sheets.subjects(SHEET, {**config, "center": None})}
sheets.link_sources(ALL_SUBJECTS.values(), source=config["samples"])
# The sheet as a rule parameter is relative to the working folder when it lies inside it, so that a project
# moved with its sheet keeps its parameters and reruns nothing.
SHEET_PARAM = sheets.portable_path(config["samples"])
LABELLED = exps.labelled(ALL_SUBJECTS.values())
exps.check_tables(config, list(config["harmonise"]["channels"]))
# No labelled subject (new data only): nothing to train or evaluate, preprocessing still runs.
EXPERIMENTS = exps.experiments(config, LABELLED) if LABELLED else {}


def names_pattern(names):
    """A wildcard constraint matching exactly these names (and nothing when there are none)."""
    return "|".join(sorted(names)) or "(?!)"


def converted(subject):
    """The subject's conversion folder (one job converts all its sequences into it).

    Downstream jobs take the folder as their input and the images in it as parameters: Snakemake
    tracks a directory output as one file.
    """
    s = ALL_SUBJECTS[subject]
    return f"results/convert/{s.center}/{s.subject}"


def converted_image(subject, sequence):
    """A converted image, inside the subject's conversion folder."""
    return f"{converted(subject)}/{sequence}.nii.gz"


def converted_of(wildcards):
    return converted(wildcards.subject)


def all_targets():
    """Preprocessed stacks and QC of every center, and the result tables.

    With `--config center=X` only that center's preprocessing: models and tables need every center,
    and a run for one center must not touch the others.
    """
    if config.get("center"):
        return preprocess_targets()
    cohort = preprocess_targets() + ["results/qc/duplicate_scans.tsv"]
    if not EXPERIMENTS:
        return cohort + prediction_targets()
    return cohort + table_targets() + prediction_targets()


def unlabelled_subjects():
    """Subjects of the run without a thrombus label: new data to predict, never trained or scored on."""
    return [s for s in SUBJECTS.values() if s.thrombus not in ("0", "1")]


def prediction_targets():
    """The masks of the unlabelled subjects, when a model for them is configured and can exist."""
    if not unlabelled_subjects() or not (config["inference"]["checkpoint"] or EXPERIMENTS):
        return []
    folders = [f"results/predictions/{s.center}/{s.subject}" for s in unlabelled_subjects()]
    centers = sorted({s.center for s in unlabelled_subjects()})
    bids = [f"results/bids/sub-{s.subject}/anat/sub-{s.subject}_space-{reference_of(s.subject)}_label-thrombus_mask.nii.gz"
            for s in unlabelled_subjects()]
    # a DICOM SEG references the reference series' DICOM instances: none when the sheet gave NIfTI (BIDS)
    segs = [f"results/predictions/{s.center}/{s.subject}/thrombus_seg.dcm" for s in unlabelled_subjects()
            if not sheets.is_nifti(sheets.series_folder(s, reference_of(s.subject)))]
    return ([f"{f}/{name}" for f in folders for name in ("mask.nii.gz", "overview.png")] + segs + bids
            + [f"results/predictions/{c}/measurements.tsv" for c in centers])


def bids_subject_inputs(wildcards):
    """The dataset's description, and the subject's prediction, readout and probability map."""
    s = ALL_SUBJECTS[wildcards.subject]
    folder = f"results/predictions/{s.center}/{s.subject}"
    return {"description": "results/bids/dataset_description.json", "mask": f"{folder}/mask.nii.gz",
            "probability": f"{folder}/probability.nii.gz", "measurements": f"{folder}/measurements.json"}


def reference_source(wildcards):
    """The source link of the subject's reference sequence (its DICOM, for the SEG object's references)."""
    return str(sheets.source_link(ALL_SUBJECTS[wildcards.subject], reference_of(wildcards.subject)))


def reference_sidecar(wildcards):
    return f"{converted(wildcards.subject)}/{reference_of(wildcards.subject)}.json"


def center_measurements(wildcards):
    """measurements.json of each unlabelled subject of the center."""
    return [f"results/predictions/{s.center}/{s.subject}/measurements.json"
            for s in unlabelled_subjects() if s.center == wildcards.center]


def inference_model():
    """The checkpoint and postprocessing file that predict new data (checked against the config at start-up)."""
    settings = config["inference"]
    if settings["checkpoint"]:
        weights = settings["checkpoint"]
        return {"checkpoint": weights, "postprocessing": os.path.join(os.path.dirname(weights), "postprocessing.json")}
    experiment = EXPERIMENTS.get(settings["experiment"])
    if experiment is None or settings["fold"] not in experiment.folds:
        raise ValueError(
            f"inference: experiment {settings['experiment']!r} fold {settings['fold']} is not among the configured "
            f"experiments and folds ({', '.join(f'{e.name} {list(e.folds)}' for e in EXPERIMENTS.values())}); "
            "set inference.experiment / inference.fold, or inference.checkpoint"
        )
    folder = f"results/models/{experiment.name}/fold{settings['fold']}"
    return {"checkpoint": f"{folder}/best.pt", "postprocessing": f"{folder}/postprocessing.json"}


def predict_inputs(wildcards):
    s = ALL_SUBJECTS[wildcards.subject]
    stack = f"results/harmonise/{s.center}/{s.subject}"
    adc = {"adc": registered_adc(s.subject)} if "adc" in registered_sequences(s.subject) else {}
    return {"stack": f"{stack}/stack.nii.gz", "summary": f"{stack}/stack.json", **adc, **inference_model()}


def predict_adc_flag(wildcards, input):
    """`--adc` for a subject whose ADC map was registered to its stack's grid (the lesion gate reads it)."""
    return optional_flags(input, [("adc", "adc")])


def table_targets():
    """The Markdown file of every table (the rule writes the CSV, LaTeX and figures beside it)."""
    return [f"results/tables/{table}.md" for table in sorted(config["tables"])]


def model_targets():
    """best.pt of every experiment and fold the tables need (none when no subject is labelled: new data only)."""
    if not EXPERIMENTS:
        return []
    return sorted({f"results/models/{e}/fold{f}/best.pt" for e, f in exps.table_folds(config, EXPERIMENTS)})


def preprocess_targets():
    """Harmonised stacks, QC pictures, and each center's QC table and fingerprint."""
    centers = sorted({s.center for s in SUBJECTS.values()})
    stacks = [f"results/harmonise/{s.center}/{s.subject}/stack.nii.gz" for s in SUBJECTS.values()]
    return stacks + [f"results/qc/{c}/preprocess.tsv" for c in centers]


def reference_of(subject):
    """The subject's reference sequence: the first of its center's priority list that it has."""
    s = ALL_SUBJECTS[subject]
    return s.reference(sheets.reference_priority(config, s.center))


def mask_sequence_of(subject):
    """The sequence HD-BET runs on: the first of the skullstrip priority list the subject has."""
    s = ALL_SUBJECTS[subject]
    return s.reference(config["skullstrip"]["priority"] + list(s.sequences))


def registered_adc(subject):
    """Where registration writes a subject's ADC map on its stack's grid (`lesion_gate.registered_adc` reads it)."""
    return f"results/register/{ALL_SUBJECTS[subject].center}/{subject}/adc.nii.gz"


def registered_sequences(subject):
    """Every sequence of the subject except its reference."""
    reference = reference_of(subject)
    return [seq for seq in ALL_SUBJECTS[subject].sequences if seq != reference]


def skullstrip_image(wildcards):
    return converted_image(wildcards.subject, mask_sequence_of(wildcards.subject))


def skullstrip_sequence(wildcards):
    return mask_sequence_of(wildcards.subject)


def reference_image(wildcards):
    return converted_image(wildcards.subject, reference_of(wildcards.subject))


def moving_image(wildcards):
    return converted_image(wildcards.subject, wildcards.sequence)


def register_inputs(wildcards):
    """The conversion folder (reference and moving image), plus the mask that steers the metric.

    The sequence HD-BET ran on is registered with its own (moving) brain mask, since the reference-grid
    mask is made from its transform; every other sequence uses the reference-grid mask. ADC also gets
    the DWI transform, reused when both share one grid.
    """
    s, seq = ALL_SUBJECTS[wildcards.subject], wildcards.sequence
    inputs = {"converted": converted(s.subject)}
    if seq == mask_sequence_of(s.subject):
        inputs["moving_mask"] = f"results/skullstrip/{s.center}/{s.subject}/brain_mask_native.nii.gz"
    else:
        inputs["fixed_mask"] = f"results/register/{s.center}/{s.subject}/brain_mask.nii.gz"
    if seq == "adc" and "dwi" in registered_sequences(s.subject):
        inputs["partner_transform"] = f"results/register/{s.center}/{s.subject}/dwi.mat"
        inputs["partner_record"] = f"results/register/{s.center}/{s.subject}/dwi.json"
    return inputs


def optional_flags(inputs, names):
    """`--flag 'path'` for each optional named input the job has (quoted for the shell)."""
    present = inputs.keys()
    return " ".join(f"--{flag} {shlex.quote(str(inputs[key]))}" for flag, key in names if key in present)


def register_threads():
    """One core when registration is deterministic (ANTs then runs one ITK thread): asking for more would
    leave them idle; Snakemake runs the jobs side by side instead."""
    return 1 if config["register"]["deterministic"] else config["threads"]["register"]


def register_flags(wildcards, input):
    flags = optional_flags(
        input,
        [("fixed-mask", "fixed_mask"), ("moving-mask", "moving_mask"),
         ("partner-transform", "partner_transform"), ("partner-record", "partner_record")],
    )
    if "partner_transform" in input.keys():  # the DWI image the transform was made on sits in the conversion folder
        flags += f" --partner-image {shlex.quote(converted_image(wildcards.subject, 'dwi'))}"
    return flags


def brainmask_flags(wildcards, input):
    return optional_flags(input, [("transform", "transform")])


def reference_sequence(wildcards):
    return reference_of(wildcards.subject)


def brainmask_inputs(wildcards):
    """The native mask, the reference, and the mask sequence's transform unless it is the reference."""
    s = ALL_SUBJECTS[wildcards.subject]
    inputs = {
        "native_mask": f"results/skullstrip/{s.center}/{s.subject}/brain_mask_native.nii.gz",
        "converted": converted(s.subject),
    }
    mask_seq = mask_sequence_of(s.subject)
    if mask_seq != reference_of(s.subject):
        inputs["transform"] = f"results/register/{s.center}/{s.subject}/{mask_seq}.mat"
    return inputs


def harmonise_inputs(wildcards):
    s = ALL_SUBJECTS[wildcards.subject]
    root = f"results/register/{s.center}/{s.subject}"
    others = registered_sequences(s.subject)
    inputs = {
        "converted": converted(s.subject),
        "brain_mask": f"{root}/brain_mask.nii.gz",
        "images": [f"{root}/{seq}.nii.gz" for seq in others],
        "records": [f"{root}/{seq}.json" for seq in others],
    }
    if config["harmonise"]["method"] == "histogram":
        inputs["scales"] = "results/harmonise/histogram_scales.json"
    return inputs


def harmonise_flags(wildcards, input):
    return optional_flags(input, [("scales", "scales")])


def histogram_subjects():
    """Subjects whose images define the standard histogram scale (every center unless listed)."""
    centers = config["harmonise"]["histogram_centers"]
    return [s for s in ALL_SUBJECTS.values() if not centers or s.center in centers]


def histogram_images(subject):
    """A subject's images on the reference grid, by sequence: the reference and the registered ones."""
    s = ALL_SUBJECTS[subject]
    images = {reference_of(subject): converted_image(subject, reference_of(subject))}
    images.update({seq: f"results/register/{s.center}/{s.subject}/{seq}.nii.gz" for seq in registered_sequences(subject)})
    return images


def learn_histograms_inputs(wildcards):
    """Brain masks and reference-grid images of the training subjects (grouped by folder in the CLI)."""
    subjects = histogram_subjects()
    return {
        "masks": [f"results/register/{s.center}/{s.subject}/brain_mask.nii.gz" for s in subjects],
        "converted": [converted(s.subject) for s in subjects],
        "registered": [f"results/register/{s.center}/{s.subject}/{seq}.nii.gz" for s in subjects for seq in registered_sequences(s.subject)],
    }


def learn_histograms_images(wildcards):
    """Every image of the histogram subjects, quoted for the shell (references sit in conversion folders)."""
    return " ".join(shlex.quote(path) for s in histogram_subjects() for path in histogram_images(s.subject).values())


def harmonise_sequences(wildcards):
    return " ".join(registered_sequences(wildcards.subject))


def center_subjects(center):
    return [s for s in SUBJECTS.values() if s.center == center]


def qc_center_inputs(wildcards):
    subjects = center_subjects(wildcards.center)
    return {
        "skullstrip": [f"results/skullstrip/{s.center}/{s.subject}/record.json" for s in subjects],
        "register": [f"results/register/{s.center}/{s.subject}/{seq}.json" for s in subjects for seq in registered_sequences(s.subject)],
        "summaries": [f"results/harmonise/{s.center}/{s.subject}/stack.json" for s in subjects],
    }


def convert_sources(wildcards):
    """The links a convert job reads (results/dicom/<center>/<subject>/<sequence>, made at start-up):
    Snakemake tracks the folders behind them, and its logs name the pseudonym, not the source path."""
    s = ALL_SUBJECTS[wildcards.subject]
    return [str(sheets.source_link(s, seq)) for seq in s.sequences]


def convert_series(wildcards):
    """{sequence: 'auto' or '.' (the link is the series folder)} of the subject, as JSON for the command line."""
    s = ALL_SUBJECTS[wildcards.subject]
    return json.dumps({seq: "auto" if s.series[seq] == "auto" else "." for seq in s.sequences})


def center_patterns(wildcards):
    """The series-description patterns of the subject's center, as JSON for the command line."""
    return json.dumps(sheets.series_patterns(config, ALL_SUBJECTS[wildcards.subject].center), sort_keys=True)


# --- training, inference, evaluation, tables ---------------------------------------------------------


def experiment_of(wildcards):
    if wildcards.experiment not in EXPERIMENTS:
        raise ValueError(f"experiment {wildcards.experiment!r} is not declared in the config's `experiments`")
    return EXPERIMENTS[wildcards.experiment]


def experiment_seed(wildcards):
    """The config's seed, moved by the replicate number for an experiment's retrainings."""
    return experiment_of(wildcards).seed(config["seed"])


def experiment_splits(wildcards):
    return f"results/splits/{experiment_of(wildcards).split}.json"


def fold_stacks(wildcards, *parts):
    """The stacks of the fold's subjects in `parts` (train, val, test), read from its split file.

    The split file is made by the `splits` checkpoint: the fold's subjects are known only once it
    exists, and reading them here (instead of requiring every labelled stack, or the split file itself)
    is what keeps a model from retraining when subjects join the sheet: they join the split as test
    subjects (`thrombus.training.splits.extend_splits`), so a fold's training and validation stacks,
    and with them the model's inputs, stay the same.
    """
    return [f"results/harmonise/{ALL_SUBJECTS[s].center}/{s}/stack.nii.gz" for s in fold_subjects(wildcards, *parts)]


def fold_subjects(wildcards, *parts):
    """The fold's subjects in `parts` (train, val, test), sorted, read from its split file (`fold_stacks`)."""
    path = checkpoints.splits.get(split=experiment_of(wildcards).split).output[0]
    document = json.loads(open(path).read())
    fold = next((f for f in document["folds"] if f["fold"] == int(wildcards.fold)), None)
    if fold is None:
        raise ValueError(f"{path} has no fold {wildcards.fold} (folds {[f['fold'] for f in document['folds']]})")
    return sorted(s for part in parts for s in fold[part] if s in ALL_SUBJECTS)  # a dropped subject: `splits` refuses it


def fold_adc_maps(wildcards, part):
    """The registered ADC maps of the fold's subjects in `part` that have one, when the lesion gate is on: the
    calibration and inference read them (`lesion_gate.registered_adc`), so a new map reruns them."""
    if not config["lesion_gate"].get("enabled", True):
        return []
    return [registered_adc(s) for s in fold_subjects(wildcards, part) if "adc" in registered_sequences(s)]


def train_inputs(wildcards):
    """The stacks (and summaries) of the fold's training and validation subjects, and the checkpoint the
    training starts from (`train.init_from`: a shipped model or a file), so that new weights there retrain."""
    stacks = fold_stacks(wildcards, "train", "val")
    inputs = {"stacks": stacks, "summaries": [path.replace("stack.nii.gz", "stack.json") for path in stacks]}
    init_from = experiment_of(wildcards).train.get("init_from")
    if init_from:
        inputs["init"] = str(pretrained.resolve(init_from))
    return inputs


def labelled_subjects_param():
    """Every labelled subject with its center and label: the `splits` step reruns when this changes (new
    subjects join the split file, a removed or relabelled one is refused there)."""
    return json.dumps({s.subject: [s.center, s.thrombus] for s in LABELLED}, sort_keys=True)


def split_options():
    """The split fractions only, so that other train settings never touch the split file."""
    train = config["train"]
    return json.dumps({key: train[key] for key in exps.SPLIT_TRAIN_KEYS if key in train}, sort_keys=True)


def train_options(wildcards):
    """The experiment's train and model sections, as `thrombus train --options` reads them."""
    return json.dumps(experiment_of(wildcards).training_sections(), sort_keys=True)


def resume_flag(wildcards):
    return "--resume" if experiment_of(wildcards).train.get("resume", True) else ""


def mem_mb_for(name):
    """The rule's measured peak with headroom (`thrombus.resources`), doubled on each retry."""
    return lambda wildcards, attempt: resources.request_mb(name, attempt)


def train_mem_mb(wildcards, input, attempt):
    """Measured: 0.9 GB for the network and a batch of 8 x 4 x 5 x 64 x 64, plus the cases held in
    memory (about 4x their compressed size); doubled on a retry after an out-of-memory kill."""
    return int((1500 + 4 * resources.files_mb(input)) * attempt)


def train_runtime(wildcards, attempt):
    """Minutes: 10 ms a CPU iteration on a GPU node is generous; doubled on a retry."""
    iterations = experiment_of(wildcards).train.get("iterations", 600)
    return int((30 + iterations / 100) * attempt)


def calibrate_inputs(wildcards):
    """The fold's checkpoint and its validation subjects' stacks."""
    return {
        "checkpoint": f"results/models/{wildcards.experiment}/fold{wildcards.fold}/best.pt",
        "stacks": fold_stacks(wildcards, "val"),
        "adc": fold_adc_maps(wildcards, "val"),
    }


def calibrate_mem_mb(wildcards, input, attempt):
    """The network and the validation cases held in memory, as in training (`train_mem_mb`); doubled on a retry."""
    return train_mem_mb(wildcards, input, attempt)


def infer_inputs(wildcards):
    """The fold's model and calibration, its split file (new test subjects rerun inference) and test stacks."""
    folder = f"results/models/{wildcards.experiment}/fold{wildcards.fold}"
    return {
        "splits": experiment_splits(wildcards),
        "checkpoint": f"{folder}/best.pt",
        "postprocessing": f"{folder}/postprocessing.json",
        "stacks": fold_stacks(wildcards, "test"),
        "adc": fold_adc_maps(wildcards, "test"),
    }


def infer_mem_mb(wildcards, input, attempt):
    """The network, plus one subject's stack at a time (about 8x its compressed size as float tensors,
    probability map and slabs); doubled on a retry."""
    stacks = list(input.stacks) if hasattr(input, "stacks") else []  # none known before the split checkpoint ran
    stack_mb = resources.files_mb(stacks) / max(len(stacks), 1)
    return int((1500 + 8 * stack_mb) * attempt)


def experiment_subsets(wildcards):
    """JSON {subset: removed channels} of every subset a table shows this experiment with."""
    subsets = config["evaluation"]["subsets"]
    wanted = {
        subset
        for settings in config["tables"].values()
        if experiment_of(wildcards).declared in settings["experiments"]
        for subset in settings.get("subsets", ["all"])
    }
    return json.dumps({name: subsets[name] for name in sorted(wanted)}, sort_keys=True)


def table_folds(table):
    settings = config["tables"][table]
    return exps.folds_of_table(table, settings, EXPERIMENTS)


def table_inputs(wildcards):
    """Every evaluation (per-subject table and its record) the table gathers, and their predictions."""
    runs = table_folds(wildcards.table)
    return {
        "evaluations": [f"results/evaluation/{e}/fold{f}.tsv" for e, f in runs],
        "records": [f"results/evaluation/{e}/fold{f}.json" for e, f in runs],
        "predictions": [f"results/heldout/{e}/fold{f}" for e, f in runs],
    }


def table_experiments(wildcards):
    return " ".join(config["tables"][wildcards.table]["experiments"])


def table_subsets(wildcards):
    return " ".join(shlex.quote(s) for s in config["tables"][wildcards.table].get("subsets", ["all"]))


def table_title(wildcards):
    return config["tables"][wildcards.table].get("title", wildcards.table)
