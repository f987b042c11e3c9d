"""Presets of the synthetic cohort: YAML files saying which centers exist and how each one scans.

A preset is the only thing a user edits to change the cohort, so it is checked completely when it is
loaded: an unknown or misspelt key, a wrong type or an impossible value stops the run with a message
that names the key (``centers[1].sequences.swi.slice_mm``) instead of surfacing as a strange image later.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from thrombus.errors import UserError

#: Sequences a center can acquire as a series of its own; the ADC map is derived from the DWI series.
ACQUIRED: tuple[str, ...] = ("swi", "t2star", "dwi", "flair", "t1")

#: Built-in presets shipped as package data (thrombus/data/synth/<name>.yaml).
BUILTIN: tuple[str, ...] = ("tiny", "demo", "paper")

#: Manufacturer string -> vendor family; the family decides private DICOM tags and scaling habits.
VENDOR_FAMILIES: dict[str, str] = {"siemens": "siemens", "ge": "ge", "philips": "philips"}

#: Typical echo and repetition times (ms) by sequence, used when a preset does not give them.
DEFAULT_TIMING: dict[str, tuple[float, float]] = {
    "swi": (20.0, 28.0),
    "t2star": (18.0, 650.0),
    "dwi": (80.0, 5000.0),
    "flair": (100.0, 9000.0),
    "t1": (12.0, 550.0),
}


class PresetError(UserError, ValueError):
    """A preset that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class SeriesSpec:
    """How one center acquires one sequence: the grid a technologist would plan."""

    sequence: str
    description: str
    pixel_mm: float
    slice_mm: float
    gap_mm: float
    fov_mm: tuple[float, float]
    n_slices: int
    orientation: str
    tilt_deg: float
    echo_time_ms: float
    repetition_time_ms: float
    adc_description: str | None = None

    @property
    def matrix(self) -> tuple[int, int]:
        """(rows, columns): rows run anterior-posterior, columns left-right on an axial slice."""
        return (round(self.fov_mm[0] / self.pixel_mm), round(self.fov_mm[1] / self.pixel_mm))

    @property
    def spacing_mm(self) -> float:
        """Distance between slice centres (thickness plus gap)."""
        return self.slice_mm + self.gap_mm


@dataclass(frozen=True)
class ContrastSpec:
    """A center's contrast habit for one sequence: signal -> scale * signal ** gamma."""

    gamma: float = 1.0
    scale: float = 1.0


@dataclass(frozen=True)
class CenterSpec:
    """One scanner site: vendor, field strength, image quality and the series it acquires."""

    name: str
    vendor: str
    model: str
    field_strength_t: float
    n_subjects: int
    negative_fraction: float
    noise: float
    bias_field: float
    contrast: dict[str, ContrastSpec]
    missing: dict[str, float]
    series: dict[str, SeriesSpec]

    @property
    def vendor_family(self) -> str:
        """'siemens', 'ge' or 'philips', from the Manufacturer string."""
        return vendor_family(self.vendor)

    def reference(self, priority: tuple[str, ...]) -> str:
        """The first sequence of the priority list this center acquires (never dropped for a subject)."""
        return next(s for s in priority if s in self.series)


@dataclass(frozen=True)
class Preset:
    """A whole cohort description, validated."""

    name: str
    seed: int
    template_resolution_mm: int
    reference_priority: tuple[str, ...]
    pose_rotation_deg: float
    pose_scale: float
    pose_translation_mm: float
    warp_mm: float
    motion_rotation_deg: float
    motion_translation_mm: float
    centers: tuple[CenterSpec, ...]

    def as_dict(self) -> dict[str, Any]:
        """Plain data for cohort.json."""
        return asdict(self)


def vendor_family(manufacturer: str) -> str:
    """Vendor family of a Manufacturer string such as 'SIEMENS' or 'Philips Medical Systems'."""
    first = re.split(r"[^a-z]+", manufacturer.lower().strip())[0]
    return VENDOR_FAMILIES.get(first, "")


def load_preset(preset: str | Path) -> Preset:
    """Load and validate a built-in preset by name ('tiny', 'demo', 'paper') or a preset YAML file."""
    if isinstance(preset, str) and preset in BUILTIN:
        source = f"built-in preset '{preset}'"
        text = resources.files("thrombus").joinpath("data", "synth", f"{preset}.yaml").read_text(encoding="utf-8")
    else:
        path = Path(preset)
        if not path.is_file():
            raise PresetError(f"preset {preset!r} is neither a built-in preset ({', '.join(BUILTIN)}) nor a YAML file")
        source = str(path)
        text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise PresetError(f"{source}: not valid YAML ({err})") from err
    return parse_preset(data, source)


def parse_preset(data: Any, source: str = "preset") -> Preset:
    """Validate preset data (as read from YAML) and build the Preset."""
    top = _mapping(data, source, "", required={"name", "seed", "template_resolution_mm", "centers"},
                   optional={"reference_priority", "head_pose", "anatomy_warp_mm", "motion"})
    where = _Where(source)
    priority = tuple(top.get("reference_priority", ["swi", "t2star"]))
    for i, sequence in enumerate(priority):
        if sequence not in ACQUIRED:
            raise PresetError(f"{where('reference_priority', i)}: {sequence!r} is not an acquired sequence ({', '.join(ACQUIRED)})")
    pose = _mapping(top.get("head_pose", {}), source, "head_pose", optional={"rotation_deg", "scale", "translation_mm"})
    motion = _mapping(top.get("motion", {}), source, "motion", optional={"rotation_deg", "translation_mm"})
    centers_data = top["centers"]
    if not isinstance(centers_data, list) or not centers_data:
        raise PresetError(f"{where('centers')}: expected a non-empty list of centers")
    centers = tuple(_parse_center(c, where.at("centers", i), priority) for i, c in enumerate(centers_data))
    names = [c.name for c in centers]
    if len(set(names)) != len(names):
        raise PresetError(f"{where('centers')}: center names must be unique, found {names}")
    return Preset(
        name=_text(top, "name", where),
        seed=int(_number(top, "seed", where, low=0, integer=True)),
        template_resolution_mm=int(_number(top, "template_resolution_mm", where, low=1, high=3, integer=True)),
        reference_priority=priority,
        pose_rotation_deg=_number(pose, "rotation_deg", where.at("head_pose"), default=4.0, low=0, high=20),
        pose_scale=_number(pose, "scale", where.at("head_pose"), default=0.05, low=0, high=0.2),
        pose_translation_mm=_number(pose, "translation_mm", where.at("head_pose"), default=5.0, low=0, high=30),
        warp_mm=_number(top, "anatomy_warp_mm", where, default=3.0, low=0, high=8),
        motion_rotation_deg=_number(motion, "rotation_deg", where.at("motion"), default=3.0, low=0, high=10),
        motion_translation_mm=_number(motion, "translation_mm", where.at("motion"), default=3.0, low=0, high=10),
        centers=centers,
    )


class _Where:
    """Builds key paths such as ``centers[1].sequences.swi`` for error messages."""

    def __init__(self, source: str, path: str = "") -> None:
        self.source = source
        self.path = path

    def at(self, key: str, index: int | None = None) -> _Where:
        return _Where(self.source, self._join(key, index))

    def __call__(self, key: str, index: int | None = None) -> str:
        return f"{self.source}: {self._join(key, index)}"

    def _join(self, key: str, index: int | None) -> str:
        path = f"{self.path}.{key}" if self.path else key
        return path if index is None else f"{path}[{index}]"


def _mapping(data: Any, source: str, path: str, required: set[str] = frozenset(), optional: set[str] = frozenset()) -> dict:
    """Check that `data` is a mapping with the required keys and no unknown ones."""
    label = f"{source}: {path}" if path else source
    if not isinstance(data, dict):
        raise PresetError(f"{label}: expected a mapping of keys, found {type(data).__name__}")
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in required and key not in optional:
            raise PresetError(f"{source}: {prefix}{key}: unknown key; expected one of {', '.join(sorted(required | optional))}")
    for key in sorted(required):
        if key not in data:
            raise PresetError(f"{source}: {prefix}{key}: required key is missing")
    return data


def _number(data: dict, key: str, where: _Where, default: float | None = None, low: float | None = None,
            high: float | None = None, integer: bool = False) -> float:
    """A number from `data[key]` within [low, high]; `default` when the key is absent."""
    value = data.get(key, default)
    if value is None:
        raise PresetError(f"{where(key)}: required key is missing")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise PresetError(f"{where(key)}: expected {'an integer' if integer else 'a number'}, found {value!r}")
    if low is not None and value < low:
        raise PresetError(f"{where(key)}: must be at least {low}, found {value}")
    if high is not None and value > high:
        raise PresetError(f"{where(key)}: must be at most {high}, found {value}")
    return float(value)


def _text(data: dict, key: str, where: _Where, pattern: str | None = None) -> str:
    """A non-empty string from `data[key]`, optionally matching `pattern` in full."""
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PresetError(f"{where(key)}: expected a non-empty text, found {value!r}")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise PresetError(f"{where(key)}: {value!r} must match {pattern}")
    return value


def _parse_center(data: Any, where: _Where, priority: tuple[str, ...]) -> CenterSpec:
    """Validate one center."""
    center = _mapping(data, where.source, where.path,
                      required={"name", "vendor", "field_strength_t", "n_subjects", "sequences"},
                      optional={"model", "negative_fraction", "noise", "bias_field", "contrast", "missing"})
    vendor = _text(center, "vendor", where)
    if not vendor_family(vendor):
        raise PresetError(f"{where('vendor')}: {vendor!r} names none of Siemens, GE, Philips (Manufacturer string expected)")
    sequences = _mapping(center["sequences"], where.source, f"{where.path}.sequences", optional=set(ACQUIRED))
    if not sequences:
        raise PresetError(f"{where('sequences')}: a center must acquire at least one sequence")
    series = {name: _parse_series(name, spec, where.at("sequences").at(name)) for name, spec in sequences.items()}
    if not any(s in series for s in priority):
        raise PresetError(f"{where('sequences')}: acquires none of the reference sequences {', '.join(priority)}")
    missing = _mapping(center.get("missing", {}), where.source, f"{where.path}.missing", optional=set(ACQUIRED))
    for sequence in missing:
        if sequence not in series:
            raise PresetError(f"{where.at('missing')(sequence)}: the center does not acquire {sequence}")
        _number(missing, sequence, where.at("missing"), low=0, high=1)
    contrast = _mapping(center.get("contrast", {}), where.source, f"{where.path}.contrast", optional=set(ACQUIRED) - {"dwi"})
    return CenterSpec(
        name=_text(center, "name", where, pattern=r"[A-Za-z0-9]+"),
        vendor=vendor,
        model=str(center.get("model", "")),
        field_strength_t=_number(center, "field_strength_t", where, low=0.5, high=7),
        n_subjects=int(_number(center, "n_subjects", where, low=1, high=999, integer=True)),
        negative_fraction=_number(center, "negative_fraction", where, default=0.25, low=0, high=1),
        noise=_number(center, "noise", where, default=0.03, low=0, high=0.5),
        bias_field=_number(center, "bias_field", where, default=0.2, low=0, high=0.9),
        contrast={s: _parse_contrast(c, where.at("contrast").at(s)) for s, c in contrast.items()},
        missing={s: float(p) for s, p in missing.items()},
        series=series,
    )


def _parse_contrast(data: Any, where: _Where) -> ContrastSpec:
    spec = _mapping(data, where.source, where.path, optional={"gamma", "scale"})
    return ContrastSpec(gamma=_number(spec, "gamma", where, default=1.0, low=0.3, high=3),
                        scale=_number(spec, "scale", where, default=1.0, low=0.1, high=10))


def _parse_series(sequence: str, data: Any, where: _Where) -> SeriesSpec:
    """Validate one sequence's acquisition."""
    required = {"description", "pixel_mm", "slice_mm", "fov_mm", "n_slices"} | ({"adc_description"} if sequence == "dwi" else set())
    optional = {"gap_mm", "orientation", "tilt_deg", "echo_time_ms", "repetition_time_ms"}
    spec = _mapping(data, where.source, where.path, required=required, optional=optional)
    fov = spec["fov_mm"]
    if not (isinstance(fov, list) and len(fov) == 2 and all(isinstance(v, (int, float)) and 60 <= v <= 400 for v in fov)):
        raise PresetError(f"{where('fov_mm')}: expected [rows_mm, columns_mm] between 60 and 400, found {fov!r}")
    orientation = spec.get("orientation", "axial")
    if orientation not in ("axial", "oblique"):
        raise PresetError(f"{where('orientation')}: expected 'axial' or 'oblique', found {orientation!r}")
    tilt = _number(spec, "tilt_deg", where, default=0.0, low=-30, high=30)
    if orientation == "oblique" and tilt == 0:
        raise PresetError(f"{where('tilt_deg')}: an oblique series needs a non-zero tilt")
    echo, repetition = DEFAULT_TIMING[sequence]
    return SeriesSpec(
        sequence=sequence,
        description=_text(spec, "description", where),
        pixel_mm=_number(spec, "pixel_mm", where, low=0.3, high=6),
        slice_mm=_number(spec, "slice_mm", where, low=0.5, high=8),
        gap_mm=_number(spec, "gap_mm", where, default=0.0, low=0, high=3),
        fov_mm=(float(fov[0]), float(fov[1])),
        n_slices=int(_number(spec, "n_slices", where, low=4, high=400, integer=True)),
        orientation=orientation,
        tilt_deg=tilt if orientation == "oblique" else 0.0,
        echo_time_ms=_number(spec, "echo_time_ms", where, default=echo, low=1, high=300),
        repetition_time_ms=_number(spec, "repetition_time_ms", where, default=repetition, low=3, high=20000),
        adc_description=_text(spec, "adc_description", where) if sequence == "dwi" else None,
    )
