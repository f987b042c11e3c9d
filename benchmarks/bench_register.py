"""Benchmark: the registration backends side by side on the same pairs, in the same run.

Each backend registers every pair in a fresh process running the `register` step's function as the
workflow does (one thread, deterministic, seed 7), then, in a second fresh process, the first pair of
each center and every real pair again. Reported per backend: seconds per registration (the whole
step: reading, QC, resampling, writing; and the optimisation alone), residual (mm) against the synthetic
generator's known head motion on the demo cohort's pairs, brain-mask Dice on the real pairs (the
moving image's own mask carried onto the reference, against the reference's mask), and whether the
second run wrote the same bytes as the first. Every figure is given against ANTs, the baseline.

    .venv/bin/python benchmarks/bench_register.py --cohort cohort/demo
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_skullstrip  # noqa: E402  (a sibling script, not a package)
from figures import REPO, Figure  # noqa: E402

BASELINE = "ants"
ISLES = "nifti/isles22_sub-strokecase0009/rawdata/sub-strokecase0009/ses-0001/sub-strokecase0009_ses-0001_"
TCGA = "nifti/tcga_fg_6692_glioma/TCGA-FG-6692_"


@dataclass
class Pair:
    """One registration: the moving image onto the reference, with what judges the result."""

    name: str
    sequence: str
    reference: str
    moving: str
    fixed_mask: str | None = None
    #: Synthetic pairs: the generator's motion (scanner RAS, reference point -> moving point).
    motion_ras: list[list[float]] | None = None
    #: Real pairs: the moving image's own brain mask, carried onto the reference for the Dice.
    moving_mask: str | None = None


def demo_pairs(cohort: Path, work: Path, per_center: int = 2) -> list[Pair]:
    """The first subjects of each center: every sequence registered to the reference except ADC (which
    reuses the DWI transform in the workflow), with the truth brain mask on the reference grid."""
    from thrombus.convert import ConvertRequest, convert_subject
    from thrombus.preprocess.register import import_ants
    from thrombus.samples import read_sheet

    ants = import_ants(1)

    sheet = read_sheet(cohort / "samples.tsv").groupby("center", sort=False).head(per_center)
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    patterns = schema["properties"]["series_patterns"]["default"]  # for the sheet's "auto" series
    pairs = []
    for _, row in sheet.iterrows():
        subject = str(row["subject"])
        truth = json.loads((cohort / "truth" / row["center"] / subject / "truth.json").read_text())
        folder = work / "demo" / subject
        requests = [ConvertRequest(subject, row["center"], s, cohort / row["dicom_dir"], row[s], patterns)
                    for s in ("swi", "t2star", "dwi", "flair", "t1") if row[s]]
        if not (folder / f"{truth['reference']}.nii.gz").exists():
            convert_subject(requests, folder)
        reference = folder / f"{truth['reference']}.nii.gz"
        mask = folder / "brain_mask.nii.gz"
        brain = ants.image_read(str(cohort / "truth" / row["center"] / subject / "brain.nii.gz"))
        ants.image_write(ants.resample_image_to_target(brain, ants.image_read(str(reference)), interp_type="genericLabel"), str(mask))
        for request in requests:
            if request.sequence != truth["reference"]:
                pairs.append(Pair(f"{subject} {request.sequence}", request.sequence, str(reference),
                                  str(folder / f"{request.sequence}.nii.gz"), str(mask),
                                  motion_ras=truth["sequences"][request.sequence]["motion"]["matrix_ras"]))
    return pairs


def real_pairs(realdata: Path, work: Path) -> list[Pair]:
    """TCGA T2 and FLAIR onto T1c (HD-BET masks), ISLES FLAIR onto DWI (both skull-stripped: nonzero masks)."""
    from thrombus.preprocess.skullstrip import HDBetOptions, skullstrip_file

    pairs = []
    if (realdata / f"{TCGA}T1c.nii.gz").exists():
        for sequence in ("T2", "FLAIR"):
            native = work / f"tcga_{sequence}_mask.nii.gz"
            if not native.exists():
                skullstrip_file(realdata / f"{TCGA}{sequence}.nii.gz", native, None, HDBetOptions(threads=1))
            pairs.append(Pair(f"TCGA {sequence} to T1c", "flair" if sequence == "FLAIR" else "dwi", str(realdata / f"{TCGA}T1c.nii.gz"),
                              str(realdata / f"{TCGA}{sequence}.nii.gz"),
                              str(realdata / f"{TCGA}T1c_hdbet_brainmask_from_brainles_tests.nii.gz"), moving_mask=str(native)))
    if (realdata / f"{ISLES}dwi.nii.gz").exists():
        masks = {s: _nonzero_mask(realdata / f"{ISLES}{s}.nii.gz", work / f"isles_{s}_mask.nii.gz") for s in ("dwi", "flair")}
        pairs.append(Pair("ISLES FLAIR to DWI", "flair", str(realdata / f"{ISLES}dwi.nii.gz"), str(realdata / f"{ISLES}flair.nii.gz"),
                          str(masks["dwi"]), moving_mask=str(masks["flair"])))
    return pairs


def _nonzero_mask(image: Path, target: Path) -> Path:
    img = nib.load(image)
    data = np.asarray(img.dataobj)
    nib.save(nib.Nifti1Image((data.reshape(data.shape[:3]) > 0).astype(np.uint8), img.affine), target)
    return target


def register_pairs(backend: str, pairs_json: str, out: str, indices: str) -> None:
    """Worker (a fresh process): the pairs at `indices` (comma-separated) through `register_file`; the
    seconds of each, whole and in the backend's `optimise`, in `out/seconds.json`."""
    from thrombus.preprocess import registrators
    from thrombus.preprocess.register import RegistrationOptions, register_file

    options = RegistrationOptions(threads=1, deterministic=True, seed=7, backend=backend)
    module = registrators.load(backend)
    optimise, spent = module.optimise, [0.0]

    def timed(*args, **kwargs):  # the optimisation alone, as the step calls it
        started = time.perf_counter()
        try:
            return optimise(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - started

    module.optimise = timed
    pairs = [Pair(**p) for p in json.loads(Path(pairs_json).read_text())]
    seconds = {}
    for index in map(int, indices.split(",")):
        pair, spent[0] = pairs[index], 0.0
        started = time.perf_counter()
        register_file(pair.reference, pair.moving, f"{out}/{index}.nii.gz", f"{out}/{index}.mat", options, "S", "BENCH",
                      pair.sequence, fixed_mask=pair.fixed_mask, record_path=f"{out}/{index}.json")
        seconds[pair.name] = {"step": time.perf_counter() - started, "optimise": spent[0]}
    Path(out, "seconds.json").write_text(json.dumps(seconds, indent=1))


def run_backend(backend: str, pairs: list[Pair], work: Path, run: int, indices: list[int]) -> Path:
    """One run of a backend over the pairs at `indices`, in a child process; its output folder."""
    out = work / f"{backend}_{run}"
    out.mkdir(parents=True, exist_ok=True)
    listing = work / "pairs.json"
    listing.write_text(json.dumps([asdict(p) for p in pairs]))
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_register as b; b.register_pairs(*sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, backend, str(listing), str(out), ",".join(map(str, indices))], check=True)
    return out


def rerun_indices(pairs: list[Pair]) -> list[int]:
    """The pairs registered twice: the first of each demo center (subject names start with it) and every real pair."""
    firsts: dict[str, int] = {}
    for index, pair in enumerate(pairs):
        firsts.setdefault(pair.name[0] if pair.motion_ras else pair.name, index)
    return sorted(firsts.values())


def itk_affine(path: Path) -> np.ndarray:
    """The 4x4 scanner-RAS matrix (reference point -> moving point) of an ITK affine file."""
    from thrombus.preprocess.register import import_ants

    ants = import_ants(1)
    tx = ants.read_transform(str(path))
    params = np.asarray(tx.parameters, dtype=float)
    centre = np.asarray(tx.fixed_parameters, dtype=float)
    matrix, translation = params[:9].reshape(3, 3), params[9:12]
    lps = np.eye(4)
    lps[:3, :3], lps[:3, 3] = matrix, translation + centre - matrix @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return flip @ lps @ flip


def residual_mm(pair: Pair, transform: Path) -> float:
    """Mean distance (mm) over the reference brain between where the transform and the generator's motion
    send each voxel centre."""
    mask = nib.load(pair.fixed_mask)
    ijk = np.argwhere(np.asarray(mask.dataobj).reshape(mask.shape[:3]) > 0)
    points = mask.affine @ np.c_[ijk, np.ones(len(ijk))].T
    error = (itk_affine(transform) - np.asarray(pair.motion_ras)) @ points
    return float(np.linalg.norm(error[:3], axis=0).mean())


def mask_dice(pair: Pair, transform: Path, work: Path) -> float:
    """Dice of the reference's brain mask and the moving image's own mask carried through `transform`."""
    from thrombus.preprocess.register import carry_mask

    carried = carry_mask(pair.moving_mask, pair.reference, work / "carried.nii.gz", transform)
    a = np.asarray(nib.load(carried).dataobj) > 0
    b = np.asarray(nib.load(pair.fixed_mask).dataobj).reshape(a.shape) > 0
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def same_bytes(first: Path, second: Path, indices: list[int]) -> bool:
    return all((first / f"{i}{suffix}").read_bytes() == (second / f"{i}{suffix}").read_bytes()
               for i in indices for suffix in (".mat", ".nii.gz"))


def compare(backends: tuple[str, ...], pairs: list[Pair], work: Path) -> dict[str, dict]:
    """Per backend: seconds, residuals, Dice and byte identity of two runs, per pair and summarised."""
    results = {}
    again = rerun_indices(pairs)
    for backend in backends:
        first = run_backend(backend, pairs, work, 1, list(range(len(pairs))))
        second = run_backend(backend, pairs, work, 2, again)
        seconds = json.loads((first / "seconds.json").read_text())
        per_pair = []
        for index, pair in enumerate(pairs):
            transform = first / f"{index}.mat"
            per_pair.append({
                "pair": pair.name, "seconds": seconds[pair.name]["step"], "optimise_seconds": seconds[pair.name]["optimise"],
                "residual_mm": residual_mm(pair, transform) if pair.motion_ras else None,
                "dice": mask_dice(pair, transform, work) if pair.moving_mask else None,
                "usable": json.loads((first / f"{index}.json").read_text())["qc"]["usable"],
            })
        results[backend] = {"pairs": per_pair, "identical": same_bytes(first, second, again), "rerun": len(again), **summary(per_pair)}
    return results


def summary(per_pair: list[dict]) -> dict[str, float]:
    residuals = [p["residual_mm"] for p in per_pair if p["residual_mm"] is not None]
    dice = [p["dice"] for p in per_pair if p["dice"] is not None]
    return {"seconds": float(np.mean([p["seconds"] for p in per_pair])),
            "optimise_seconds": float(np.mean([p["optimise_seconds"] for p in per_pair])),
            "residual_mm": float(np.mean(residuals)) if residuals else float("nan"),
            "worst_residual_mm": float(np.max(residuals)) if residuals else float("nan"),
            "dice": float(np.mean(dice)) if dice else float("nan"),
            "worst_dice": float(np.min(dice)) if dice else float("nan")}


def figures_of(results: dict[str, dict], demo: int, real: int) -> list[Figure]:
    """Each backend against ANTs: seconds per registration, residual, Dice, byte identity of reruns."""
    base = results[BASELINE]
    rows = []
    for backend, r in results.items():
        rows += [
            Figure(step=f"register, {backend}: seconds per registration step ({demo} demo + {real} real pairs, 1 thread)",
                   figure=f"{r['seconds']:.2f} s", baseline=f"{base['seconds']:.2f} s (ants)", ratio=r["seconds"] / base["seconds"]),
            Figure(step=f"register, {backend}: seconds of the optimisation alone (same pairs)",
                   figure=f"{r['optimise_seconds']:.2f} s", baseline=f"{base['optimise_seconds']:.2f} s (ants)",
                   ratio=r["optimise_seconds"] / base["optimise_seconds"]),
            Figure(step=f"register, {backend}: residual against the generator's head motion ({demo} demo pairs)",
                   figure=f"{r['residual_mm']:.3f} mm mean, {r['worst_residual_mm']:.3f} worst",
                   baseline=f"{base['residual_mm']:.3f} mm mean, {base['worst_residual_mm']:.3f} worst (ants)",
                   ratio=r["residual_mm"] / base["residual_mm"], target="within 0.1 mm of ants",
                   met=r["residual_mm"] <= base["residual_mm"] + 0.1),
            Figure(step=f"register, {backend}: brain-mask Dice after registration ({real} real pairs)",
                   figure=f"{r['dice']:.4f} mean, {r['worst_dice']:.4f} worst",
                   baseline=f"{base['dice']:.4f} mean, {base['worst_dice']:.4f} worst (ants)", ratio=r["dice"] / base["dice"]),
            Figure(step=f"register, {backend}: two runs byte-identical (.mat and image, {r['rerun']} pairs run twice)",
                   figure=str(r["identical"]), baseline=str(base["identical"]) + " (ants)", target="True", met=r["identical"]),
        ]
    return rows


def measure(cohort: Path | None, backends: tuple[str, ...], work: Path, per_center: int = 2) -> tuple[dict[str, dict], int, int]:
    """Pairs of the demo cohort (generated when not given) and of the real data, through every backend (ANTs first)."""
    backends = (BASELINE, *(name for name in backends if name != BASELINE))
    if cohort is None:
        from thrombus.synth import generate_cohort

        cohort = work / "cohort"
        generate_cohort(preset="demo", out_dir=cohort, progress=False)
    demo = demo_pairs(cohort, work, per_center)
    real = real_pairs(bench_skullstrip.realdata_folder(), work)
    return compare(backends, demo + real, work), len(demo), len(real)


def every_backend() -> tuple[str, ...]:
    """ANTs, the baseline, then every other backend there is (a new module joins without an edit here)."""
    from thrombus.preprocess import registrators

    return (BASELINE, *(name for name in registrators.names() if name != BASELINE))


def figures(cohort: Path | None = None, backends: tuple[str, ...] | None = None, per_center: int = 2) -> list[Figure]:
    """Every backend (default: all) against ANTs on the first `per_center` subjects of each center and the real pairs."""
    with tempfile.TemporaryDirectory(prefix="thrombus-bench-register-") as scratch:
        results, demo, real = measure(cohort, backends or every_backend(), Path(scratch), per_center)
    return figures_of(results, demo, real)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=None, help="a generated demo cohort (default: generated now)")
    parser.add_argument("--backends", nargs="+", default=None, help="default: every backend, ANTs first")
    parser.add_argument("--per-center", type=int, default=2, help="demo subjects per center")
    parser.add_argument("--work", type=Path, default=None, help="keep the outputs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, default=None, help="write the per-pair results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="thrombus-bench-register-") as scratch:
        work = args.work or Path(scratch)
        results, demo, real = measure(args.cohort, tuple(args.backends or every_backend()), work, args.per_center)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    for backend, r in results.items():
        for p in r["pairs"]:
            print(f"{backend:<8} {p['pair']:<22} {p['seconds']:7.2f} s ({p['optimise_seconds']:5.2f} optimising)  residual {p['residual_mm'] or float('nan'):.3f} mm  "
                  f"dice {p['dice'] or float('nan'):.4f}  usable {p['usable']}")
    from figures import render_text

    print(render_text(figures_of(results, demo, real)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
