"""Models shipped with the package, and a training that starts from one (`train.init_from`).

Why ship weights: on 2 CPU cores the demo has 20 minutes and 12 training subjects, and a model trained
from scratch in that budget finds 1 of its held-out center's 3 thrombi (RESULTS.md); HD-BET and
TotalSegmentator ship their weights for the same reason. A shipped model is made by this project's own
`make paper` recipe on the synthetic `paper` cohort (`thrombus ship` records the command, config, cohort
seed, commit and its validation figures in the card beside the weights, `thrombus/shipping.py`), and a training that starts
from it still runs the whole training path: the demo fine-tunes it on its own subjects.

A shipped model is a thrombus checkpoint (`card.py`): it loads with `torch.load(weights_only=True)`, and
its card must match the model, channels and harmonisation of the run that starts from it, so weights
made for other inputs are refused by name, never silently reused. Its weights are stored as float16
(half the size in the repository); they are read back into the float32 network, and the figures in its
card were measured with exactly those rounded weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.errors import UserError
from thrombus.io import read_json, write_json

if TYPE_CHECKING:  # torch is imported where weights are read, so that the workflow can resolve names cheaply
    import torch

    from thrombus.model import ModelConfig

log = logging.getLogger(__name__)

#: File names inside a shipped model's folder (thrombus/data/models/<name>/).
WEIGHTS = "model.pt"
CARD = "model_card.json"


class PretrainedError(UserError, ValueError):
    """`train.init_from` names no shipped model and no checkpoint file."""


def shipped_root() -> Path:
    return Path(str(resources.files("thrombus").joinpath("data", "models")))


def shipped_names() -> list[str]:
    """Names of the models shipped with this package."""
    root = shipped_root()
    return sorted(p.name for p in root.iterdir() if (p / WEIGHTS).is_file()) if root.is_dir() else []


def checkpoint_path(text: str) -> Path:
    """A `--checkpoint` argument: a shipped model's name gives its weights, anything else is a path as given."""
    return shipped_root() / text / WEIGHTS if text in shipped_names() else Path(text)


def resolve(init_from: str) -> Path:
    """The checkpoint named by `init_from`: a shipped model's name, or the path of a thrombus checkpoint."""
    path = checkpoint_path(init_from)
    if path.is_file():
        return path
    raise PretrainedError(
        f"train.init_from {init_from!r} is neither a shipped model ({', '.join(shipped_names()) or 'none shipped'}) "
        f"nor an existing checkpoint file"
    )


def shipped_card(name: str) -> dict[str, Any]:
    """The card of a shipped model (its training card plus how it was made and its recorded figures)."""
    return read_json(shipped_root() / name / CARD)


@dataclass(frozen=True)
class InitialWeights:
    """Weights a training starts from, and what its card records about them."""

    state: dict[str, torch.Tensor]
    source: dict[str, Any]


def expected_inputs(model: ModelConfig, harmonise: Mapping[str, Any]) -> dict[str, Any]:
    """The card keys a checkpoint must share with a run to be a valid start: network, channels, harmonisation."""
    from thrombus.training.card import make_card

    card = make_card(model, harmonise, {}, {})
    return {key: card[key] for key in ("model", "channels", "harmonise")}


def initial_weights(init_from: str, model: ModelConfig, harmonise: Mapping[str, Any]) -> InitialWeights:
    """The float32 weights of `init_from`, refused (CheckpointError naming the keys) when made for other inputs."""
    from thrombus.training.card import load_checkpoint

    path = resolve(init_from)
    payload = load_checkpoint(path, expected_inputs(model, harmonise))
    state = {name: tensor.float() if tensor.is_floating_point() else tensor for name, tensor in payload["model"].items()}
    log.info("starting from the weights of %s (%s)", init_from, path)
    return InitialWeights(state, {"init_from": init_from, "init_weights_sha256": payload["weights_sha256"]})


def export_weights(checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Write `out_dir/model.pt`: the checkpoint's card and its weights as float16, no optimiser state.
    Returns the training card, with the run's `result` when its model_card.json lies beside the checkpoint."""
    from thrombus.training.card import load_checkpoint, save_checkpoint

    payload = load_checkpoint(checkpoint, {})
    state = {name: tensor.half() if tensor.is_floating_point() else tensor for name, tensor in payload["model"].items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / WEIGHTS, payload["card"], state)
    beside = checkpoint.parent / CARD
    return {**payload["card"], **({"result": read_json(beside).get("result")} if beside.exists() else {})}


def write_card(out_dir: Path, training_card: Mapping[str, Any], provenance: Mapping[str, Any]) -> Path:
    """`out_dir/model_card.json`: the training card plus `shipped` (how the model was made, its figures)."""
    return write_json(out_dir / CARD, {**training_card, "shipped": dict(provenance)})


def start_description(card: Mapping[str, Any]) -> str:
    """How a trained model began, for the notes under its tables: from scratch, or from which shipped model
    (and what that one saw), so that a table never passes a fine-tuned model off as trained from scratch."""
    training = card.get("training", {})
    init_from = training.get("init_from")
    if not init_from:
        return "trained from scratch"
    if init_from not in shipped_names():
        return f"fine-tuned from the checkpoint {init_from} (weights SHA-256 {str(training.get('init_weights_sha256'))[:12]})"
    shipped = shipped_card(init_from).get("shipped", {})
    cohort = shipped.get("cohort", {})
    return (f"fine-tuned from the shipped model {init_from} (thrombus/data/models/{init_from}/model_card.json): "
            f"trained by {shipped.get('trained_by')} at commit {str(shipped.get('trained_at_commit'))[:12]}, on centers "
            f"{', '.join(shipped.get('trained_on_centers', []))} of the synthetic {cohort.get('preset')} cohort "
            f"(seed {cohort.get('seed')})")


def _figures_row(label: str, summary: Mapping[str, Any]) -> str:
    negatives = f"{summary['negatives_with_fp']}/{summary['negatives']}" if summary.get("negatives") else "-"
    dice = "-" if summary.get("dice") is None else f"{summary['dice']:.3f}"
    return f"| {label} | {summary['detected']}/{summary['positives']} | {dice} | {negatives} | {summary['fp_components']} |"


def render_cards() -> list[str]:
    """RESULTS.md's section on the shipped models, from their cards: how each was made and what it scores."""
    names = shipped_names()
    if not names:
        return []
    lines = ["", "## The shipped models", "",
             "Models in `thrombus/data/models/`, each exported by `thrombus ship` with its card (`model_card.json`); the",
             "figures were measured with the shipped float16 weights, whole volumes at threshold 0.5 without size filter",
             "(gated: after the lesion gate). `tests/test_shipped_model.py` rebuilds two of the validation subjects and",
             "checks their figures again."]
    for name in names:
        card = shipped_card(name)
        made, result = card["shipped"], card.get("result", {})
        best = result.get("best", {})
        lines += ["", f"### {name}", "",
                  f"Trained by `{made['trained_by']}` at commit {str(made['trained_at_commit'])[:12]} on centers "
                  f"{', '.join(made['trained_on_centers'])} of the synthetic `{made['cohort']['preset']}` cohort (seed "
                  f"{made['cohort']['seed']}): {result.get('iterations')} iterations in {result.get('seconds')} s on "
                  f"{result.get('device')} with {result.get('threads')} threads; best.pt is iteration {best.get('iteration')} "
                  f"({best.get('selection')}). Exported by `{made['exported_by']}` on {made['export_machine']}.", "",
                  "| subjects | detected | Dice | negatives with FP | FP components / subject |", "|---|---|---|---|---|",
                  _figures_row(f"validation ({', '.join(sorted(made['validation']['subjects']))})", made["validation"]["summary"])]
        for center, figures in made["held_out"].items():
            lines.append(_figures_row(f"held-out center {center}", figures["summary"]))
            lines.append(_figures_row(f"held-out center {center}, gated", figures["gated_summary"]))
        for center, figures in made["held_out"].items():
            found = ", ".join(f"{s} {r['dice']:.2f}" for s, r in sorted(figures["gated_subjects"].items()) if r["positive"])
            lines += ["", f"Dice of each thrombus of center {center} (gated): {found}."]
    return lines
