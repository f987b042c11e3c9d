"""`thrombus ship`: a trained fold exported as a model shipped with the package, with the figures in its card.

The card says how the model was made (the command, its config files' SHA-256, the cohort's preset and
seed, the commit) and what it scores, measured with exactly the shipped float16 weights: each validation
subject of its training, and each subject of the centers it never saw, with and without the lesion gate.
`tests/test_shipped_model.py` rebuilds two of those validation subjects from the preset, preprocesses them
with the workflow as it stands and checks the card's figures again, so weights that no longer fit the
preprocessing cannot stay shipped unnoticed.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.options import json_object, positive_int

if TYPE_CHECKING:
    from thrombus.samples import Subject

log = logging.getLogger(__name__)


def _prediction_options(card: Mapping[str, Any]) -> Any:
    """The card's whole-volume prediction settings, in the form validation reads them."""
    from thrombus.training.card import card_prediction
    from thrombus.training.options import TrainOptions

    depth, stride, tile, slice_mm = card_prediction(card)
    return TrainOptions(slab_depth=depth, predict_stride=stride, predict_tiled=tile is not None,
                        patch_size=tile or (64, 64), slice_mm=slice_mm)


def figures(weights: Path, subjects: Sequence[Subject], stacks_root: Path, gate: Mapping[str, Any] | None = None,
            threads: int = 1) -> dict[str, dict[str, Any]]:
    """Each subject's Dice, detection and false components from the model at `weights`, read as validation
    reads a volume (threshold 0.5, no size filter); with `gate` (a `lesion_gate` section), after the lesion
    gate. These are the figures a shipped card records and its test reproduces from rebuilt subjects."""
    return figures_ways(weights, subjects, stacks_root, {"": gate}, threads)[""]


def figures_ways(weights: Path, subjects: Sequence[Subject], stacks_root: Path,
                 gates: Mapping[str, Mapping[str, Any] | None], threads: int = 1) -> dict[str, dict[str, dict[str, Any]]]:
    """`figures` under several lesion-gate sections at once (name -> section, None = ungated), each subject
    predicted once."""
    import torch

    from thrombus.device import set_threads
    from thrombus.inference.lesion_gate import LesionGate, case_gates
    from thrombus.ladder import score_ways
    from thrombus.training.card import model_from_checkpoint
    from thrombus.training.data import case_sources, load_cases

    set_threads(threads)
    loaded = model_from_checkpoint(weights, {})
    cases = load_cases(case_sources(subjects, stacks_root), loaded.card["channels"])
    ways = {}
    for name, gate in gates.items():
        lesion_gate = LesionGate.from_mapping(gate)
        ways[name] = None if lesion_gate is None else case_gates([(s.center, s.subject) for s in subjects], stacks_root, lesion_gate)
    scored = score_ways(loaded.network, cases, _prediction_options(loaded.card), torch.device("cpu"), ways)
    return {name: {subject: {key: round(float(value), 4) if key != "positive" else bool(value) for key, value in row.items()}
                   for subject, row in rows.items()} for name, rows in scored.items()}


def summary(rows: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Detected of positives, mean Dice over positives, negatives with a false component, false components a subject."""
    positives = [r for r in rows.values() if r["positive"]]
    negatives = [r for r in rows.values() if not r["positive"]]
    return {
        "detected": int(sum(r["detected"] for r in positives)),
        "positives": len(positives),
        "dice": round(sum(r["dice"] for r in positives) / len(positives), 4) if positives else None,
        "negatives_with_fp": int(sum(r["fp_components"] > 0 for r in negatives)),
        "negatives": len(negatives),
        "fp_components": round(sum(r["fp_components"] for r in rows.values()) / len(rows), 2) if rows else None,
    }


def _cmd_ship(args: argparse.Namespace) -> int:
    """Export a trained fold as a shipped model: float16 weights, and a card saying how it was made and what
    it scores on its validation subjects and on the held-out centers, with exactly the shipped weights."""
    import shlex
    import sys

    from thrombus.io import read_json, sha256_file
    from thrombus.provenance import machine_description
    from thrombus.samples import read_sheet, subjects
    from thrombus.training import pretrained
    from thrombus.training.card import code_version, load_checkpoint

    out_dir = Path(args.out_root or pretrained.shipped_root()) / args.name
    pool = {s.subject: s for s in subjects(read_sheet(args.sheet), {})}
    split = load_checkpoint(Path(args.checkpoint), {})["card"]["training"]["split"]
    trained_on = sorted({pool[s].center for s in split["train"] + split["val"]})
    if set(args.held_out) & set(trained_on):
        log.error("--held-out %s: the model was trained or validated on center(s) %s", " ".join(args.held_out), ", ".join(trained_on))
        return 1
    training_card = pretrained.export_weights(Path(args.checkpoint), out_dir)
    weights = out_dir / pretrained.WEIGHTS
    gate = json_object(args.lesion_gate, "--lesion-gate")
    validation = figures(weights, [pool[s] for s in training_card["training"]["split"]["val"]], Path(args.stacks_root),
                         threads=args.threads)
    held_out = {}
    for center in args.held_out:
        members = [s for s in pool.values() if s.center == center and s.thrombus in ("0", "1")]  # the labelled ones
        both = figures_ways(weights, members, Path(args.stacks_root), {"plain": None, "gated": gate}, threads=args.threads)
        rows, gated = both["plain"], both["gated"]
        held_out[center] = {"summary": summary(rows), "gated_summary": summary(gated),
                            "subjects": rows, "gated_subjects": gated}
    cohort = Path(args.sheet).parent / "cohort.json"
    record = read_json(cohort) if cohort.exists() else {}
    provenance = {
        "name": args.name,
        "trained_by": args.trained_by,
        "configs": {name: sha256_file(name) for name in args.config},
        "cohort": {"preset": record.get("preset", {}).get("name"), "seed": record.get("seed"),
                   "generator_version": record.get("generator_version")},
        "trained_at_commit": training_card.get("code", {}).get("git_commit"),
        "trained_on_centers": trained_on,
        "exported_by": shlex.join(["thrombus", *sys.argv[1:]]),
        "exported_at": code_version(),
        "export_machine": machine_description(),
        "weights": "float16 (read into the float32 network; every figure below was measured with them)",
        "figures_read_as": "whole volumes as validation reads them: threshold 0.5, no size filter; gated: after the lesion gate",
        "lesion_gate": gate,
        "validation": {"summary": summary(validation), "subjects": validation},
        "held_out": held_out,
    }
    pretrained.write_card(out_dir, training_card, provenance)
    log.info("shipped %s: validation %s; held out %s", out_dir, provenance["validation"]["summary"],
             {c: v["gated_summary"] for c, v in held_out.items()})
    return 0


def add_ship_parser(commands: argparse._SubParsersAction) -> None:
    """Register the `ship` subcommand."""
    ship = commands.add_parser("ship", help="export a trained fold as a model shipped with the package (card with its figures)")
    ship.add_argument("--checkpoint", required=True, help="best.pt of the fold (its model_card.json beside it)")
    ship.add_argument("--name", required=True, help="the shipped model's name (train.init_from: NAME)")
    ship.add_argument("--sheet", required=True, help="the sample sheet it was trained from (cohort.json beside it is recorded)")
    ship.add_argument("--stacks-root", required=True, help="the workflow directory that holds its stacks")
    ship.add_argument("--held-out", nargs="*", default=[], metavar="CENTER", help="centers it never saw, scored into the card")
    ship.add_argument("--lesion-gate", default="{}", help="JSON lesion_gate section for the gated held-out figures")
    ship.add_argument("--trained-by", required=True, help="the command that trained it, as the card should say")
    ship.add_argument("--config", nargs="*", default=[], help="config files of that command (their SHA-256 recorded)")
    ship.add_argument("--out-root", default=None, help="default: the package's thrombus/data/models")
    ship.add_argument("--threads", type=positive_int, default=1)
    ship.set_defaults(func=_cmd_ship)
