"""`thrombus predict`: the command-line side of the `predict` rule.

`thrombus.cli` calls `add_predict_parsers(subcommands)`; torch is imported inside the command so that
`thrombus --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from thrombus.options import json_object, positive_int

if TYPE_CHECKING:
    from thrombus.inference.lesion_gate import LesionGate

log = logging.getLogger(__name__)


def _harmonise(text: str | None) -> dict | None:
    """The --harmonise JSON object, or None when the option is absent (no harmonisation check)."""
    return None if text is None else json_object(text, "--harmonise")


def _cmd_predict(args: argparse.Namespace) -> int:
    from thrombus.inference.predict import InferenceError, PredictRequest, predict_subject
    from thrombus.nifti import VolumeError
    from thrombus.training.card import CheckpointError
    from thrombus.training.pretrained import checkpoint_path

    try:
        request = PredictRequest(
            checkpoint=checkpoint_path(args.checkpoint),
            stack=Path(args.stack),
            summary=Path(args.summary),
            out_probability=Path(args.out_probability),
            out_mask=Path(args.out_mask),
            out_record=Path(args.record),
            subject=args.subject,
            center=args.center,
            postprocessing=Path(args.postprocessing) if args.postprocessing else None,
            harmonise=_harmonise(args.harmonise),
            keep=tuple(args.sequences) if args.sequences is not None else None,
            threads=args.threads,
            device=args.device,
            batch_size=args.batch_size,
            out_measurements=Path(args.out_measurements) if args.out_measurements else None,
            adc=Path(args.adc) if args.adc else None,
            lesion_gate=lesion_gate_option(args.lesion_gate),
        )
        predict_subject(request)
    except (CheckpointError, VolumeError, InferenceError, ValueError) as error:
        log.error("subject %s (center %s): %s", args.subject, args.center, error)
        return 1
    return 0


def lesion_gate_option(text: str | None) -> LesionGate | None:
    """`--lesion-gate`: JSON of the config's `lesion_gate` section; absent or `enabled: false` turns the gate off."""
    from thrombus.inference.lesion_gate import LesionGate

    return None if text is None else LesionGate.from_mapping(json_object(text, "--lesion-gate"))


def add_lesion_gate_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lesion-gate", default=None,
                        help='JSON of the config\'s lesion_gate section, e.g. \'{"min_lesion_ml": 0.2}\' (default: no gate)')


def add_predict_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the `predict`, `measure`, `measurements`, `dicom-seg` and `bids` subcommands."""
    _add_predict_parser(subparsers)
    add_measurements_parser(subparsers)
    add_dicom_seg_parser(subparsers)
    add_bids_parser(subparsers)
    add_measure_parser(subparsers)


def _add_predict_parser(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser("predict", help="thrombus probability map, mask and record of one subject")
    predict.add_argument("--checkpoint", required=True,
                         help="trained checkpoint (best.pt of a fold), or a shipped model's name (paper_loco_c)")
    predict.add_argument("--stack", required=True, help="harmonised stack, results/harmonise/<center>/<subject>/stack.nii.gz")
    predict.add_argument("--summary", required=True, help="its summary (stack.json: channels and availability)")
    predict.add_argument("--postprocessing", default=None,
                         help="postprocessing.json written by `thrombus calibrate` beside best.pt (default: threshold 0.5, no size filter)")
    predict.add_argument("--harmonise", default=None,
                         help="JSON of the config's harmonise section; the checkpoint must have been trained with the same")
    predict.add_argument("--sequences", nargs="*", default=None, metavar="NAME",
                         help="sequences or channels to keep (e.g. swi dwi, or susceptibility dwi); the others are "
                              "treated as missing. Default: all")
    predict.add_argument("--adc", default=None, help="ADC map on the stack's grid (results/register/...), for --lesion-gate")
    add_lesion_gate_argument(predict)
    predict.add_argument("--out-probability", required=True, help="probability map (NIfTI float32, on the stack's grid)")
    predict.add_argument("--out-mask", required=True, help="thrombus mask (NIfTI uint8, on the stack's grid)")
    predict.add_argument("--record", required=True, help="JSON record of the prediction")
    predict.add_argument("--out-measurements", default=None,
                         help="JSON readout: each component's volume, length, width, centroid, side and probability")
    predict.add_argument("--subject", required=True)
    predict.add_argument("--center", required=True)
    predict.add_argument("--threads", type=positive_int, default=1, help="torch threads (the rule passes its own)")
    predict.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    predict.add_argument("--batch-size", type=positive_int, default=4, help="slabs per forward pass (memory only, not results)")
    predict.set_defaults(func=_cmd_predict)


def _cmd_measurements(args: argparse.Namespace) -> int:
    from thrombus.inference.measure import center_table
    from thrombus.io import atomic_path, read_json

    table = center_table([read_json(path) for path in args.inputs])
    with atomic_path(args.out, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("%d subject(s), %d with a thrombus found: %s", len(table), int(table["found"].sum()), args.out)
    return 0


def add_measurements_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `measurements` subcommand (a center's table of predicted thrombi)."""
    parser = subparsers.add_parser("measurements", help="one row per predicted subject: volume, length, width, side")
    parser.add_argument("--inputs", nargs="+", required=True, help="measurements.json of each subject (thrombus predict)")
    parser.add_argument("--out", required=True, help="TSV table")
    parser.set_defaults(func=_cmd_measurements)


def _cmd_dicom_seg(args: argparse.Namespace) -> int:
    from thrombus import __version__
    from thrombus.errors import user_errors
    from thrombus.inference.dicomseg import write_segmentation
    from thrombus.io import read_json

    fingerprint = read_json(args.sidecar).get("ThrombusConversion", {}).get("series_uid_sha256") if args.sidecar else None
    try:
        write_segmentation(args.mask, args.sources, args.out, args.subject, args.center, __version__, fingerprint,
                           args.original_identifiers)
    except user_errors() as error:
        log.error("subject %s (center %s): %s", args.subject, args.center, error)
        return 1
    return 0


def add_dicom_seg_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `dicom-seg` subcommand (a mask as a DICOM Segmentation over its reference series)."""
    parser = subparsers.add_parser("dicom-seg", help="a predicted mask as a DICOM Segmentation over the reference series")
    parser.add_argument("--mask", required=True, help="thrombus mask on the reference grid (thrombus predict --out-mask)")
    parser.add_argument("--sources", required=True, help="folder holding the reference series' DICOM files")
    parser.add_argument("--sidecar", default=None,
                        help="the reference's conversion sidecar (<sequence>.json): its fingerprint picks the series "
                             "when the folder holds several")
    parser.add_argument("--subject", required=True, help="pseudonym: written as patient name and ID")
    parser.add_argument("--center", required=True)
    parser.add_argument("--original-identifiers", action="store_true",
                        help="keep the source's patient and study identifiers (for sending the object back to its PACS)")
    parser.add_argument("--out", required=True, help="the DICOM SEG file")
    parser.set_defaults(func=_cmd_dicom_seg)


def _cmd_bids(args: argparse.Namespace) -> int:
    from thrombus import __version__
    from thrombus.inference.bids import write_description, write_subject

    if args.subject is None:
        write_description(args.root, __version__)
        return 0
    write_subject(args.root, args.subject, args.center, args.reference, args.mask, args.probability, args.measurements)
    return 0


def add_bids_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `bids` subcommand (new subjects' predictions as a BIDS-Derivatives dataset)."""
    parser = subparsers.add_parser(
        "bids", help="write a subject's prediction into a BIDS-Derivatives dataset (without --subject: its description)"
    )
    parser.add_argument("--root", required=True, help="the derivatives dataset's folder (the workflow's results/bids)")
    parser.add_argument("--subject", default=None, help="pseudonym: the BIDS subject label")
    parser.add_argument("--center")
    parser.add_argument("--reference", help="the reference sequence: the space label (space-<reference>)")
    parser.add_argument("--mask")
    parser.add_argument("--probability")
    parser.add_argument("--measurements", help="measurements.json (thrombus predict): goes into the mask's sidecar")
    parser.set_defaults(func=_cmd_bids)


def _cmd_measure(args: argparse.Namespace) -> int:
    from thrombus.inference.atlas import measure_subject

    measure_subject(args.subject, args.center, args.mask, args.probability, args.stack, args.record, args.out,
                    args.out_transform, args.threads, args.seed)
    return 0


def add_measure_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the `measure` subcommand (a new subject's readout, placed in MNI space)."""
    parser = subparsers.add_parser("measure", help="a predicted thrombus's volume, length, width, side, MNI position and segment")
    parser.add_argument("--subject", required=True)
    parser.add_argument("--center", required=True)
    parser.add_argument("--mask", required=True, help="predicted mask (thrombus predict --out-mask)")
    parser.add_argument("--probability", required=True, help="its probability map")
    parser.add_argument("--stack", required=True, help="the harmonised stack it was predicted on (its brain goes to MNI)")
    parser.add_argument("--record", required=True, help="the prediction's record (the sequences it used)")
    parser.add_argument("--out", required=True, help="measurements.json")
    parser.add_argument("--out-transform", required=True, help="the subject-to-MNI affine (ANTs .mat)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.set_defaults(func=_cmd_measure)
