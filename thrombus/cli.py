"""The `thrombus` command: one subcommand per workflow step, each a thin wrapper over a module.

Heavy libraries are imported inside the subcommand that needs them, so `thrombus --help` and the
light steps start fast (Snakemake pays this start-up once per job).
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from thrombus import SEQUENCES, __version__

if TYPE_CHECKING:  # the step modules are imported by the commands that need them, to keep start-up short
    from thrombus.convert import ConvertRequest

log = logging.getLogger("thrombus")

def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors caused by the user's data or config: reported as one clear line, without a traceback."""
    from thrombus.convert import ConversionError, SeriesError
    from thrombus.nifti import VolumeError
    from thrombus.samples import ConfigError, SampleSheetError

    return (ConversionError, SeriesError, VolumeError, SampleSheetError, ConfigError, FileNotFoundError)


def _cmd_synth(args: argparse.Namespace) -> int:
    from thrombus.synth import generate_cohort

    summary = generate_cohort(preset=args.preset, out_dir=Path(args.out), seed=args.seed, progress=not args.quiet, threads=args.threads)
    log.info("wrote %d subjects of centers %s to %s in %.1f s", summary.n_subjects, ", ".join(summary.centers), summary.out_dir, summary.seconds)
    print(summary.samples_tsv)
    return 0


def _convert_requests(args: argparse.Namespace) -> list[ConvertRequest]:
    """One request per sequence of `--series` ({sequence: folder or 'auto'}), in the order given."""
    from thrombus.convert import ConvertRequest
    from thrombus.samples import ConfigError

    try:
        series = json.loads(args.series)
    except json.JSONDecodeError as err:
        raise ConfigError(f"center {args.center}, subject {args.subject}: --series is not JSON ({err})") from None
    if not isinstance(series, dict) or not series or set(series) - set(SEQUENCES):
        raise ConfigError(f"center {args.center}, subject {args.subject}: --series must map sequences of "
                          f"{', '.join(SEQUENCES)} to series folders or 'auto', got {args.series!r}")
    patterns = json.loads(args.patterns) if args.patterns else {}
    return [
        ConvertRequest(subject=args.subject, center=args.center, sequence=sequence, dicom_dir=Path(args.dicom_dir),
                       series=folder, patterns=patterns, derive_adc=args.derive_adc)
        for sequence, folder in series.items()
    ]


def _cmd_convert(args: argparse.Namespace) -> int:
    from thrombus.convert import convert_subject

    try:
        record = convert_subject(_convert_requests(args), args.out_dir, args.record)
    except _user_errors() as err:
        _write_failure(args.record, "convert", args.subject, args.center, err)
        raise
    log.info("center %s, subject %s: %s converted in %.1f s", args.center, args.subject,
             ", ".join(record["outputs"]), record["timing"]["seconds"])
    return 0


def _cmd_skullstrip(args: argparse.Namespace) -> int:
    from thrombus.preprocess.skullstrip import HDBetOptions, skullstrip_file

    settings = json.loads(args.options)
    settings.pop("priority", None)
    options = HDBetOptions(**{**settings, "folds": tuple(settings.get("folds", (0,))), "threads": args.threads})
    try:
        qc = skullstrip_file(args.image, args.out_mask, None, options, args.record, args.subject, args.sequence)
    except _user_errors() as err:
        _write_failure(args.record, "skullstrip", args.subject, args.center, err)
        raise
    log.info("center %s, subject %s: brain mask on %s, %s", args.center, args.subject, args.sequence, qc)
    return 0


def _registration_options(args: argparse.Namespace) -> object:
    from thrombus.preprocess.register import RegistrationOptions

    settings = json.loads(args.options)
    transform = "Affine" if args.sequence in settings.get("affine_sequences", ()) else settings.get("transform", "Rigid")
    return RegistrationOptions(
        transform=transform, threads=args.threads, deterministic=settings.get("deterministic", True),
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
    except (RegistrationError, *_user_errors()) as err:
        _write_failure(args.record, "register", args.subject, args.center, err)
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
    stack = np.asarray(nib.load(args.out_stack).dataobj)
    mask = np.asarray(nib.load(args.brain_mask).dataobj) > 0
    subject_figure(stack, mask, summary["channels"], summary["availability"], args.out_png,
                   f"center {args.center}, subject {args.subject} (reference {args.reference_sequence})")
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


def _write_failure(record: str | None, step: str, subject: str, center: str, err: BaseException) -> None:
    """Leave the failure in the job's JSON log, so a table of failures can be built from the logs."""
    if record:
        from thrombus.io import write_json

        write_json(record, {"step": step, "subject": subject, "center": center, "error": str(err), "error_type": type(err).__name__})


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="thrombus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"thrombus {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="generate the synthetic multi-center DICOM cohort")
    synth.add_argument("--preset", default="demo", help="tiny, demo, paper, or a preset YAML file (default: demo)")
    synth.add_argument("--out", required=True, help="output folder (dicom/, truth/, samples.tsv, qc/)")
    synth.add_argument("--seed", type=int, default=None, help="override the preset's seed")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.add_argument("--threads", type=int, default=1, help="worker processes (outputs are identical whatever the count)")
    synth.set_defaults(func=_cmd_synth)

    convert = commands.add_parser("convert", help="DICOM series -> NIfTI + scrubbed sidecar for every sequence of one subject")
    convert.add_argument("--subject", required=True)
    convert.add_argument("--center", required=True)
    convert.add_argument("--dicom-dir", required=True, help="the subject's DICOM folder")
    convert.add_argument("--series", required=True,
                         help='JSON {sequence: series folder (absolute or relative to --dicom-dir) or "auto"}')
    convert.add_argument("--patterns", default="", help="JSON {sequence: regex} used for the 'auto' series")
    convert.add_argument("--derive-adc", action=argparse.BooleanOptionalAction, default=True,
                         help="compute ADC from the DWI series when no ADC series exists")
    convert.add_argument("--out-dir", required=True,
                         help="the subject's output folder: <sequence>.nii.gz and <sequence>.json (identifiers scrubbed)")
    convert.add_argument("--record", default=None, help="JSON step record (checksums, versions, QC)")
    convert.set_defaults(func=_cmd_convert)

    _add_preprocess_parsers(commands)
    _add_stage_parsers(commands)
    return parser


def _add_stage_parsers(commands: argparse._SubParsersAction) -> None:
    """Subcommands that live with their stage's package (each registers its own parsers)."""
    from thrombus.evaluation.cli import add_evaluation_parsers
    from thrombus.inference.cli import add_predict_parser
    from thrombus.inference.fold import add_predict_fold_parser
    from thrombus.ladder_cli import add_ladder_parser
    from thrombus.training.cli import add_train_parser

    add_train_parser(commands)
    add_predict_parser(commands)
    add_predict_fold_parser(commands)
    add_evaluation_parsers(commands)
    add_ladder_parser(commands)


def _add_step_identity(parser: argparse.ArgumentParser, sequence: bool = True) -> None:
    parser.add_argument("--subject", required=True)
    parser.add_argument("--center", required=True)
    if sequence:
        parser.add_argument("--sequence", required=True, choices=SEQUENCES)
    parser.add_argument("--threads", type=int, default=1, help="threads (the rule passes its own)")
    parser.add_argument("--record", default=None, help="JSON step record")


def _add_preprocess_parsers(commands: argparse._SubParsersAction) -> None:
    strip = commands.add_parser("skullstrip", help="HD-BET brain mask of one sequence, on its own grid")
    _add_step_identity(strip)
    strip.add_argument("--image", required=True)
    strip.add_argument("--out-mask", required=True)
    strip.add_argument("--options", default="{}", help="JSON of the config's skullstrip section")
    strip.set_defaults(func=_cmd_skullstrip)

    reg = commands.add_parser("register", help="register one sequence to the subject's reference (ANTs)")
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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    handler: Callable[[argparse.Namespace], int] = args.func
    try:
        return handler(args)
    except _user_errors() as err:
        log.error("%s", err)
        return 1
    except OSError as err:
        if err.errno not in _FULL_DISK:
            raise
        log.error("%s", _full_disk_message(args, err))
        return 1


# A full disk, an exhausted quota, a file-size limit: the same remedy, and nothing half-written to trust.
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _full_disk_message(args: argparse.Namespace, err: OSError) -> str:
    """Names the step, its subject and the file, because the OS error alone names none of them."""
    subject = ", ".join(f"{key} {getattr(args, key)}" for key in ("center", "subject", "sequence")
                        if getattr(args, key, None))
    where = f" ({subject})" if subject else ""
    target = f" writing {err.filename}" if err.filename else ""
    return (f"thrombus {args.command}{where}: {err.strerror}{target}. Free space (or raise the quota) and rerun;"
            " outputs are written under a temporary name and renamed when complete, so none was left half-written")
