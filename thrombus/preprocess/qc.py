"""Pictures and tables a person looks at after preprocessing: one PNG per subject, one table per center.

Registration and skull stripping fail quietly (a mask that swallowed the orbit, a sequence shifted by a
slice); the only defence at scale is a picture per subject and a table that flags the outliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from thrombus.io import PathLike, atomic_path, read_json

#: Robust z-score (median / MAD) beyond which a value is flagged as an outlier of its center.
OUTLIER_Z = 3.5


def _slices(mask: np.ndarray, count: int = 3) -> list[int]:
    """Axial slices spread through the brain (the last array axis is the slice axis)."""
    z = np.nonzero(mask.any(axis=(0, 1)))[0]
    if z.size == 0:
        return [mask.shape[2] // 2]
    return sorted({int(v) for v in np.linspace(z[0], z[-1], count + 2)[1:-1].round()})


def subject_figure(stack: np.ndarray, mask: np.ndarray, channels: Sequence[str], availability: Sequence[int], out: PathLike,
                   title: str, affine: np.ndarray | None = None) -> Path:
    """Rows: slices; columns: channels; the brain-mask outline in every panel. With the grid's affine the
    panels are turned to the pictures' one layout (`nifti.DISPLAY_AXES`) and the patient's sides marked in
    the first column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if affine is not None:  # every subject's picture in one layout, whatever its grid
        from thrombus.nifti import for_display

        (stack, mask), affine = for_display([stack, mask], affine)
    rows = _slices(mask)
    fig, axes = plt.subplots(len(rows), len(channels), figsize=(2.6 * len(channels), 2.6 * len(rows)), squeeze=False)
    for r, z in enumerate(rows):
        for c, channel in enumerate(channels):
            ax = axes[r, c]
            ax.imshow(stack[:, :, z, c].T, cmap="gray", origin="lower", vmin=-2.5, vmax=2.5)
            ax.contour(mask[:, :, z].T.astype(float), levels=[0.5], colors="tab:red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0 and affine is not None:
                from thrombus.nifti import mark_sides

                mark_sides(ax, affine)
            if r == 0:
                ax.set_title(channel if availability[c] else f"{channel} (missing)", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80, metadata={"Software": "thrombus"})
    plt.close(fig)
    return Path(out)


def robust_z(values: pd.Series) -> pd.Series:
    """(x - median) / (1.4826 * MAD); zero when the center has no spread."""
    median = values.median()
    mad = (values - median).abs().median() * 1.4826
    return (values - median) / mad if mad > 0 else values * 0.0


def center_table(skullstrip_records: Sequence[PathLike], register_records: Sequence[PathLike], harmonise_summaries: Sequence[PathLike], out: PathLike) -> pd.DataFrame:
    """One row per subject and registered sequence, with mask volumes and outlier flags."""
    masks, mask_flags = {}, {}
    for path in skullstrip_records:
        record = read_json(path)
        masks[record["subject"]] = record.get("qc", {}).get("brain_volume_ml", np.nan)
        mask_flags[record["subject"]] = list(record.get("qc", {}).get("flags", []))
    rows: list[dict[str, Any]] = []
    for path in register_records:
        record = read_json(path)
        qc = record.get("qc", {})
        rows.append({
            "subject": record["subject"], "sequence": record["params"]["sequence"],
            "mi_before": qc.get("mi_before"), "mi_after": qc.get("mi_after"),
            "rotation_deg": qc.get("rotation_deg"), "translation_mm": qc.get("translation_mm"),
            "usable": qc.get("usable", True), "flags": "; ".join(qc.get("flags", [])),
        })
    for path in harmonise_summaries:
        summary = read_json(path)
        if not any(r["subject"] == summary["subject"] for r in rows):
            rows.append({"subject": summary["subject"], "sequence": summary["reference"], "usable": True, "flags": ""})
    table = pd.DataFrame(rows)
    table["flags"] = ["; ".join([*mask_flags.get(subject, []), *([flags] if flags else [])])
                      for subject, flags in zip(table["subject"], table["flags"])]
    table["brain_ml"] = table["subject"].map(masks)
    table = _flag_outliers(table)
    with atomic_path(out, suffix=".tsv") as tmp:
        table.sort_values(["subject", "sequence"]).to_csv(tmp, sep="\t", index=False, float_format="%.4f")
    return table


def _flag_outliers(table: pd.DataFrame) -> pd.DataFrame:
    """Mark brain volumes and post-registration MI that stand out from the rest of the center."""
    notes = [[] for _ in range(len(table))]
    volumes = table.drop_duplicates("subject").set_index("subject")["brain_ml"].astype(float)
    z_volume = robust_z(volumes.dropna())
    for i, subject in enumerate(table["subject"]):
        if abs(z_volume.get(subject, 0.0)) > OUTLIER_Z:
            notes[i].append("brain volume outlier")
    if "mi_after" in table:
        for sequence, group in table.dropna(subset=["mi_after"]).groupby("sequence"):
            z_mi = robust_z(group["mi_after"].astype(float))
            for index, value in z_mi.items():
                if value < -OUTLIER_Z:
                    notes[table.index.get_loc(index)].append(f"low {sequence} MI after registration")
    table["outlier"] = ["; ".join(n) for n in notes]
    return table


def write_fingerprint(summaries: Sequence[PathLike], out: PathLike) -> dict[str, Any]:
    """The center's fingerprint (see `harmonise.fingerprint`) as JSON."""
    from thrombus.io import write_json
    from thrombus.preprocess.harmonise import fingerprint

    result = fingerprint([read_json(p) for p in summaries])
    write_json(out, result)
    return result
