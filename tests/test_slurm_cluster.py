"""The site profile against a real SLURM cluster, on a tiny workflow written into tmp_path.

The cluster (tests/slurm_cluster.py) is a single node on loopback with slurmdbd accounting and one
advertised fake GPU, started by scripts/slurm/start-cluster.sh. A GPU job asking more CPUs per GPU than
the node has is refused by sbatch, with its message; the install script installs the profile. That jobs
go through sbatch with the profile's account, partition, memory and time, COMPLETED or FAILED in sacct,
is shown on the thrombus workflow itself (tests/test_slurm_workflow.py).
"""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# tests/ is on sys.path (rootdir-relative imports, no tests/__init__.py), as for `conftest`
from slurm_cluster import REPO, slurm_cluster, write_slurm_profile  # noqa: F401 (fixture)

SNAKEFILE = r'''
localrules: all

rule all:
    input: "results/gather.txt"

rule part:
    output: "results/part_{i}.txt"
    resources: mem_mb=300, runtime=5
    shell: "echo part={wildcards.i} slurm_job=${{SLURM_JOB_ID:-none}} > {output}"

rule gather:
    input: expand("results/part_{i}.txt", i=[1, 2])
    output: "results/gather.txt"
    resources: gpu=1, mem_mb=300, runtime=5
    shell:
        "cat {input} > {output}; "
        "echo gather slurm_job=${{SLURM_JOB_ID:-none}} gpus=${{CUDA_VISIBLE_DEVICES:-none}} >> {output}"

rule greedy:
    output: "results/greedy.txt"
    resources: mem_mb=300, runtime=5
    shell: "echo greedy > {output}"
'''


def _workflow(root: Path, cluster) -> tuple[Path, Path]:
    wd = root / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(SNAKEFILE)
    profile = write_slurm_profile(root / "profile", cluster)
    return wd, profile


def _fail_msg(run, cluster, rows=None) -> str:
    return (f"snakemake rc={run.returncode} after {run.seconds:.0f}s\n"
            f"--- snakemake output (tail) ---\n" + "\n".join(run.output.splitlines()[-60:]) +
            (f"\n--- sacct ---\n{rows}" if rows is not None else "") + "\n" + cluster.diagnostics())


@pytest.mark.slurm
def test_gpu_job_asking_more_cpus_than_the_node_is_refused(slurm_cluster, tmp_path):  # noqa: F811 (pytest fixture)
    """cpus_per_gpu above the node's CPUs (profiles/default/ asks 4; the test node has 2): sbatch refuses the
    job at submission, and Snakemake stops with sbatch's message (why test_slurm_workflow lowers it)."""
    cluster = slurm_cluster
    wd, profile = _workflow(tmp_path, cluster)
    too_many = cluster.node_cpus() + 1
    run = cluster.snakemake(["--profile", str(profile), "-s", "Snakefile", "--set-resources", "greedy:gpu=1",
                             f"greedy:cpus_per_gpu={too_many}", "--", "results/greedy.txt"], cwd=wd, timeout=120)
    print(f"\nsnakemake (GPU job with cpus_per_gpu={too_many}) took {run.seconds:.1f}s")
    assert run.returncode not in (0, 124, 137), _fail_msg(run, cluster)
    assert "Error in rule greedy" in run.output and "SLURM sbatch failed" in run.output, _fail_msg(run, cluster)
    assert "Requested node configuration is not available" in run.output, _fail_msg(run, cluster)
    assert not (wd / "results/greedy.txt").exists()
    # slurmdbd may record the refused submission as FAILED, never allocated; it never ran
    assert run.run_id, _fail_msg(run, cluster)
    rows = cluster.sacct_run(run.run_id, wait_final=5)
    assert all(r["State"] == "FAILED" and not r["AllocTRES"] for r in rows), rows


def test_install_profile(tmp_path):
    """install-profile.sh installs, refuses to overwrite a different profile, --force replaces it."""
    script = REPO / "scripts" / "slurm" / "install-profile.sh"
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    dest = tmp_path / "xdg" / "snakemake" / "slurm"

    def run(*args):
        return subprocess.run(["bash", str(script), *args], env=env, capture_output=True, text=True, timeout=60)

    p = run()
    assert p.returncode == 0 and str(dest) in p.stdout, p
    assert (dest / "config.yaml").read_text() == (REPO / "profiles/slurm/config.yaml").read_text()
    assert run().returncode == 0  # same content: nothing to do
    (dest / "config.yaml").write_text((dest / "config.yaml").read_text() + "# site edit\n")
    p = run()
    assert p.returncode != 0 and "--force" in p.stderr, p
    assert "# site edit" in (dest / "config.yaml").read_text()
    p = run("--force")
    assert p.returncode == 0, p
    assert "# site edit" not in (dest / "config.yaml").read_text()
    assert list(dest.parent.glob("slurm.bak.*")), "no backup of the replaced profile"

    # `snakemake --profile slurm` finds and accepts the installed site profile (dry run)
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None or not shutil.which("timeout"):
        pytest.skip("snakemake-executor-plugin-slurm not installed: profile dry run skipped")
    wd = tmp_path / "wf"
    wd.mkdir()
    (wd / "Snakefile").write_text(SNAKEFILE)
    p = subprocess.run(["timeout", "-k", "10", "120", sys.executable, "-m", "snakemake", "--profile", "slurm",
                        "-n", "all"], cwd=wd, env=env, capture_output=True, text=True, timeout=150)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "This was a dry-run" in p.stdout + p.stderr
