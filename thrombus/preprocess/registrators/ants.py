"""Backend `ants`: antsRegistration through antspyx, Mattes mutual information on the brain.

The coarse levels run on the reference's own grid, the finest on the metric grid, each ANTs run
starting from where the previous one ended. Deterministic when `import_ants` set one thread and the
seed (`thrombus.preprocess.register`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from thrombus.preprocess.registrators import Pair, Schedule

if TYPE_CHECKING:
    from thrombus.preprocess.register import RegistrationOptions

#: Packages whose code shapes this backend's transform (recorded with the step).
VERSIONS: tuple[str, ...] = ("antspyx",)


def stages(
    fixed: Any, fixed_mask: Any | None, metric_fixed: Any, metric_mask: Any | None, schedule: Schedule,
) -> list[tuple[Any, Any | None, list[tuple[int, int, float]]]]:
    """The ANTs runs of one schedule: (grid, mask, levels as (iterations, shrink, sigma)).

    The coarse levels stay on the reference's own grid, where their shrink factors were tuned (a 2 mm
    grid shrunk 4x lost a 15 mm / 10 degree misalignment of 5.5 mm TCGA slices); only the finest
    level, the costly one, moves to the metric grid, starting from where the coarse levels ended.
    """
    levels = list(zip(*schedule))
    if metric_fixed is fixed or len(levels) < 2:
        return [(fixed, fixed_mask, levels)]
    return [(fixed, fixed_mask, levels[:-1]), (metric_fixed, metric_mask, levels[-1:])]


def optimise(pair: Pair, options: RegistrationOptions, schedule: Schedule, start: str, prefix: Path) -> Path:
    """One ANTs attempt from `start` ("identity", or "centres": ANTs' centre-of-mass initialiser)."""
    ants = pair.ants
    initial: str | None = "Identity" if start == "identity" else None  # None: antspyx passes [fixed,moving,1]
    for stage, (grid, grid_mask, levels) in enumerate(stages(pair.fixed, pair.fixed_mask, pair.metric_fixed, pair.metric_mask, schedule)):
        iterations, shrink, smoothing = (tuple(values) for values in zip(*levels))
        result = ants.registration(
            fixed=grid, moving=pair.moving, type_of_transform=options.transform, initial_transform=initial,
            mask=grid_mask, moving_mask=pair.moving_mask, aff_metric="mattes", aff_sampling=options.histogram_bins,
            aff_random_sampling_rate=options.sampling_rate, aff_iterations=iterations,
            aff_shrink_factors=shrink, aff_smoothing_sigmas=smoothing,
            outprefix=f"{prefix}stage{stage}_", verbose=False,
        )
        initial = result["fwdtransforms"][0]
    return Path(initial)
