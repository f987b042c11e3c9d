"""A real single-node SLURM cluster (with accounting and one fake GPU) for tests.

Reusable helper, not a conftest: a test module imports the fixture and the helpers::

    from slurm_cluster import slurm_cluster, write_slurm_profile  # noqa: F401  (fixture)

    @pytest.mark.slurm
    def test_something(slurm_cluster, tmp_path):
        profile = write_slurm_profile(tmp_path / "profile", slurm_cluster)
        proc = slurm_cluster.snakemake(["--profile", str(profile), "all"], cwd=workdir)
        jobs = slurm_cluster.sacct_run(proc.run_id)

The fixture (module scope) runs scripts/slurm/start-cluster.sh and, when it started the
cluster itself, scripts/slurm/stop-cluster.sh at the end; a cluster that was already up
(e.g. started by hand in $THROMBUS_SLURM_DIR) is reused and left running. Tests are skipped,
with the reason, unless the machine can run the cluster (root, Linux, and either the slurm
binaries or Debian with apt-get/dpkg to install them) and the executor plugin is installed;
THROMBUS_SLURM_TESTS=0 skips them too.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts" / "slurm"
SITE_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
WORKFLOW_PROFILE = REPO / "profiles" / "default" / "config.yaml"
DEFAULT_DIR = "/tmp/thrombus-slurm"

# sacct states after which a job does not change any more
FINAL_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "PREEMPTED", "BOOT_FAIL", "DEADLINE", "REVOKED",
}
SLURM_BINARIES = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct", "sacctmgr")
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def skip_reason() -> str | None:
    """Why the SLURM tests cannot run here, or None when they can."""
    if os.environ.get("THROMBUS_SLURM_TESTS", "").strip() == "0":
        return "THROMBUS_SLURM_TESTS=0"
    if not sys.platform.startswith("linux"):
        return "the local SLURM cluster needs Linux"
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root (slurmd, package install)"
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        return "snakemake-executor-plugin-slurm is not installed (pip install snakemake-executor-plugin-slurm)"
    if not shutil.which("timeout"):
        return "coreutils `timeout` not found"
    path = os.environ.get("PATH", "") + ":" + SBIN_PATH
    if all(shutil.which(b, path=path) for b in SLURM_BINARIES):
        return None
    if Path("/etc/debian_version").exists() and shutil.which("apt-get") and shutil.which("dpkg"):
        return None  # start-cluster.sh installs the packages
    return "slurm/munge/mariadb binaries missing and no Debian apt-get/dpkg to install them"


def _run_id(output: str) -> str | None:
    m = re.search(r"SLURM run ID: (\S+)", output)
    return m.group(1) if m else None


def submitted_jobs(output: str) -> dict[str, tuple[str, str]]:
    """SLURM job id -> (rule, sbatch log path) of every job the plugin submitted, from Snakemake's output."""
    found = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.?$", output, flags=re.M)
    jobs = {}
    for job_id, log in found:
        m = re.search(r"/rule_([^/]+)/", log)
        jobs[job_id] = (m.group(1) if m else "?", log)
    return jobs


def finished_rules(output: str) -> dict[str, int]:
    """How many jobs of each rule Snakemake reported finished (local and submitted ones)."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"^Finished jobid: \d+ \(Rule: (\w+)\)", output, flags=re.M):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def local_rules(output: str) -> dict[str, int]:
    """How many jobs of each rule Snakemake ran on the submit host (`localrule X:` and `localcheckpoint X:` blocks)."""
    counts: dict[str, int] = {}
    for rule in re.findall(r"^local(?:rule|checkpoint) (\w+):", output, flags=re.M):
        counts[rule] = counts.get(rule, 0) + 1
    return counts


def rule_of(row: dict[str, str]) -> str:
    """The rule of a sacct row: the plugin's --comment is `rule_<name>` or `rule_<name>_wildcards_<...>`."""
    comment = row.get("Comment", "")
    return comment.removeprefix("rule_").split("_wildcards")[0]


@dataclasses.dataclass
class SnakemakeRun:
    returncode: int
    output: str  # stdout and stderr together
    run_id: str | None  # the plugin's run UUID = sbatch --job-name of every job
    seconds: float
    cmd: list[str]


@dataclasses.dataclass
class SlurmCluster:
    dir: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF (use for every slurm/snakemake call)
    account: str = "ci"
    partition: str = "debug"
    started_here: bool = False
    start_seconds: float = 0.0
    start_output: str = ""

    @property
    def slurm_conf(self) -> Path:
        return self.dir / "etc" / "slurm.conf"

    def run(self, cmd: list[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, **kw)

    def snakemake(self, args: list[str], cwd: Path, timeout: int = 300, extra_env: dict | None = None) -> SnakemakeRun:
        """Run `python -m snakemake ARGS` in CWD under `timeout -k 10 TIMEOUT`.

        Always bounded: without working accounting the plugin polls for ever and ignores SIGTERM.
        """
        env = dict(self.env, **(extra_env or {}))
        cmd = ["timeout", "-k", "10", str(timeout), sys.executable, "-m", "snakemake", *args]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout + 30)
        out = proc.stdout
        (Path(cwd) / "snakemake-test-output.log").write_text(out)
        return SnakemakeRun(proc.returncode, out, _run_id(out), time.monotonic() - t0, cmd)

    def sacct_run(self, run_id: str, wait_final: float = 30) -> list[dict[str, str]]:
        """sacct records (one per job allocation, no steps) of all jobs named RUN_ID.

        Waits up to WAIT_FINAL seconds until every job is in a final state (slurmdbd is written
        asynchronously).
        """
        fields = ["JobID", "JobName", "Comment", "State", "ExitCode", "ReqTRES", "AllocTRES", "NCPUS", "Elapsed",
                  "Account", "Partition", "Timelimit"]
        deadline = time.monotonic() + wait_final
        while True:
            proc = self.run(["sacct", "-X", "-n", "-P", "-a", "-S", "now-6hours", "--name", run_id,
                             "-o", ",".join(fields)])
            assert proc.returncode == 0, f"sacct failed: {proc.stderr}"
            rows = [dict(zip(fields, line.split("|"))) for line in proc.stdout.splitlines() if line.strip()]
            for r in rows:
                r["State"] = r["State"].split()[0]  # "CANCELLED by 0" -> "CANCELLED"
            if rows and all(r["State"] in FINAL_STATES for r in rows):
                return rows
            if time.monotonic() > deadline:
                return rows
            time.sleep(1)

    def node_cpus(self) -> int:
        """CPUs of the (single) node, as slurmctld knows them."""
        proc = self.run(["sinfo", "-h", "-N", "-o", "%c"])
        assert proc.returncode == 0 and proc.stdout.split(), f"sinfo failed: {proc.stderr}"
        return min(int(c) for c in proc.stdout.split())

    def diagnostics(self) -> str:
        """Log tails for assertion messages."""
        parts = []
        for name in ("slurmctld", "slurmd", "slurmdbd"):
            log = self.dir / "log" / f"{name}.log"
            if log.exists():
                parts.append(f"--- {log} (tail) ---\n" + "\n".join(log.read_text(errors="replace").splitlines()[-25:]))
        return "\n".join(parts)


def write_slurm_profile(dest: Path, cluster: SlurmCluster, **overrides) -> Path:
    """Write a test profile DEST/config.yaml from the site template profiles/slurm/config.yaml.

    Fills the account and partition placeholders and shortens the timings so a test stays fast;
    OVERRIDES (underscores for dashes) replace top-level keys. Returns DEST.
    """
    text = SITE_PROFILE.read_text()
    assert "CHANGE_ME" in text, "site profile template lost its CHANGE_ME placeholders"
    prof = yaml.safe_load(text)
    res = dict(prof.get("default-resources") or {})
    res.update(slurm_account=cluster.account, slurm_partition=cluster.partition, mem_mb=500, runtime=10)
    prof["default-resources"] = res
    prof.update({
        "retries": 0,  # a failing job fails once (the site default resubmits)
        "latency-wait": 5,
        "slurm-init-seconds-before-status-checks": 2,
        "slurm-keep-successful-logs": True,
    })
    for key, value in overrides.items():
        prof[key.replace("_", "-")] = value
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


def write_workflow_profile(dest: Path, max_cpus_per_gpu: int) -> tuple[Path, dict[str, int]]:
    """A copy of the shipped workflow profile (profiles/default/config.yaml) whose `cpus_per_gpu` entries
    are lowered to at most MAX_CPUS_PER_GPU, written to DEST/config.yaml, for `--workflow-profile DEST`.

    Everything else (`gpu: 1` in particular) stays as shipped. Returns DEST and rule -> cpus_per_gpu used.
    Why a whole workflow profile: `--set-resources` on the command line replaces the workflow profile's
    set-resources as a whole (the rules would lose `gpu: 1`), and set-resources in a site profile are
    replaced by the workflow profile's.
    """
    prof = yaml.safe_load(WORKFLOW_PROFILE.read_text())
    used = {}
    for rule, res in (prof.get("set-resources") or {}).items():
        if "cpus_per_gpu" in res:
            res["cpus_per_gpu"] = min(int(res["cpus_per_gpu"]), max_cpus_per_gpu)
            used[rule] = res["cpus_per_gpu"]
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest, used


def start_cluster(scratch: str | os.PathLike | None = None, timeout: int = 900) -> SlurmCluster:
    """Run start-cluster.sh (installing packages if needed); returns the cluster handle."""
    scratch = Path(scratch or os.environ.get("THROMBUS_SLURM_DIR") or DEFAULT_DIR)
    env = dict(os.environ)
    env["PATH"] = env.get("PATH", "") + ":" + SBIN_PATH
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(SCRIPTS / "start-cluster.sh"), str(scratch)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"start-cluster.sh failed (rc {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    exports = dict(re.findall(r"^export (\w+)=(.*)$", proc.stdout, flags=re.M))
    env.update(exports)
    return SlurmCluster(
        dir=Path(exports.get("THROMBUS_SLURM_DIR", scratch)),
        env=env,
        account=exports.get("THROMBUS_SLURM_ACCOUNT", "ci"),
        started_here="already up" not in proc.stderr,
        start_seconds=seconds,
        start_output=proc.stderr,
    )


def stop_cluster(cluster: SlurmCluster, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / "stop-cluster.sh"), str(cluster.dir)], env=cluster.env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running single-node SLURM cluster with accounting (account `ci`) and one fake GPU."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        if cluster.started_here:
            proc = stop_cluster(cluster)
            if proc.returncode != 0:
                print(f"stop-cluster.sh failed:\n{proc.stderr}", file=sys.stderr)
