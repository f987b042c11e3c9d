"""Brain-extraction backends of the skull-stripping stage: one module each, chosen by `skullstrip.backend`.

A backend is a module of this package with

* `extract(volume, spacing, options) -> np.ndarray`: the boolean brain mask of a 3-D head whose axes
  run left-right, front-back, bottom-top (`skullstrip_file` reorients to RAS first), on its own grid;
  `spacing` in mm along those axes, `options` the stage's `HDBetOptions`;
* `weights_record(options) -> dict`: path and SHA-256 of each weight file used, for the step record;
* `VERSIONS`: the packages whose code or weights shape the mask, recorded with their versions.

Adding one means adding its module here and its name to the `skullstrip.backend` enum of the config
schema (`workflow/schemas/config.schema.yaml`); nothing else names the backends. Modules load on first
use, so a backend's heavy packages cost nothing to a run that uses another.
"""

from __future__ import annotations

from types import ModuleType

from thrombus.preprocess.backends import load_module, module_names


def names() -> tuple[str, ...]:
    """The backends there are: the modules of this package, sorted."""
    return module_names(__path__)


def load(name: str) -> ModuleType:
    """The backend module `name`; an unknown name is refused with the list of known ones."""
    return load_module(__name__, __path__, name, "skull-stripping backend")
