"""Benchmark: seconds and peak memory of each preprocessing step, as the workflow runs them.

Each step runs as the same `thrombus <step>` command a Snakemake job runs (fresh process: start-up,
imports, I/O included), and its peak RSS comes from the kernel's accounting of that child alone. Two
subjects: one synthetic subject of the tiny cohort (generated into a temporary folder unless
`--cohort` names one) and the real TCGA case (T1c reference, T2 and FLAIR registered to it).
The HD-BET speed-up against the stock package is measured in the same run on the real ROBEX head
(`bench_skullstrip.py` holds that comparison; `--skip-stock` leaves it out), and so are the
registration backends against ANTs on the demo cohort's pairs and the real ones (`bench_register.py`
holds that comparison: seconds, residual against the generator's head motion, brain-mask Dice, byte
identity of reruns; `--backends ants` alone leaves it out).

    .venv/bin/python benchmarks/bench_preprocess.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_register  # noqa: E402  (sibling scripts, not packages)
import bench_skullstrip  # noqa: E402
import rule_memory  # noqa: E402
from figures import REPO, Figure, render_text  # noqa: E402

THROMBUS = [sys.executable, "-m", "thrombus"]
TCGA = "nifti/tcga_fg_6692_glioma/TCGA-FG-6692_"


@dataclass
class Timing:
    subject: str
    step: str
    seconds: float
    peak_mb: float


def run_step(subject: str, step: str, args: list[str]) -> Timing:
    """Run one CLI step in a child process; wall time and that child's own peak RSS."""
    start = time.perf_counter()
    process = subprocess.Popen([*THROMBUS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{step} of {subject} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
    return Timing(subject, step, seconds, usage.ru_maxrss / 1024.0)


def preprocess_subject(subject: str, images: dict[str, Path], reference: str, mask_sequence: str, work: Path, threads: int) -> list[Timing]:
    """Skull strip, register every other sequence, carry the mask, harmonise: the rules' commands."""
    work.mkdir(parents=True, exist_ok=True)
    ident = ["--subject", subject, "--center", "BENCH", "--threads", str(threads)]
    timings = [run_step(subject, f"skullstrip ({mask_sequence})", ["skullstrip", *ident, "--sequence", mask_sequence,
                                                                     "--image", str(images[mask_sequence]), "--out-mask", str(work / "native.nii.gz")])]
    others = [s for s in images if s != reference]
    # the mask sequence first (the others need its mask), DWI before ADC (ADC reuses its transform)
    order = sorted(others, key=lambda s: (s != mask_sequence, s == "adc"))
    if mask_sequence == reference:
        timings.append(_brainmask(subject, ident, work, images[reference], None))
    for sequence in order:
        masks = (["--moving-mask", str(work / "native.nii.gz")] if sequence == mask_sequence
                 else ["--fixed-mask", str(work / "brain_mask.nii.gz")])
        if sequence == "adc" and "dwi" in others:  # as the workflow does: ADC moves as its DWI did when they share a grid
            masks += ["--partner-image", str(images["dwi"]), "--partner-transform", str(work / "dwi.mat"),
                      "--partner-record", str(work / "dwi.json")]
        timings.append(run_step(subject, f"register {sequence}", [
            "register", *ident, "--sequence", sequence, "--reference", str(images[reference]), "--moving", str(images[sequence]),
            *masks, "--out-image", str(work / f"{sequence}.nii.gz"), "--out-transform", str(work / f"{sequence}.mat"),
            "--record", str(work / f"{sequence}.json"), "--seed", "7"]))
        if sequence == mask_sequence:
            timings.append(_brainmask(subject, ident, work, images[reference], sequence))
    timings.append(run_step(subject, "harmonise", [
        "harmonise", *ident, "--reference", str(images[reference]), "--reference-sequence", reference,
        "--brain-mask", str(work / "brain_mask.nii.gz"), "--sequences", *others,
        "--images", *[str(work / f"{s}.nii.gz") for s in others], "--records", *[str(work / f"{s}.json") for s in others],
        "--options", json.dumps({"channels": {"susceptibility": ["swi", "t2star", "t1"], "dwi": ["dwi"], "adc": ["adc"], "flair": ["flair"]}}),
        "--out-stack", str(work / "stack.nii.gz"), "--out-json", str(work / "stack.json"), "--out-png", str(work / "qc.png")]))
    return timings


def _brainmask(subject: str, ident: list[str], work: Path, reference: Path, sequence: str | None) -> Timing:
    transform = ["--transform", str(work / f"{sequence}.mat")] if sequence else []
    return run_step(subject, "brainmask", ["brainmask", *ident[:4], "--native-mask", str(work / "native.nii.gz"),
                                           "--reference", str(reference), *transform, "--out", str(work / "brain_mask.nii.gz")])


def synthetic_subject(cohort: Path | None, scratch: Path) -> tuple[str, dict[str, Path], str, str]:
    """The first subject of a cohort, converted with the `convert` step (its time is not counted here)."""
    from thrombus.convert import ConvertRequest, convert_subject
    from thrombus.samples import read_sheet

    if cohort is None:
        from thrombus.synth import generate_cohort

        cohort = scratch / "cohort"
        generate_cohort(preset="tiny", out_dir=cohort, progress=False)
    row = read_sheet(cohort / "samples.tsv").iloc[0]
    requests = [ConvertRequest(row["subject"], row["center"], sequence, Path(row["dicom_dir"]), row[sequence])
                for sequence in ("swi", "t2star", "dwi", "adc", "flair") if row[sequence] and row[sequence] != "auto"]
    convert_subject(requests, scratch / "converted")
    images = {r.sequence: scratch / "converted" / f"{r.sequence}.nii.gz" for r in requests}
    reference = "swi" if "swi" in images else "t2star"
    mask_sequence = "flair" if "flair" in images else reference
    return str(row["subject"]), images, reference, mask_sequence


def print_table(timings: list[Timing]) -> None:
    print(f"{'subject':<16} {'step':<22} {'seconds':>8} {'peak MB':>8} {'share':>6}")
    for subject in dict.fromkeys(t.subject for t in timings):
        rows = [t for t in timings if t.subject == subject]
        total = sum(t.seconds for t in rows)
        for t in rows:
            print(f"{t.subject:<16} {t.step:<22} {t.seconds:8.2f} {t.peak_mb:8.0f} {t.seconds / total:6.1%}")
        print(f"{subject:<16} {'total':<22} {total:8.2f} {max(t.peak_mb for t in rows):8.0f} {1:6.0%}")


def hdbet_speedup(threads: int) -> None:
    """Stock HD-BET against ours (defaults) on the real head, both in this run."""
    head = bench_skullstrip.realdata_folder() / bench_skullstrip.HEAD
    stock = bench_skullstrip.run_isolated("stock", head, threads)
    ours = bench_skullstrip.run_isolated("ours_default", head, threads)
    ratio = stock["seconds"] / ours["seconds"]
    print(f"\nHD-BET on the real head: stock {stock['seconds']:.1f} s, ours {ours['seconds']:.1f} s, "
          f"speed-up {ratio:.1f}x (target >= {bench_skullstrip.TARGET_SPEEDUP:.0f}x), "
          f"mask Dice vs stock {bench_skullstrip.dice(ours['mask'], stock['mask']):.4f}")


def one_subject_sheet(cohort: Path, folder: Path) -> tuple[Path, str, str]:
    """The cohort's sheet cut to the first subject of each center, and the first subject's center and name.

    One subject per center, not one in all: the config's experiments need every center to parse; only
    the first subject's preprocessing is run.
    """
    from thrombus.samples import read_sheet

    sheet = read_sheet(cohort / "samples.tsv").groupby("center", sort=False).head(1)
    path = folder / "samples.tsv"
    sheet.to_csv(path, sep="\t", index=False)
    return path, str(sheet.iloc[0]["center"]), str(sheet.iloc[0]["subject"])


def workflow_run(cohort: Path, work: Path, threads: int) -> tuple[float, list[str]]:
    """Snakemake preprocessing one subject (DICOM to stack) on `threads` cores: wall seconds, shell commands.

    The commands come from the run's own log in the order the jobs started, which respects every
    dependency, so replaying them one after another is a valid bare run of the same work.
    """
    work.mkdir(parents=True)
    sheet, center, subject = one_subject_sheet(cohort, work)
    command = [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work),
               "--configfile", str(REPO / "config" / "config.yaml"), "--config", f"samples={sheet}",
               "--cores", str(threads), "--printshellcmds", f"results/harmonise/{center}/{subject}/stack.nii.gz"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True, env=_tool_env())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the workflow run failed:\n{done.stderr[-3000:]}")
    shells = [line.split("Shell command:", 1)[1].strip() for line in done.stderr.splitlines() if "Shell command:" in line]
    return seconds, shells


def bare_run(work: Path, shells: list[str]) -> float:
    """The same commands run one after another in a fresh copy of the folder, without Snakemake.

    Everything the jobs wrote goes first; `results/dicom` stays: its links to the series are made by
    Snakemake at start-up, not by a job, and the convert command reads them.
    """
    for output in (work / "results").iterdir():
        if output.name == "dicom":
            continue
        if output.is_dir() and not output.is_symlink():
            shutil.rmtree(output)
        else:
            output.unlink()
    shutil.rmtree(work / "logs", ignore_errors=True)
    total = 0.0
    for shell in shells:
        for token in shlex.split(shell):
            if token.startswith(("results/", "logs/")):
                (work / token).parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        done = subprocess.run(shell, shell=True, cwd=work, capture_output=True, text=True, env=_tool_env())
        total += time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"bare command failed: {shell[:200]}\n{done.stderr[-2000:]}")
    return total


def _tool_env() -> dict[str, str]:
    """PATH with this interpreter's folder first (the rules call `thrombus` and `dcm2niix` by name)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def registration_cohort(cohort: Path | None) -> Path | None:
    """The cohort whose pairs compare the registration backends: the one given, else the demo cohort that
    `make demo` generates when it is there (None: `bench_register` generates one)."""
    demo = REPO / "cohort" / "demo"
    return cohort if cohort is not None else demo if (demo / "samples.tsv").exists() else None


def figures(threads: int = 2, cohort: Path | None = None, backends: tuple[str, ...] | None = None) -> list[Figure]:
    """Per-step seconds with their share of a subject, the workflow's overhead on one subject, the
    peak memory of each of its rules against their requests (Snakemake's benchmark files of that run),
    and the registration backends (default: every one) against ANTs."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="thrombus-bench-") as scratch:
        work = Path(scratch)
        if cohort is None:
            from thrombus.synth import generate_cohort

            cohort = work / "cohort"
            generate_cohort(preset="tiny", out_dir=cohort, progress=False)
        subject, images, reference, mask_sequence = synthetic_subject(cohort, work)
        shape = nib.load(images[reference]).shape
        timings = preprocess_subject(subject, images, reference, mask_sequence, work / "steps", threads)
        total = sum(t.seconds for t in timings)
        for t in timings:
            rows.append(Figure(step=f"{t.step}, subject {subject} (reference {reference} {shape})",
                               figure=f"{t.seconds:.1f} s, {t.peak_mb:.0f} MB peak", baseline=f"{total:.1f} s (the subject's steps)",
                               ratio=t.seconds / total))
        wall, shells = workflow_run(cohort, work / "workflow", threads)
        measured = rule_memory.figures(work / "workflow" / "logs" / "benchmarks")
        bare = bare_run(work / "workflow", shells)
        rows.append(Figure(step=f"preprocessing of one subject ({len(shells)} jobs, DICOM to stack) through Snakemake, "
                                f"{threads} cores", figure=f"{wall:.1f} s",
                           baseline=f"{bare:.1f} s (the same {len(shells)} commands run bare, one after another)",
                           ratio=wall / bare))
    backends = backends or bench_register.every_backend()
    if len(backends) > 1:
        rows += bench_register.figures(registration_cohort(cohort), backends)
    return rows + measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cohort", type=Path, default=None, help="a generated cohort (default: tiny, generated now)")
    parser.add_argument("--skip-stock", action="store_true", help="leave out the stock HD-BET comparison (minutes)")
    parser.add_argument("--backends", nargs="+", default=None,
                        help="registration backends compared on the demo and real pairs (default: every one; ants alone: no comparison)")
    parser.add_argument("--register-cohort", type=Path, default=None,
                        help="the cohort of that comparison (default: cohort/demo when there, else the demo preset generated now)")
    args = parser.parse_args(argv)
    realdata = bench_skullstrip.realdata_folder()
    timings: list[Timing] = []
    with tempfile.TemporaryDirectory(prefix="thrombus-bench-") as scratch:
        work = Path(scratch)
        subject, images, reference, mask_sequence = synthetic_subject(args.cohort, work)
        shape = nib.load(images[reference]).shape
        print(f"synthetic subject {subject}: reference {reference} {shape}, sequences {', '.join(images)}")
        timings += preprocess_subject(f"synthetic {subject}", images, reference, mask_sequence, work / "synthetic", args.threads)
        if (realdata / f"{TCGA}T1c.nii.gz").exists():
            tcga = {"t1": realdata / f"{TCGA}T1c.nii.gz", "dwi": realdata / f"{TCGA}T2.nii.gz", "flair": realdata / f"{TCGA}FLAIR.nii.gz"}
            print("real subject TCGA-FG-6692: T1c reference (256x224x26), T2 (as 'dwi' slot) and FLAIR registered")
            timings += preprocess_subject("real TCGA", tcga, "t1", "t1", work / "tcga", args.threads)
        else:
            print(f"real data absent ({realdata}); real subject skipped")
    print()
    print_table(timings)
    if not args.skip_stock and (realdata / bench_skullstrip.HEAD).exists():
        hdbet_speedup(args.threads)
    backends = tuple(args.backends or bench_register.every_backend())
    if len(backends) > 1:
        print("\nregistration backends against ANTs (one thread each):")
        print(render_text(bench_register.figures(registration_cohort(args.register_cohort), backends)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
