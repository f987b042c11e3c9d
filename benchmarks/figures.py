"""The one table every benchmark reports into: step, figure, baseline measured in the same run, ratio.

A figure is only worth reading next to a baseline taken on the same machine in the same run (absolute
times on a shared 2-core machine move by 2x with the load), so a `Figure` always carries both, and the
ratio is what the README and the issues quote. `write_markdown` adds the machine the run was made on.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Figure:
    """One measured figure against its baseline.

    Attributes:
        step: what was measured (a pipeline step, a scale, a model).
        figure: the measurement, with its unit.
        baseline: the baseline's measurement and what it is.
        ratio: figure / baseline as a number (None when the figure has no baseline, e.g. a share).
        target: the target the issue sets, in words ("<= 0.05x (>= 20x faster)").
        met: whether the target is met (None: no target, or not decidable in this run).
    """

    step: str
    figure: str
    baseline: str = ""
    ratio: float | None = None
    target: str = ""
    met: bool | None = None

    def cells(self) -> tuple[str, ...]:
        ratio = "" if self.ratio is None else f"{self.ratio:.3g}x"
        verdict = {True: "met", False: "NOT MET", None: ""}[self.met]
        return self.step, self.figure, self.baseline, ratio, self.target, verdict


HEADER = ("step", "figure", "baseline (same run)", "ratio", "target", "")


def render_text(figures: list[Figure]) -> str:
    """A plain fixed-width table for the terminal."""
    rows = [HEADER, *(f.cells() for f in figures)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def render_markdown(figures: list[Figure]) -> str:
    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return "\n".join([line(HEADER), line(tuple("---" for _ in HEADER)), *(line(f.cells()) for f in figures)])


def run_isolated(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a fresh spawned process, so that imports, caches and peak memory are its own;
    an exception in the child is raised here (a bare Process and Queue would wait for it forever)."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def memory_gib(field: str) -> float:
    """A memory figure of this process from /proc/self/status: VmRSS (now) or VmHWM (peak).

    Not getrusage's ru_maxrss: that peak survives exec, so a child would inherit its parent's.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024 / 2**30
    raise RuntimeError(f"/proc/self/status has no {field} (the memory figures need Linux)")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def machine() -> dict[str, str]:
    """What the figures were measured on: CPU, cores this process may use, memory, GPU, software."""
    import torch

    memory = _memory_gib()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "commit": _commit(),
        "CPU": _cpu_model(),
        "cores usable": str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()),
        "memory": f"{memory:.0f} GiB" if memory else "unknown",
        "GPU": gpu,
        "load average at the end (1/5/15 min)": load,
        "python / torch": f"{platform.python_version()} / {torch.__version__}",
    }


def write_markdown(path: Path, sections: dict[str, list[Figure]], command: str, notes: list[str]) -> None:
    """BENCHMARKS.md: the machine, then one table per section, then the notes of the run."""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `{command}`; every ratio is figure / baseline, both measured in this one run.",
        "Absolute times on a shared machine move with its load; the ratios are what to compare.",
        "",
        "## Machine",
        "",
        *(f"- {key}: {value}" for key, value in machine().items()),
    ]
    for title, figures in sections.items():
        lines += ["", f"## {title}", "", render_markdown(figures)]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
