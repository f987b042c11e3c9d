"""The thrombus workflow through a real SLURM cluster with `snakemake --profile slurm`.

The site profile is installed the way users install it (scripts/slurm/install-profile.sh into
$XDG_CONFIG_HOME/snakemake/slurm), filled for the test cluster (account, partition, no retries,
short timings), and found by name. The cluster (tests/slurm_cluster.py) is one node with 2 CPUs
and one advertised fake GPU.

* one center's preprocessing (`--config center=A`), then `all` with training, inference, evaluation and
  a table (smoke config), GPU rules on the GPU;
* a job failing in thrombus code is FAILED in sacct and stops the run, naming the rule and its log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, REPO, smoke_config, write_config
from thrombus.resources import request_mb
from thrombus.samples import read_sheet

# tests/ is on sys.path (rootdir-relative imports, no tests/__init__.py), as for `conftest`
from slurm_cluster import (  # noqa: F401 (fixture)
    finished_rules,
    local_rules,
    rule_of,
    skip_reason,
    slurm_cluster,
    submitted_jobs,
    write_slurm_profile,
    write_workflow_profile,
)

# skip before the (session-scoped, 30 s) tiny cohort is generated, not only in the slurm_cluster fixture
_SKIP = skip_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

GPU_RULES = ("train", "calibrate", "infer")  # the rules profiles/default/ gives `gpu: 1`
TIMED_OUT = (124, 137)  # `timeout` killed snakemake


def _install_site_profile(tmp_path: Path, cluster) -> dict[str, str]:
    """Install profiles/slurm/ under tmp_path/xdg as a user would, make the site's edits; the env to use it."""
    xdg = tmp_path / "xdg"
    installed = subprocess.run(["bash", str(REPO / "scripts/slurm/install-profile.sh")],
                               env=dict(os.environ, XDG_CONFIG_HOME=str(xdg)), capture_output=True, text=True, timeout=60)
    assert installed.returncode == 0, installed.stderr
    write_slurm_profile(xdg / "snakemake" / "slurm", cluster)  # the site's edits: account, partition
    return {"XDG_CONFIG_HOME": str(xdg), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def _tail(run, cluster, rows=None, lines: int = 80) -> str:
    return (f"\nsnakemake rc={run.returncode} after {run.seconds:.0f}s: {' '.join(run.cmd)}\n"
            "--- snakemake output (tail) ---\n" + "\n".join(run.output.splitlines()[-lines:]) +
            ("\n--- sacct ---\n" + "\n".join(map(str, rows)) if rows is not None else "") + "\n" + cluster.diagnostics())


@pytest.mark.fault
def test_failing_job_is_failed_and_stops_the_run(slurm_cluster, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    """A DICOM slice missing: that conversion job is FAILED in sacct, snakemake exits non-zero and says where to look."""
    env = _install_site_profile(tmp_path, slurm_cluster)
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort, cohort)
    sheet = read_sheet(cohort / "samples.tsv")
    victim = sheet[sheet["swi"].str.match(r"^\d")].iloc[0]  # a subject whose SWI is a named series folder
    center, subject = victim["center"], victim["subject"]
    folder = Path(victim["dicom_dir"]) / victim["swi"]
    slices = sorted(folder.iterdir())
    slices[len(slices) // 2].unlink()
    workdir = tmp_path / "run"
    workdir.mkdir()
    config = write_config(workdir / "config.yaml", samples=str(cohort / "samples.tsv"))
    run = slurm_cluster.snakemake(["-s", str(REPO / "Snakefile"), "--profile", "slurm", "--configfile", str(config),
                                   "--config", f"center={center}", "--", "convert_all"],
                                  cwd=workdir, timeout=900, extra_env=env)
    print(f"\nsnakemake --profile slurm convert_all (center {center}, one slice missing) took {run.seconds:.0f}s")
    assert run.returncode not in (0, *TIMED_OUT), _tail(run, slurm_cluster)  # failed, not timed out
    assert run.run_id, _tail(run, slurm_cluster)

    # sacct: the victim's job FAILED, the other subjects' conversions COMPLETED (keep-going), one sbatch each
    rows = slurm_cluster.sacct_run(run.run_id)
    victim_comment = f"rule_convert_wildcards_{center}_{subject}"
    by_comment = {r["Comment"]: r for r in rows}
    assert len(by_comment) == len(rows), _tail(run, slurm_cluster, rows)  # no resubmission (retries: 0)
    assert by_comment.get(victim_comment, {}).get("State") == "FAILED", _tail(run, slurm_cluster, rows)
    assert by_comment[victim_comment]["ExitCode"] != "0:0", rows
    others = [r for c, r in by_comment.items() if c != victim_comment]
    in_center = sheet[sheet["center"] == center]
    assert len(others) == len(in_center) - 1 and all(r["State"] == "COMPLETED" for r in others), _tail(run, slurm_cluster, rows)
    assert {rule_of(r) for r in rows} == {"convert"}, rows

    # the message: the failed rule, its wildcards, its log file (printed: show-failed-logs), the SLURM log
    log = f"logs/convert/{center}/{subject}.log"
    out = run.output
    assert "Error in rule convert" in out, _tail(run, slurm_cluster)
    assert log in out, _tail(run, slurm_cluster)
    assert "a slice is missing" in out, "the failed job's log is not shown: " + _tail(run, slurm_cluster)
    job_id = by_comment[victim_comment]["JobID"]
    assert f"SLURM-job '{job_id}' failed" in out, _tail(run, slurm_cluster)
    slurm_logs = list((workdir / "logs/slurm/rule_convert").glob(f"{center}_{subject}/{job_id}.log"))
    assert slurm_logs and str(slurm_logs[0]) in out, (slurm_logs, _tail(run, slurm_cluster))
    # ... and the run itself stops saying so (not only the job's own snakemake inside its SLURM log)
    assert "Exiting because a job execution failed" in "\n".join(out.splitlines()[-10:]), _tail(run, slurm_cluster)
    # the thrombus log names center, subject and series; no output is left for the failed job
    text = (workdir / log).read_text()
    assert f"center {center}, subject {subject}, swi" in text and f"results/dicom/{center}/{subject}/swi" in text, text
    assert str(folder) not in text  # the pseudonym's link names the folder, the source path stays out
    assert not (workdir / f"results/convert/{center}/{subject}").exists()
    assert not [p for p in (workdir / "results").rglob("*") if p.is_file() and f"/{center}/" not in str(p)]


def _lean_smoke_config(cohort: Path, dest: Path) -> tuple[Path, str]:
    """The smoke config (config/smoke.yaml) on center A's first subject and center B of the tiny cohort: one
    leave-one-center-out experiment with fold 0 (test A, train and validate on B) and one table;
    preprocessing 1 thread a job.

    The lean parts keep the run near 5 minutes on 2 cores, where every SLURM job costs about 10 s of
    Snakemake start-up (job step + srun) and the plugin waits 5 s before each sbatch (7 jobs a subject).
    """
    sheet = read_sheet(cohort / "samples.tsv")  # paths absolute
    first_of_a = sheet[sheet["center"] == "A"].index[:1]
    sheet = sheet[(sheet["center"] == "B") | sheet.index.isin(first_of_a)]
    samples = dest / "samples.tsv"
    sheet.to_csv(samples, sep="\t", index=False)
    table = "loco"
    smoke = smoke_config()
    config = smoke_config(
        samples=str(samples),
        threads={**smoke["threads"], "skullstrip": 1, "register": 1},
        experiments={"loco_gmd": {"split": "loco", "folds": [0]}},
        tables={table: {"title": "Leave one center out (SLURM smoke run)", "experiments": ["loco_gmd"], "subsets": ["all"]}},
    )
    return write_config(dest / "config.yaml", **config), table


def _one_center_first(cluster, env: dict[str, str], workdir: Path, config: Path) -> None:
    """`--config center=A`: center A's preprocessing alone, every job through sbatch and COMPLETED, center B
    untouched (what a site does when one center sends new scans); the `all` run after it reuses it."""
    run = cluster.snakemake(["all", "-s", str(REPO / "Snakefile"), "--profile", "slurm", "--configfile", str(config),
                             "--config", "center=A"], cwd=workdir, timeout=1500, extra_env=env)
    print(f"\nsnakemake --profile slurm all (center A preprocessing) took {run.seconds:.0f}s")
    assert run.returncode == 0, _tail(run, cluster)
    assert run.run_id, "no SLURM run ID in the output: the slurm executor was not used" + _tail(run, cluster)
    center_a = read_sheet(workdir / "samples.tsv").query("center == 'A'")
    for subject in center_a["subject"]:
        assert (workdir / f"results/harmonise/A/{subject}/stack.nii.gz").exists(), subject
    assert (workdir / "results/qc/A/preprocess.tsv").exists() and not (workdir / "results/harmonise/B").exists()
    rows = cluster.sacct_run(run.run_id)
    rules = sorted(rule_of(r) for r in rows)
    assert rows and all(r["State"] == "COMPLETED" for r in rows), rows
    for rule in ("convert", "skullstrip", "register", "brainmask", "harmonise"):
        assert rule in rules, rules
    assert "qc_center" not in rules, "qc_center is a local rule"
    assert rules.count("convert") == len(center_a) and rules.count("harmonise") == len(center_a), rules


def test_all_with_training_through_sbatch(slurm_cluster, tiny_cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    """One center's preprocessing first (`--config center=A`), then `snakemake --profile slurm all`: the other
    center's preprocessing, training, inference, evaluation and a table, every job an sbatch job COMPLETED
    in sacct, train and infer with the fake GPU, the other rules without one."""
    cluster = slurm_cluster
    env = _install_site_profile(tmp_path, cluster)
    # The shipped workflow profile asks cpus_per_gpu: 4, which a 2-CPU node cannot give (sbatch: "Requested node
    # configuration is not available"): a test copy of it caps cpus_per_gpu at the node's CPUs, gpu: 1 unchanged.
    wprofile, cpus_per_gpu = write_workflow_profile(tmp_path / "workflow-profile", cluster.node_cpus())
    assert set(GPU_RULES) <= set(cpus_per_gpu), f"profiles/default/ no longer sets cpus_per_gpu of {GPU_RULES}"
    workdir = tmp_path / "run"
    workdir.mkdir()
    config, table = _lean_smoke_config(tiny_cohort, workdir)
    _one_center_first(cluster, env, workdir, config)
    run = cluster.snakemake(["all", "-s", str(REPO / "Snakefile"), "--profile", "slurm", "--workflow-profile", str(wprofile),
                             "--configfile", str(config)], cwd=workdir, timeout=1800, extra_env=env)
    print(f"\nsnakemake --profile slurm all (smoke config, centers A+B, training) took {run.seconds:.0f}s")
    assert run.returncode not in TIMED_OUT, "snakemake timed out" + _tail(run, cluster)
    assert run.returncode == 0, _tail(run, cluster)
    assert run.run_id, "no SLURM run ID in the output: the slurm executor was not used" + _tail(run, cluster)

    # results: the table (all its files), the model, the predictions and the evaluation
    tables = workdir / "results" / "tables"
    for name in (f"{table}.md", f"{table}.csv", f"{table}.tex", f"{table}_per_center.md", f"{table}_subjects.tsv",
                 f"figures/{table}_boxplots.png", f"figures/{table}_overlays.png"):
        assert (tables / name).is_file() and (tables / name).stat().st_size > 0, name
    assert "Leave one center out (SLURM smoke run)" in (tables / f"{table}.md").read_text()
    model = workdir / "results/models/loco_gmd/fold0"
    for name in ("best.pt", "latest.pt", "model_card.json", "postprocessing.json", "training_log.csv"):
        assert (model / name).is_file(), name
    predictions = workdir / "results/heldout/loco_gmd/fold0"
    assert predictions.is_dir() and any(p.is_file() for p in predictions.rglob("*")), "no predictions"
    assert (workdir / "results/evaluation/loco_gmd/fold0.tsv").is_file()
    assert not (workdir / "results/harmonise/C").exists()

    # every job Snakemake did not run locally went through sbatch, once, and is COMPLETED in sacct
    rows = cluster.sacct_run(run.run_id)
    by_rule: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_rule.setdefault(rule_of(r), []).append(r)
    bad = [r for r in rows if r["State"] != "COMPLETED"]
    assert rows and not bad, _tail(run, cluster, rows)
    assert all(r["Account"] == cluster.account and r["Partition"] == cluster.partition for r in rows), rows
    finished, local = finished_rules(run.output), local_rules(run.output)
    remote = {rule: n - local.get(rule, 0) for rule, n in finished.items() if n - local.get(rule, 0)}
    assert {rule: len(rs) for rule, rs in by_rule.items()} == remote, _tail(run, cluster, rows)
    assert {r["JobID"] for r in rows} == set(submitted_jobs(run.output)), _tail(run, cluster, rows)
    for rule in ("convert", "skullstrip", "register", "brainmask", "harmonise", "train", "calibrate", "infer", "evaluate"):
        assert rule in by_rule, f"no {rule} job in sacct: {sorted(by_rule)}"
    for rule in ("tables", "splits", "qc_center"):  # localrules: on the submit host
        assert rule not in by_rule and local.get(rule), (rule, sorted(by_rule), local)

    # GPU: train, calibrate and infer asked for and got the GPU, with cpus_per_gpu CPUs; no other rule asked for one
    for rule in GPU_RULES:
        (r,) = by_rule[rule]
        assert "gres/gpu=1" in r["ReqTRES"] and "gres/gpu=1" in r["AllocTRES"], (rule, r)
        assert f"cpu={cpus_per_gpu[rule]}," in r["AllocTRES"] + ",", (rule, cpus_per_gpu, r)
    for rule, rs in by_rule.items():
        if rule not in GPU_RULES:
            for r in rs:
                assert "gres/gpu" not in r["ReqTRES"] + r["AllocTRES"], (rule, r)
    # a rule's own requests reach sbatch, not the profile's defaults (500 MB, 10 min): mem_mb as --mem, runtime as -t
    for r in by_rule["register"]:
        assert f"mem={request_mb('register')}M," in r["ReqTRES"] + "," and r["Timelimit"] == "00:20:00", r
    # the jobs' own logs and their SLURM logs (kept for successful jobs by the test profile)
    assert (workdir / "logs/train/loco_gmd/fold0.log").is_file()
    assert list((workdir / "logs/slurm/rule_train").rglob("*.log")), "no SLURM log of the train job"
    elapsed = {rule: sorted(r["Elapsed"] for r in rs)[-1] for rule, rs in by_rule.items()}
    print(f"{len(rows)} sbatch jobs; longest per rule: {elapsed}")
