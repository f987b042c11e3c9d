"""Backend `hdbet_official`: the official hd-bet 2.x model (an nnU-Net), for sites that have it installed.

Not exercised here: the package is not installed in this project's environment, and its CLI would
download weights into its own folder, which this pipeline never lets happen (`weights_dir` is required).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from thrombus.device import resolve_device, torch_threads
from thrombus.io import sha256_file

if TYPE_CHECKING:
    from thrombus.preprocess.skullstrip import HDBetOptions

#: Packages whose code or weights shape this backend's mask (recorded with the step).
VERSIONS: tuple[str, ...] = ("torch", "hd-bet", "nnunetv2")


def check(weights_dir: Path | None) -> Path:
    """The official hd-bet 2.x backend needs its package and a local copy of its weights; we never let
    it download them (its CLI would, into its own package folder)."""
    missing = [name for name in ("HD_BET", "nnunetv2") if importlib.util.find_spec(name) is None]
    if missing:
        raise RuntimeError(
            f"backend 'hdbet_official' needs the hd-bet 2.x package (missing modules: {', '.join(missing)}); "
            "install it with `pip install hd-bet`, or use backend 'hdbet_minimal'"
        )
    if weights_dir is None:
        raise FileNotFoundError("backend 'hdbet_official' needs weights_dir: the folder holding fold_all/")
    checkpoint = weights_dir / "fold_all" / "checkpoint_final.pth"
    for needed in (checkpoint, weights_dir / "plans.json", weights_dir / "dataset.json"):
        if not needed.is_file():
            raise FileNotFoundError(
                f"backend 'hdbet_official': {needed} not found; weights_dir must hold the unpacked hd-bet 2.x "
                "release (plans.json, dataset.json, fold_all/checkpoint_final.pth). Nothing is downloaded."
            )
    return weights_dir


def extract(volume: np.ndarray, spacing: Sequence[float], options: HDBetOptions) -> np.ndarray:
    """Brain mask of a RAS-ordered volume through nnU-Net's in-memory predictor."""
    weights_dir = check(options.weights_dir)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    device = resolve_device(options.device, "skullstrip.device")
    with torch_threads(options.threads):
        predictor = nnUNetPredictor(
            tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(options.mirror),
            perform_everything_on_device=device.type == "cuda", device=device, allow_tqdm=False,
        )
        predictor.initialize_from_trained_model_folder(str(weights_dir), "all")
        # nnU-Net's SimpleITK convention: (channel, z, y, x) and spacing in that order.
        seg = predictor.predict_single_npy_array(
            np.ascontiguousarray(volume.transpose(2, 1, 0)[None], dtype=np.float32),
            {"spacing": [float(s) for s in tuple(spacing)[::-1]]},
        )
    return np.asarray(seg).transpose(2, 1, 0) > 0


def weights_record(options: HDBetOptions) -> dict[str, Any]:
    """Path and checksum of the checkpoint used."""
    checkpoint = check(options.weights_dir) / "fold_all" / "checkpoint_final.pth"
    return {"hdbet_official": {"path": str(checkpoint), "sha256": sha256_file(checkpoint)}}
