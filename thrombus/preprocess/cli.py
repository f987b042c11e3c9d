"""`thrombus skullstrip | register | brainmask | harmonise | learn-histograms | qc-center`: the preprocessing rules' commands."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from thrombus import SEQUENCES
from thrombus.errors import user_errors, write_failure
from thrombus.options import positive_int

log = logging.getLogger("thrombus")


def _cmd_skullstrip(args: argparse.Namespace) -> int:
    from thrombus.preprocess.skullstrip import HDBetOptions, skullstrip_file

    settings = json.loads(args.options)
    settings.pop("priority", None)
    options = HDBetOptions(**{**settings, "folds": tuple(settings.get("folds", (0,))), "threads": args.threads})
    try:
        qc = skullstrip_file(args.image, args.out_mask, None, options, args.record, args.subject, args.sequence)
    except user_errors() as err:
        write_failure(args.record, "skullstrip", args.subject, args.center, err)
        raise
    log.info("center %s, subject %s: brain mask on %s, %s", args.center, args.subject, args.sequence, qc)
    return 0


def _registration_options(args: argparse.Namespace) -> object:
    from thrombus.preprocess.register import RegistrationOptions

    settings = json.loads(args.options)
    transform = "Affine" if args.sequence in settings.get("affine_sequences", ()) else settings.get("transform", "Rigid")
    return RegistrationOptions(
        backend=settings.get("backend", RegistrationOptions.backend), transform=transform, threads=args.threads, deterministic=settings.get("deterministic", True),
        seed=args.seed, sampling_rate=settings.get("sampling_rate", RegistrationOptions.sampling_rate),
        metric_spacing_mm=settings.get("metric_spacing_mm", RegistrationOptions.metric_spacing_mm),
    )


def _cmd_register(args: argparse.Namespace) -> int:
    from thrombus.preprocess.register import RegistrationError, register_file, same_grid

    reuse = args.partner_transform if args.partner_image and same_grid(args.moving, args.partner_image) else None
    reuse_record = args.partner_record if reuse else None
    try:
        record = register_file(
            args.reference, args.moving, args.out_image, args.out_transform, _registration_options(args),
            args.subject, args.center, args.sequence, fixed_mask=args.fixed_mask, moving_mask=args.moving_mask,
            reuse_transform=reuse, record_path=args.record, reuse_record=reuse_record,
        )
    except (RegistrationError, *user_errors()) as err:
        write_failure(args.record, "register", args.subject, args.center, err)
        raise
    log.info("center %s, subject %s, %s: %s", args.center, args.subject, args.sequence,
             {k: record["qc"][k] for k in ("mi_before", "mi_after", "flags") if k in record["qc"]})
    return 0


def _cmd_brainmask(args: argparse.Namespace) -> int:
    from thrombus.preprocess.register import carry_mask

    carry_mask(args.native_mask, args.reference, args.out, args.transform, threads=args.threads)
    return 0


def _cmd_harmonise(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from thrombus.preprocess.harmonise import NormaliseOptions, harmonise_subject
    from thrombus.preprocess.qc import subject_figure

    from thrombus.io import read_json

    settings = json.loads(args.options)
    scales = read_json(args.scales)["scales"] if args.scales else None
    registered = dict(zip(args.sequences, map(Path, args.images)))
    records = dict(zip(args.sequences, map(Path, args.records)))
    summary = harmonise_subject(
        Path(args.reference), args.reference_sequence, registered, records, Path(args.brain_mask), settings["channels"],
        NormaliseOptions(settings.get("low_percentile", 0.5), settings.get("high_percentile", 99.5), settings.get("method", "zscore")),
        Path(args.out_stack), Path(args.out_json), args.subject, args.center, Path(args.record) if args.record else None,
        scales,
    )
    stacked = nib.load(args.out_stack)
    stack = np.asarray(stacked.dataobj)
    mask = np.asarray(nib.load(args.brain_mask).dataobj) > 0
    subject_figure(stack, mask, summary["channels"], summary["availability"], args.out_png,
                   f"center {args.center}, subject {args.subject} (reference {args.reference_sequence})", stacked.affine)
    return 0


def _cmd_learn_histograms(args: argparse.Namespace) -> int:
    from thrombus.preprocess.harmonise import learn_scales

    settings = json.loads(args.options)
    subjects = {Path(mask).parent.name: {"brain_mask": mask, "images": {}} for mask in args.masks}
    for image in map(Path, args.images):
        subjects[image.parent.name]["images"][image.name.split(".")[0]] = image
    scales = learn_scales(list(subjects.values()), settings["channels"], Path(args.out))
    log.info("histogram scales learned for %s", ", ".join(scales))
    return 0


def _cmd_qc_center(args: argparse.Namespace) -> int:
    from thrombus.preprocess.qc import center_table, write_fingerprint

    table = center_table(args.skullstrip, args.register, args.summaries, args.out_table)
    write_fingerprint(args.summaries, args.out_fingerprint)
    flagged = table[(table["outlier"] != "") | (table["flags"].fillna("") != "")]
    for _, row in flagged.iterrows():
        log.warning("center %s, subject %s, %s: %s %s", args.center, row["subject"], row["sequence"], row["outlier"], row["flags"])
    return 0


def _add_step_identity(parser: argparse.ArgumentParser, sequence: bool = True) -> None:
    parser.add_argument("--subject", required=True)
    parser.add_argument("--center", required=True)
    if sequence:
        parser.add_argument("--sequence", required=True, choices=SEQUENCES)
    parser.add_argument("--threads", type=positive_int, default=1, help="threads (the rule passes its own)")
    parser.add_argument("--record", default=None, help="JSON step record")


def add_preprocess_parsers(commands: argparse._SubParsersAction) -> None:
    strip = commands.add_parser("skullstrip", help="HD-BET brain mask of one sequence, on its own grid")
    _add_step_identity(strip)
    strip.add_argument("--image", required=True)
    strip.add_argument("--out-mask", required=True)
    strip.add_argument("--options", default="{}", help="JSON of the config's skullstrip section")
    strip.set_defaults(func=_cmd_skullstrip)

    reg = commands.add_parser("register", help="register one sequence to the subject's reference (backend from --options)")
    _add_step_identity(reg)
    reg.add_argument("--reference", required=True)
    reg.add_argument("--moving", required=True)
    reg.add_argument("--fixed-mask", default=None, help="brain mask on the reference grid (restricts the metric)")
    reg.add_argument("--moving-mask", default=None, help="brain mask on the moving grid")
    reg.add_argument("--partner-image", default=None, help="an image of the same acquisition (DWI for ADC)")
    reg.add_argument("--partner-transform", default=None, help="its transform, reused when the grids are identical")
    reg.add_argument("--partner-record", default=None, help="its register record, whose QC verdict a reuse inherits")
    reg.add_argument("--out-image", required=True)
    reg.add_argument("--out-transform", required=True)
    reg.add_argument("--options", default="{}", help="JSON of the config's register section")
    reg.add_argument("--seed", type=int, default=1)
    reg.set_defaults(func=_cmd_register)

    mask = commands.add_parser("brainmask", help="carry the brain mask onto the reference grid")
    _add_step_identity(mask, sequence=False)
    mask.add_argument("--native-mask", required=True)
    mask.add_argument("--reference", required=True)
    mask.add_argument("--transform", default=None, help="transform of the mask's sequence to the reference")
    mask.add_argument("--out", required=True)
    mask.set_defaults(func=_cmd_brainmask)

    harm = commands.add_parser("harmonise", help="normalise and stack a subject's sequences on the reference grid")
    _add_step_identity(harm, sequence=False)
    harm.add_argument("--reference", required=True)
    harm.add_argument("--reference-sequence", required=True, choices=SEQUENCES)
    harm.add_argument("--brain-mask", required=True)
    harm.add_argument("--sequences", nargs="*", default=[], help="registered sequences, in the order of --images")
    harm.add_argument("--images", nargs="*", default=[])
    harm.add_argument("--records", nargs="*", default=[], help="their register step records")
    harm.add_argument("--options", default="{}", help="JSON of the config's harmonise section")
    harm.add_argument("--scales", default=None, help="learned histogram scales (harmonise.method: histogram)")
    harm.add_argument("--out-stack", required=True)
    harm.add_argument("--out-json", required=True)
    harm.add_argument("--out-png", required=True)
    harm.set_defaults(func=_cmd_harmonise)

    learn = commands.add_parser("learn-histograms", help="learn the standard histogram scale of each channel")
    learn.add_argument("--masks", nargs="+", required=True, help="brain masks on the reference grid, in <subject>/ folders")
    learn.add_argument("--images", nargs="+", required=True, help="<subject>/<sequence>.nii.gz images on the reference grid")
    learn.add_argument("--options", default="{}", help="JSON of the config's harmonise section")
    learn.add_argument("--out", required=True)
    learn.set_defaults(func=_cmd_learn_histograms)

    qc = commands.add_parser("qc-center", help="per-center table of registration metrics and mask volumes, and the fingerprint")
    qc.add_argument("--center", required=True)
    qc.add_argument("--skullstrip", nargs="*", default=[], help="skullstrip step records")
    qc.add_argument("--register", nargs="*", default=[], help="register step records")
    qc.add_argument("--summaries", nargs="*", default=[], help="harmonise stack summaries")
    qc.add_argument("--out-table", required=True)
    qc.add_argument("--out-fingerprint", required=True)
    qc.set_defaults(func=_cmd_qc_center)
