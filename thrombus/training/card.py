"""The model card and the checkpoint file that carries it.

A checkpoint holds, besides the weights, a card: the model's configuration, the channels it expects in
that order, the harmonisation that produced its inputs, the slab and patch it was trained on, the
training configuration and the code version. Inference and `--resume` state what they expect and
`load_checkpoint` refuses a card that differs, naming the keys, so a model can never silently be run
on stacks harmonised another way or be resumed under another configuration.

Checkpoints are written atomically and hold only tensors and plain Python values, so they load with
`torch.load(weights_only=True)` (no pickled code runs on loading); a SHA-256 of the weights, stored
inside, catches a file damaged after writing.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
import subprocess
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from thrombus import __version__
from thrombus.io import PathLike, atomic_path
from thrombus.model import ModelConfig, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "thrombus-checkpoint"
CHECKPOINT_VERSION = 1

#: Keys of the config's harmonise section that decide what the model sees.
HARMONISE_KEYS: tuple[str, ...] = ("method", "low_percentile", "high_percentile", "channels", "histogram_centers")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, damaged, or made under another configuration."""


def code_version() -> dict[str, Any]:
    """thrombus's version and, when the package runs from a git checkout, its commit (None otherwise)."""
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=40"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        commit = done.stdout.strip() if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"thrombus": __version__, "git_commit": commit}


def plain(value: Any) -> Any:
    """Tuples as lists and mappings as dicts, recursively, so cards compare and serialise as JSON does."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def make_card(
    model: ModelConfig, harmonise: Mapping[str, Any], data: Mapping[str, Any], training: Mapping[str, Any]
) -> dict[str, Any]:
    """The card of a model: what it is, what inputs it expects, and how it was trained."""
    return {
        "model": model.to_dict(),
        "channels": list(model.channels),
        "harmonise": {key: plain(harmonise[key]) for key in HARMONISE_KEYS if key in harmonise},
        "data": plain(data),
        "training": plain(training),
        "code": code_version(),
    }


def card_differences(card: Mapping[str, Any], expected: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys where `card` differs from `expected` (only the keys `expected` names are compared)."""
    differences = []
    for key, want in expected.items():
        name = f"{prefix}{key}"
        if key not in card:
            differences.append(f"{name} (absent from the checkpoint, expected {plain(want)!r})")
        elif isinstance(want, Mapping) and isinstance(card[key], Mapping):
            differences.extend(card_differences(card[key], want, f"{name}."))
        elif plain(card[key]) != plain(want):
            differences.append(f"{name} (checkpoint {plain(card[key])!r}, expected {plain(want)!r})")
    return differences


def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the parameter names and the bytes of their values."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(name.encode("utf-8") + b"\0" + str(tensor.dtype).encode("ascii") + str(tuple(tensor.shape)).encode("ascii"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(target: PathLike, card: Mapping[str, Any], model_state: Mapping[str, torch.Tensor], **extra: Any) -> Path:
    """Write a checkpoint atomically: format tag, card, weights, their digest, and `extra` (training state)."""
    state = {name: tensor.detach().cpu() for name, tensor in model_state.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "card": plain(card),
        "model": state,
        "weights_sha256": weights_digest(state),
        **extra,
    }
    with atomic_path(target) as tmp:
        torch.save(payload, tmp)
    return Path(target)


def _read(path: Path) -> dict[str, Any]:
    """torch.load with weights_only, turning every way a damaged file fails into one clear error."""
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: the file is truncated or damaged, or not a PyTorch checkpoint "
            f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "delete it and retrain, or use another checkpoint (best.pt / latest.pt)"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a thrombus checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
    if payload.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {payload.get('format_version')}, this thrombus reads version {CHECKPOINT_VERSION}"
        )
    if weights_digest(payload["model"]) != payload.get("weights_sha256"):
        raise CheckpointError(f"checkpoint {path} is damaged: its weights do not match the checksum stored with them")
    return payload


def load_checkpoint(path: PathLike, expected: Mapping[str, Any]) -> dict[str, Any]:
    """Read a checkpoint and refuse it unless its card matches `expected` on every key `expected` names.

    `expected` has the card's layout (see `make_card`), e.g. {"channels": [...], "harmonise": {...}}
    for inference, or the whole card but the code version for resuming. Returns the checkpoint dict:
    "card", "model" (state dict) and whatever training state was saved with it.
    """
    path = Path(path)
    payload = _read(path)
    differences = card_differences(payload["card"], expected)
    if differences:
        raise CheckpointError(
            f"checkpoint {path} was made under another configuration; differing keys: {'; '.join(differences)}. "
            "Use the configuration it was trained with, or a checkpoint trained with this one"
        )
    return payload


@dataclass(frozen=True)
class LoadedModel:
    """A network rebuilt from a checkpoint, with its card and the checksum of its weights."""

    network: nn.Module
    card: dict[str, Any]
    weights_sha256: str | None = None


def model_from_checkpoint(path: PathLike, expected: Mapping[str, Any]) -> LoadedModel:
    """The trained network of a checkpoint (in eval mode, on CPU), after the card check of `load_checkpoint`."""
    payload = load_checkpoint(path, expected)
    network = build_model(ModelConfig.from_mapping(payload["card"]["model"]))
    network.load_state_dict(payload["model"])
    return LoadedModel(network.eval(), payload["card"], payload.get("weights_sha256"))


def card_prediction(card: Mapping[str, Any]) -> tuple[int, int, tuple[int, int] | None, float | None]:
    """Slab depth, stride, in-plane tile and slice spacing of the card's whole-volume predictions.

    Older cards: stride 1, whole slices, each subject's own spacing.
    """
    data = card["data"]
    tile = data.get("predict_tile")
    slice_mm = data.get("slice_mm")
    return (int(data["slab_depth"]), int(data.get("predict_stride", 1)), (int(tile[0]), int(tile[1])) if tile else None,
            float(slice_mm) if slice_mm else None)
