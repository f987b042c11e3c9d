"""One scan under two pseudonyms, found by content after conversion.

The sample sheet check catches two rows naming the same folder; a copied or re-exported series under
another folder only shows in its content. Two subjects sharing a series UID or identical voxels are
either one patient twice (a leak from training into testing when both are labelled) or a subject to
predict that the model was trained on. The table lists them for a person to resolve; conversion does not
stop, since only the person knows which row is wrong.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from thrombus.io import PathLike, atomic_path, read_json

log = logging.getLogger(__name__)

#: The sidecar fingerprints compared, and what a match of each means.
FINGERPRINTS: dict[str, str] = {
    "series_uid_sha256": "the same DICOM series (SeriesInstanceUID)",
    "voxels_sha256": "identical voxels",
}

COLUMNS = ("subjects", "centers", "sequences", "evidence", "labelled")


def _conversions(folders: Iterable[PathLike]) -> list[dict[str, str]]:
    """The ThrombusConversion block of every sidecar in the subjects' conversion folders."""
    blocks = []
    for folder in folders:
        for sidecar in sorted(Path(folder).glob("*.json")):
            block = read_json(sidecar).get("ThrombusConversion")
            if block:
                blocks.append(block)
    return blocks


def find_duplicates(folders: Iterable[PathLike], labelled: Iterable[str] = ()) -> pd.DataFrame:
    """One row per group of subjects sharing a fingerprint (a subject's own sequences may share one: a
    derived ADC carries its DWI's series UID)."""
    groups: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for block in _conversions(folders):
        for key in FINGERPRINTS:
            if block.get(key):
                groups[(key, block[key])].append(block)
    known = set(labelled)
    merged: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for (key, _), blocks in groups.items():
        subjects = tuple(sorted({b["subject"] for b in blocks}))
        if len(subjects) < 2:
            continue
        row = merged.setdefault(subjects, {"centers": set(), "sequences": set(), "evidence": set()})
        row["centers"] |= {b["center"] for b in blocks}
        row["sequences"] |= {b["sequence"] for b in blocks}
        row["evidence"].add(FINGERPRINTS[key])
    rows = [
        {"subjects": ", ".join(subjects), "centers": ", ".join(sorted(v["centers"])),
         "sequences": ", ".join(sorted(v["sequences"])), "evidence": "; ".join(sorted(v["evidence"])),
         "labelled": sum(s in known for s in subjects)}
        for subjects, v in sorted(merged.items())
    ]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def write_duplicates(table: pd.DataFrame, out: PathLike) -> Path:
    """The table as TSV (header only when no scan repeats), each group also logged as a warning."""
    for row in table.itertuples():
        leak = " (both labelled: a training subject may be scored as a test subject)" if row.labelled >= 2 else ""
        log.warning("subjects %s share %s in %s%s", row.subjects, row.evidence, row.sequences, leak)
    with atomic_path(out, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return Path(out)
