"""A training run's log (CSV, one row per iteration) and its learning-curve picture."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from thrombus.io import atomic_path, write_text

LOG_COLUMNS: tuple[str, ...] = ("iteration", "loss", "lr", "gmd_strength", "val_dice", "val_loss", "seconds")


def write_log(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """The CSV log, one row per iteration; validation columns empty between validations."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(LOG_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in LOG_COLUMNS})
    write_text(path, buffer.getvalue())


def plot_learning_curves(rows: Sequence[Mapping[str, Any]], target: Path, title: str) -> None:
    """Training loss (raw and moving average), validation loss, validation Dice and GMD strength."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = np.array([row["iteration"] for row in rows])
    loss = np.array([row["loss"] for row in rows], dtype=float)
    window = max(len(loss) // 20, 1)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    validated = [row for row in rows if row.get("val_loss") is not None]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    top.plot(iterations, loss, color="0.8", linewidth=0.6, label="training loss")
    top.plot(iterations[window - 1 :], smooth, color="C0", label=f"training loss, mean of {window}")
    top.plot([r["iteration"] for r in validated], [r["val_loss"] for r in validated], "o-", color="C1", label="validation loss")
    top.set_ylabel("Dice + BCE")
    top.legend(loc="upper right", fontsize=8)
    top.set_title(title, fontsize=10)
    bottom.plot(
        [r["iteration"] for r in validated], [r["val_dice"] for r in validated], "o-", color="C2", label="validation Dice"
    )
    bottom.step(iterations, [row["gmd_strength"] for row in rows], where="post", color="C3", alpha=0.6, label="GMD strength")
    bottom.set_ylim(0, 1.05)
    bottom.set_xlabel("iteration")
    bottom.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


