"""Benchmark: the workflow at scale (a generated 1000-subject x 5-center sheet) and its per-job overhead.

Figures, each with its baseline measured in the same run:

* DAG: `snakemake -n` of the whole chain (preprocessing, config/paper.yaml's 12 trainings, inference,
  evaluation, tables) on the generated sheet, against Snakemake alone building a DAG of the same number
  of jobs from a one-rule Snakefile (what any workflow of that size costs);
* per-job overhead: a real run (one core) of K jobs that each run `thrombus --version`, against the same K jobs
  running `true`, and the start-up of the `thrombus` command against a bare `python -c pass`;
* import time of the package and of its CLI module (heavy libraries are imported only by the steps
  that need them).

The sheet points at empty DICOM folders: a dry run never opens them.

    .venv/bin/python benchmarks/bench_dag.py --subjects 1000 --centers 5
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import REPO, Figure, render_text  # noqa: E402  (a sibling script, not a package)

BIN = Path(sys.executable).parent
SERIES = {"swi": "05_SWI", "dwi": "02_DWI", "adc": "03_ADC", "flair": "04_FLAIR"}


def write_sheet(folder: Path, subjects: int, centers: int) -> Path:
    """A sheet of `subjects` labelled subjects spread over `centers` centers, one in three positive."""
    from thrombus.samples import COLUMNS

    mask = folder / "thrombus.nii.gz"
    mask.write_bytes(b"")
    lines = ["\t".join(COLUMNS)]
    for index in range(subjects):
        center = chr(ord("A") + index % centers)
        subject = f"{center}{index:04d}"
        dicom = folder / "dicom" / subject
        for series in SERIES.values():
            (dicom / series).mkdir(parents=True)
        positive = index % 3 == 0
        values = {c: "" for c in COLUMNS}
        values.update(subject=subject, center=center, dicom_dir=str(dicom), thrombus="1" if positive else "0",
                      thrombus_mask=str(mask) if positive else "", **SERIES)
        lines.append("\t".join(values[c] for c in COLUMNS))
    sheet = folder / "samples.tsv"
    sheet.write_text("\n".join(lines) + "\n")
    return sheet


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds, done.stdout + done.stderr


def job_count(dry_run_output: str) -> int:
    match = re.search(r"^total\s+(\d+)", dry_run_output, flags=re.MULTILINE)
    if not match:
        raise RuntimeError("the dry run printed no job total")
    return int(match.group(1))


def dag_of_the_workflow(work: Path, sheet: Path) -> tuple[float, int]:
    seconds, output = timed([str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(work), "-n", "--quiet", "rules", "host", "reason",
                             "--configfile", str(REPO / "config" / "config.yaml"), str(REPO / "config" / "paper.yaml"),
                             "--config", f"samples={sheet}"], work)
    return seconds, job_count(output)


def trivial_workflow(work: Path, jobs: int, command: str) -> Path:
    """A one-rule Snakefile with `jobs` jobs, each running `command`."""
    snakefile = work / f"Snakefile.{command.split()[0].rsplit('/', 1)[-1]}"
    snakefile.write_text(
        f"rule all:\n    input: expand('out/{{i}}.txt', i=range({jobs}))\n\n"
        f"rule one:\n    output: 'out/{{i}}.txt'\n    shell: '{command} > {{output}}'\n"
    )
    return snakefile


def snakemake_run(work: Path, snakefile: Path, *args: str) -> tuple[float, str]:
    """One core, so that wall time per job is each job's own overhead, not shared between two."""
    return timed([str(BIN / "snakemake"), "-s", str(snakefile), "-d", str(work), "--cores", "1", *args], work)


def startup(command: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_seconds(module: str) -> float:
    """Cumulative import time of `module` from `python -X importtime` (its own line, microseconds)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                          check=True)
    for line in done.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[2] == module:
            return int(parts[1]) / 1e6
    raise RuntimeError(f"no import time for {module}")


def heavy_imports(module: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"import sys, {module}; print(' '.join(sorted(sys.modules)))"],
                          capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    return sorted(m for m in ("torch", "ants", "monai", "scipy", "matplotlib", "nibabel", "pandas") if m in loaded)


def figures(subjects: int = 1000, centers: int = 5, jobs: int = 40) -> list[Figure]:
    """DAG build at scale, per-job overhead and start-up, each against its bare baseline; import times."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-dag-") as tmp:
        work = Path(tmp)
        sheet = write_sheet(work, subjects, centers)
        dag_seconds, count = dag_of_the_workflow(work, sheet)
        baseline = trivial_workflow(work, count, "true")
        base_seconds, _ = snakemake_run(work, baseline, "-n", "--quiet", "rules", "host", "reason")
        rows.append(Figure(f"`snakemake -n` of the whole chain, {subjects} subjects x {centers} centers ({count} jobs)",
                           f"{dag_seconds:.1f} s", f"{base_seconds:.1f} s (one-rule Snakefile, {count} jobs)",
                           dag_seconds / base_seconds, "< 30 s", dag_seconds < 30))

        ours = trivial_workflow(work, jobs, f"{BIN / 'thrombus'} --version")
        ours_seconds, _ = snakemake_run(work, ours)
        for old in (work / "out").glob("*.txt"):
            old.unlink()
        bare = trivial_workflow(work, jobs, "true")
        bare_seconds, _ = snakemake_run(work, bare)
        per_job = ours_seconds / jobs
        rows.append(Figure(f"per-job overhead: {jobs} jobs running `thrombus --version`, 1 core, per job",
                           f"{per_job:.2f} s", f"{bare_seconds / jobs:.2f} s (the same jobs running `true`)",
                           ours_seconds / bare_seconds, "< 2 s per job", per_job < 2.0))

    ours_start = startup([str(BIN / "thrombus"), "--version"])
    bare_start = startup([sys.executable, "-c", "pass"])
    rows.append(Figure("`thrombus --version` start-up", f"{ours_start:.2f} s", f"{bare_start:.2f} s (`python -c pass`)",
                       ours_start / bare_start))
    for module in ("thrombus", "thrombus.cli"):
        seconds = import_seconds(module)
        heavy = heavy_imports(module)
        rows.append(Figure(f"import {module}", f"{seconds:.3f} s", f"heavy modules loaded: {', '.join(heavy) or 'none'}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=1000)
    parser.add_argument("--centers", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=40, help="jobs of the per-job overhead run")
    args = parser.parse_args(argv)
    print(render_text(figures(args.subjects, args.centers, args.jobs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
