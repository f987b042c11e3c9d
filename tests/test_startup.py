"""Every Snakemake job starts a `thrombus` process: building its parser must not import heavy libraries.

pandas, nibabel, scipy, torch, ants and matplotlib cost 0.3 to 2 s each on 2 cores; a step imports
what it needs inside its command. (Before this test, the evaluation package pulled pandas, nibabel and
scipy into every start-up: 1.8 s per job instead of 0.2 s.)
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "nibabel", "scipy", "torch", "ants", "matplotlib", "monai", "skimage", "pydicom")


def test_parser_of_every_step_loads_no_heavy_library() -> None:
    probe = "import sys; from thrombus.cli import _parser; _parser(); print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_public_names_of_the_evaluation_package_still_resolve() -> None:
    import thrombus.evaluation as evaluation

    for name in evaluation.__all__:
        assert getattr(evaluation, name) is not None
