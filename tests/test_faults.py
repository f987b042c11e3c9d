"""Faults: the workflow SIGKILLed inside each kind of step, then rerun, ends where an uninterrupted run ends.

One run of the smoke chain is killed once inside every kind of job, in a working directory and cohort
whose paths hold spaces and non-ASCII characters. After each kill the user's own recovery is replayed:
`snakemake --unlock`, then the same command again. The rerun may redo only the jobs that were running at
the kill, and every checkpoint and table must equal, byte for byte, those of the uninterrupted run of
the `tiny_run` fixture: this is also the proof that the same config and data give the same tables, from
DICOM on, in another folder.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import BIN, REPO, smoke_config, tool_env, write_config

# Rule -> the `thrombus` sub-command its jobs run, in the order the chain reaches them.
KINDS = {
    "convert": "convert",
    "skullstrip": "skullstrip",
    "register": "register",
    "harmonise": "harmonise",
    "train": "train",
    "calibrate": "calibrate",
    "infer": "predict-fold",
    "evaluate": "evaluate",
    "tables": "tables",
}


def _command(workdir: Path, config: Path, *args: str) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--profile",
            str(REPO / "profiles" / "local"), "--configfile", str(config), *args]


def _running(pid: int, subcommand: str) -> list:
    """The descendants of `pid` that run `thrombus <subcommand>` (the shell and the Python process)."""
    import psutil

    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if f"thrombus {subcommand} " in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:
            continue
    return found


def _ready_to_kill(workdir: Path, rule: str, started: float) -> bool:
    """Training is killed once it has written a checkpoint to resume from, every other job 1 s in."""
    if rule == "train":
        return any((workdir / "results" / "models").rglob("latest.pt"))
    return time.monotonic() - started > 1.0


def _run_and_kill(workdir: Path, config: Path, rule: str, timeout: float = 1200) -> bool:
    """Run the workflow and SIGKILL its whole process group while a `rule` job runs.

    False when the run ended first (it got past every job of that kind); a failed run fails the test.
    """
    log_path = workdir / f"snakemake_killed_in_{rule}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(_command(workdir, config), cwd=workdir, env=tool_env(), stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        deadline, started = time.monotonic() + timeout, None
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if _running(process.pid, KINDS[rule]):
                    started = started or time.monotonic()
                    if _ready_to_kill(workdir, rule, started):
                        os.killpg(process.pid, signal.SIGKILL)
                        process.wait()
                        return True
                time.sleep(0.05)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 0, log_path.read_text()[-3000:]
    return False


def _stamps(workdir: Path) -> dict[Path, int]:
    """Outputs and their times; not the temporaries a kill left, hidden files and the files of hidden
    staging folders (the next write of their target sweeps them, and the end of the test checks that
    none is left)."""
    results = workdir / "results"
    return {p.resolve(): p.stat().st_mtime_ns for p in results.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(results).parts)}


def _changed(before: dict[Path, int]) -> set[Path]:
    return {p for p, stamp in before.items() if not p.exists() or p.stat().st_mtime_ns != stamp}


def _outside(paths: set[Path], marked: set[Path]) -> set[Path]:
    """The `paths` that are neither marked nor inside a marked output folder (a directory output)."""
    return {p for p in paths if not marked.intersection((p, *p.parents))}


def _incomplete(workdir: Path) -> set[Path]:
    """The outputs Snakemake marked as being written when the run died (`.snakemake/incomplete`).

    A mark is the output's path, URL-safe base64, cut into '@'-prefixed folders when it is long.
    """
    marks = workdir / ".snakemake" / "incomplete"
    paths = set()
    for mark in marks.rglob("*") if marks.exists() else ():
        if not mark.is_file() or mark.name == "migration_underway":
            continue
        encoded = "".join(part.lstrip("@") for part in mark.relative_to(marks).parts)
        paths.add((workdir / base64.urlsafe_b64decode(encoded).decode()).resolve())
    return paths


def _unlock(workdir: Path, config: Path, first: bool) -> None:
    """What a user does after a killed run: the rerun refuses the stale lock and says how to lift it
    (checked after the first kill only: each Snakemake start costs seconds)."""
    if first:
        locked = subprocess.run(_command(workdir, config), cwd=workdir, env=tool_env(),  # -n takes no lock
                                capture_output=True, text=True, timeout=300)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    unlock = subprocess.run(_command(workdir, config, "--unlock"), cwd=workdir, env=tool_env(),
                            capture_output=True, text=True, timeout=300)
    assert unlock.returncode == 0, unlock.stderr[-2000:]


def _one_fold_each(config: dict) -> dict:
    """The smoke config with every experiment on fold 0 and the tables that need no other fold: each kind of
    step and each architecture and dropout mode still runs, at half the trainings of the full smoke run."""
    def one_fold(table: dict) -> bool:
        return table.get("folds") == [0] or all(config["experiments"][e].get("folds") == [0] for e in table["experiments"])

    experiments = {name: {**settings, "folds": [0]} for name, settings in config["experiments"].items()}
    tables = {name: settings for name, settings in config["tables"].items() if one_fold(settings)}
    assert len(tables) >= 2, "the smoke config lost its one-fold tables"
    return {**config, "experiments": experiments, "tables": tables}


@pytest.mark.slow
@pytest.mark.fault
def test_killed_in_every_kind_of_step_resumes_to_the_same_table(tiny_cohort: Path, tiny_run: Path,
                                                               tmp_path: Path) -> None:
    cohort = tmp_path / "cohort données" / "centre Zürich"
    shutil.copytree(tiny_cohort, cohort)  # the sheet's relative paths now resolve under these names
    workdir = tmp_path / "run dir ø"
    workdir.mkdir()
    # the labelled subjects only: the unlabelled one's prediction path has no kind of step of its own here
    config = write_config(workdir / "config.yaml", **_one_fold_each(smoke_config(samples=str(cohort / "samples.tsv"))))

    killed, interrupted = [], set()
    for rule in [*KINDS, None]:
        before = _stamps(workdir)
        if rule is None:
            done = subprocess.run(_command(workdir, config), cwd=workdir, env=tool_env(), capture_output=True,
                                  text=True, timeout=2400)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        elif not _run_and_kill(workdir, config, rule):
            continue
        # finished outputs stay as they are: only jobs cut short by a kill are redone (at the next run or,
        # when Snakemake schedules others first, a later one)
        redone = _outside(_changed(before), interrupted)
        if rule is not None:
            redone = _outside(redone, _incomplete(workdir))
        assert not redone, f"finished outputs redone in the run killed in {rule}: {sorted(redone)[:3]}"
        if rule is not None:
            killed.append(rule)
            marked = _incomplete(workdir)
            assert marked, f"killed in {rule}, yet no job was marked incomplete"
            interrupted |= marked
            _unlock(workdir, config, first=len(killed) == 1)
    assert killed == list(KINDS), f"killed in {killed} only"

    import torch

    checkpoints = sorted((workdir / "results" / "models").rglob("*.pt"))
    assert len(checkpoints) >= 8  # best and latest of every experiment's fold
    for ours in checkpoints:  # the training killed after its first checkpoint ends with the same weights too
        theirs = tiny_run / ours.relative_to(workdir)
        assert (torch.load(ours, weights_only=True)["weights_sha256"]
                == torch.load(theirs, weights_only=True)["weights_sha256"]), ours.relative_to(workdir)
    compared = 0
    for ours in sorted((workdir / "results" / "tables").glob("*.*")):  # every table, CSV to LaTeX
        theirs = tiny_run / "results" / "tables" / ours.name
        assert ours.read_bytes() == theirs.read_bytes(), f"{ours.name} differs from the uninterrupted run's"
        compared += 1
    assert compared >= 14
    nothing = subprocess.run(_command(workdir, config, "-n"), cwd=workdir, env=tool_env(), capture_output=True,
                             text=True, timeout=300)
    assert "Nothing to be done" in nothing.stdout + nothing.stderr
    # no temporary file of ours left (Snakemake keeps .snakemake_timestamp in directory outputs)
    leftovers = [p for p in (workdir / "results").rglob(".*") if p.name != ".snakemake_timestamp"]
    assert not leftovers, leftovers


@contextlib.contextmanager
def _nearly_full_disk(root: Path, free_bytes: int = 16 * 1024) -> Iterator[tuple[Path, Callable[[], None] | None]]:
    """A folder on a file system with `free_bytes` left: a real tmpfs where we may mount one (root).

    Fallback, named as one: elsewhere a file-size limit (RLIMIT_FSIZE) on the child process, which the
    kernel enforces on every write the same way (EFBIG instead of ENOSPC).
    """
    folder = root / "small disk"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode == 0
    try:
        if mounted:
            filler = folder / "filler"
            with open(filler, "wb") as handle:
                with contextlib.suppress(OSError):
                    handle.write(b"\0" * (1 << 20))
            usage = shutil.disk_usage(folder)
            filler.write_bytes(b"\0" * (filler.stat().st_size - max(0, free_bytes - usage.free)))
            yield folder, None
        else:
            yield folder, lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (free_bytes, resource.RLIM_INFINITY))
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.fault
def test_full_disk_leaves_no_output_to_trust_and_a_rerun_completes(tiny_cohort: Path, tmp_path: Path) -> None:
    from thrombus.samples import read_sheet

    row = read_sheet(tiny_cohort / "samples.tsv").iloc[0]
    with _nearly_full_disk(tmp_path) as (disk, limit):
        out = disk / "out"
        command = [str(BIN / "thrombus"), "convert", "--subject", row["subject"], "--center", row["center"],
                   "--dicom-dir", row["dicom_dir"], "--series", json.dumps({"swi": row["swi"]}), "--out-dir", str(out),
                   "--record", str(tmp_path / "logs" / "record.json")]  # the job's log, as in the rules
        full = subprocess.run(command, env=tool_env(), capture_output=True, text=True, timeout=300, preexec_fn=limit)
        assert full.returncode == 1, full.stderr
        message = next(line for line in full.stderr.splitlines() if line.startswith("ERROR thrombus"))
        assert f"center {row['center']}, subject {row['subject']}" in message
        assert any(cause in message for cause in ("No space left on device", "File too large", "SIGXFSZ")), message
        assert "Traceback" not in full.stderr
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
        assert not list(disk.glob(".*")), "the staging folder was left behind"
        for filler in disk.glob("filler"):
            filler.unlink()
        again = subprocess.run(command, env=tool_env(), capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        assert {p.name for p in out.iterdir()} == {"swi.nii.gz", "swi.json"}
