"""Registration backends of the register step: one module each, chosen by `register.backend`.

`thrombus.preprocess.register` does everything around the optimisation (overlap check, the starts to
try, the fallback schedule, mutual information before and after, QC flags, resampling, files); a
backend only finds the transform. A backend is a module of this package with

* `optimise(pair, options, schedule, start, prefix) -> Path`: one optimisation of `pair` (a `Pair`:
  the images and masks as ANTs images, and the reference on the metric grid) with the levels
  `schedule` = (iterations, shrink factors, smoothing sigmas) from `start` ("identity": scanner
  coordinates as they are; "centres": the images' centres of mass matched). It returns the path of an
  ITK affine transform file (`.mat`, LPS, reference point -> moving point, the file `antsRegistration`
  writes), which the rest of the step reads, applies and copies as it is; files go under `prefix`;
* `VERSIONS`: the packages whose code shapes the transform, recorded with their versions.

The options' `transform` (Rigid or Affine), `seed`, `threads` and `deterministic` bind every backend;
the sampling and histogram options are ANTs' own and another backend may ignore them.

Adding one means adding its module here and its name to the `register.backend` enum of the config
schema (`workflow/schemas/config.schema.yaml`); nothing else names the backends. Modules load on first
use, so a backend's packages cost nothing to a run that uses another.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

from thrombus.preprocess.backends import load_module, module_names

#: (iterations, shrink factors, smoothing sigmas), one value per level, coarsest first.
Schedule = tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Pair:
    """What a backend registers: ANTs images (the `ants` module they belong to comes with them)."""

    ants: ModuleType
    fixed: Any
    moving: Any
    fixed_mask: Any | None
    moving_mask: Any | None
    #: The reference and its mask on the grid the finest level's metric is computed on.
    metric_fixed: Any
    metric_mask: Any | None


def names() -> tuple[str, ...]:
    """The backends there are: the modules of this package, sorted."""
    return module_names(__path__)


def load(name: str) -> ModuleType:
    """The backend module `name`; an unknown name is refused with the list of known ones."""
    return load_module(__name__, __path__, name, "registration backend")
