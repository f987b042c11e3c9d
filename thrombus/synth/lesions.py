"""What makes one subject differ from the template: a thrombus and its infarct, and the look-alikes.

Positive subjects get a thrombus in an arterial segment drawn with clinical frequencies (M1 about 45%,
ICA terminus 20%, M2 25%, basilar 10%), a clinical length (median about 10 mm), and a partial,
irregular infarct in the territory downstream. Every subject, positive or not, gets the things a
thrombus can be mistaken for on SWI/T2*: cortical veins, microbleeds and calcifications, none of which
has an infarct downstream. All objects live in template (MNI) millimetres and are rasterised into
small boxes ("patches") of the head-model grid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from thrombus.synth import vessels
from thrombus.synth.anatomy import HeadModel, Territory, project_to_surface
from thrombus.synth.vessels import Tube

#: Thrombus segment -> probability (large-vessel occlusion registries, rounded).
SEGMENT_PROBABILITY: dict[str, float] = {"M1": 0.45, "ICA-T": 0.20, "M2": 0.25, "basilar": 0.10}

#: Infarct volume (ml): median and range by segment; proximal occlusions infarct more tissue.
INFARCT_ML: dict[str, tuple[float, float, float]] = {
    "ICA-T": (25.0, 6.0, 90.0), "M1": (18.0, 4.0, 70.0), "M2": (8.0, 2.0, 35.0), "basilar": (6.0, 1.5, 25.0),
}


@dataclass(frozen=True)
class Patch:
    """An object rasterised on a box of the head-model grid: occupancy fraction and blooming weight."""

    box: tuple[slice, slice, slice]
    fraction: np.ndarray
    halo: np.ndarray


@dataclass(frozen=True)
class Thrombus:
    """A clot filling an arterial lumen over a length, with its susceptibility blooming."""

    segment: str
    side: str
    artery: str
    tube: Tube
    bloom_ratio: float
    susceptibility: float
    downstream: tuple[Tube, ...]

    @property
    def radius_mm(self) -> float:
        return float(self.tube.radii.mean())

    @property
    def length_mm(self) -> float:
        """End-to-end extent in template mm (centreline plus the rounded ends)."""
        return self.tube.length_mm + self.tube.radii[0] + self.tube.radii[-1]


@dataclass
class SubjectLesions:
    """Everything subject-specific drawn in template space."""

    thrombus: Thrombus | None = None
    thrombus_patch: Patch | None = None
    distal_vessels: Patch | None = None
    infarct: Patch | None = None
    infarct_adc: float = 500.0
    infarct_b0_gain: float = 1.0
    infarct_flair_gain: float = 1.0
    veins: list[Patch] = field(default_factory=list)
    microbleeds: list[Patch] = field(default_factory=list)
    calcifications: list[Patch] = field(default_factory=list)
    lookalikes: list[dict] = field(default_factory=list)


def draw_lesions(model: HeadModel, rng: np.random.Generator, positive: bool, field_strength_t: float) -> SubjectLesions:
    """Draw one subject's thrombus (if positive), infarct and look-alikes."""
    lesions = SubjectLesions()
    _add_cortical_veins(model, rng, lesions)
    _add_microbleeds(model, rng, lesions)
    _add_calcifications(model, rng, lesions)
    if positive:
        thrombus = draw_thrombus(model, rng, field_strength_t)
        lesions.thrombus = thrombus
        reach = 2.0 * thrombus.radius_mm * (thrombus.bloom_ratio - 1.0)
        lesions.thrombus_patch = tube_patch(thrombus.tube, model, reach)
        lesions.distal_vessels = _union_patch([tube_patch(t, model, 0.0) for t in thrombus.downstream])
        low, median, high = INFARCT_ML[thrombus.segment]
        volume = float(np.clip(median * np.exp(rng.normal(0.0, 0.6)), low, high))
        lesions.infarct = infarct_patch(model, rng, _territories(thrombus), volume)
        lesions.infarct_adc = float(rng.uniform(400.0, 580.0))
        lesions.infarct_b0_gain = float(rng.uniform(1.2, 1.5))
        lesions.infarct_flair_gain = float(rng.uniform(1.03, 1.10))
    return lesions


def draw_thrombus(model: HeadModel, rng: np.random.Generator, field_strength_t: float) -> Thrombus:
    """Pick segment, side, length and position of a clot along the arterial tree."""
    segments = list(SEGMENT_PROBABILITY)
    segment = segments[rng.choice(len(segments), p=list(SEGMENT_PROBABILITY.values()))]
    side = "midline" if segment == "basilar" else str(rng.choice(["left", "right"]))
    s = "_L" if side == "left" else "_R"
    tree = model.arteries
    trunk, other = ("M2sup", "M2inf") if rng.random() < 0.5 else ("M2inf", "M2sup")
    length = float(np.clip(10.0 * np.exp(rng.normal(0.0, 0.42)), 5.0, 25.0))
    if segment == "basilar":
        path, artery, start = tree["BA"], "BA", None
        distal = [tree["PCA_R"], tree["PCA_L"]]
    elif segment == "M2":
        path, artery, start = tree[trunk + s], trunk + s, rng.uniform(1.0, 6.0)
        distal = []
    elif segment == "M1":
        path, artery, start = vessels.join([tree["M1" + s], tree[trunk + s]], "M1" + s), "M1" + s, rng.uniform(1.0, 8.0)
        distal = [tree[other + s]]
    else:
        path, artery = vessels.join([tree["ICA" + s], tree["M1" + s]], "ICA" + s), "ICA" + s
        start = tree["ICA" + s].length_mm - rng.uniform(0.5, 0.8) * length
        distal = [tree["M2sup" + s], tree["M2inf" + s]]
    radius = float(np.interp(0.0 if start is None else start, path.arc_length(), path.radii))
    centreline = max(1.0, length - 2.0 * radius)
    if start is None:
        start = rng.uniform(0.0, max(0.0, path.length_mm - centreline - 1.0))
    tube = path.between(start, start + centreline, name=f"thrombus_{segment}")
    distal.insert(0, path.between(start + centreline, path.length_mm))
    bloom_ratio = float(rng.uniform(1.5, 2.0)) * (1.0 if field_strength_t >= 2.0 else 0.92)
    return Thrombus(segment=segment, side=side, artery=artery, tube=tube, bloom_ratio=bloom_ratio,
                    susceptibility=float(rng.uniform(0.35, 0.55)),
                    downstream=tuple(t for t in distal if t.length_mm > 1.0))


def _territories(thrombus: Thrombus) -> list[Territory]:
    """Territories an infarct downstream of this clot may occupy."""
    if thrombus.segment == "basilar":
        return [Territory.POSTERIOR]
    right = thrombus.side == "right"
    superior = Territory.MCA_SUPERIOR_R if right else Territory.MCA_SUPERIOR_L
    inferior = Territory.MCA_INFERIOR_R if right else Territory.MCA_INFERIOR_L
    deep = Territory.MCA_DEEP_R if right else Territory.MCA_DEEP_L
    if thrombus.segment == "M2":
        return [superior] if thrombus.artery.startswith("M2sup") else [inferior]
    return [superior, inferior, deep]


def tube_patch(tube: Tube, model: HeadModel, reach_mm: float) -> Patch:
    """Rasterise one tube (fraction and blooming) on its box of the head-model grid."""
    box = vessels.tube_box(tube, model.affine, model.shape, margin_mm=reach_mm + 2 * model.resolution_mm)
    points = vessels.box_points(box, model.affine)
    distance = vessels.signed_distance(tube, points).reshape([s.stop - s.start for s in box])
    return Patch(box, vessels.partial_volume(distance, model.resolution_mm), vessels.bloom(distance, reach_mm))


def sphere_patch(centre: np.ndarray, radius_mm: float, reach_mm: float, model: HeadModel) -> Patch:
    """A round object (microbleed, calcification) with its blooming."""
    return tube_patch(Tube("sphere", np.array([centre, centre]), np.array([radius_mm, radius_mm])), model, reach_mm)


def _union_patch(patches: list[Patch]) -> Patch | None:
    """Several patches merged into one box (max of fractions), so a sequence applies them in one pass."""
    if not patches:
        return None
    start = [min(p.box[i].start for p in patches) for i in range(3)]
    stop = [max(p.box[i].stop for p in patches) for i in range(3)]
    fraction = np.zeros([b - a for a, b in zip(start, stop)], np.float32)
    halo = np.zeros_like(fraction)
    for p in patches:
        inner = tuple(slice(p.box[i].start - start[i], p.box[i].stop - start[i]) for i in range(3))
        np.maximum(fraction[inner], p.fraction, out=fraction[inner])
        np.maximum(halo[inner], p.halo, out=halo[inner])
    return Patch(tuple(slice(a, b) for a, b in zip(start, stop)), fraction, halo)


def infarct_patch(model: HeadModel, rng: np.random.Generator, territories: list[Territory], volume_ml: float) -> Patch:
    """A partial, irregular infarct of about `volume_ml` inside the given territories.

    Smooth random noise plus a pull towards one or two random cores is thresholded at the quantile that
    gives the wanted volume, so the lesion is patchy (cortical ribbon and white matter, several pieces)
    rather than a sphere or the whole territory.
    """
    allowed = np.isin(model.territory, [int(t) for t in territories])
    index = np.argwhere(allowed)
    lo, hi = index.min(axis=0), index.max(axis=0) + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = allowed[box]
    shape = inside.shape
    r = model.resolution_mm
    coarse = [max(2, int(np.ceil(n * r / 5.0))) for n in shape]
    noise = ndimage.zoom(rng.normal(size=coarse), [n / c for n, c in zip(shape, coarse)], order=3, grid_mode=True, mode="nearest")
    fine = ndimage.gaussian_filter(rng.normal(size=shape), 1.5 / r)
    field_ = noise / noise.std() + 0.35 * fine / fine.std()
    candidates = np.argwhere(inside)
    cores = candidates[rng.choice(len(candidates), size=int(rng.integers(1, 3)))]
    grid = np.indices(shape, dtype=np.float32)
    pull = np.full(shape, np.inf, np.float32)
    for core in cores:
        distance = np.sqrt(sum((grid[i] - core[i]) ** 2 for i in range(3))) * r
        np.minimum(pull, distance, out=pull)
    score = field_ - pull / 12.0
    tissue = (model.gm[box] + model.wm[box])
    score[~inside | (tissue < 0.5)] = -np.inf
    n_voxels = max(8, int(volume_ml * 1000.0 / r**3))
    finite = score[np.isfinite(score)]
    keep = finite.size - min(n_voxels, finite.size)
    threshold = np.partition(finite, keep)[keep]
    lesion = ndimage.gaussian_filter((score >= threshold).astype(np.float32), 0.6 / r)
    fraction = np.clip(lesion * 1.6 - 0.3, 0.0, 1.0) * np.clip(tissue, 0.0, 1.0)
    return Patch(box, fraction.astype(np.float32), np.zeros_like(fraction, dtype=np.float32))


def _surface_walks(model: HeadModel, starts: np.ndarray, targets: np.ndarray, steps: int, offset_mm: float) -> np.ndarray:
    """Paths (n, steps + 1, 3) along the brain surface from `starts` towards `targets`, 3 mm per step
    (cortical veins run over the convexity up to the superior sagittal sinus)."""
    points = [project_to_surface(model, starts, offset_mm)]
    for _ in range(steps):
        heading = targets - points[-1]
        heading /= np.maximum(np.linalg.norm(heading, axis=1, keepdims=True), 1e-6)
        points.append(project_to_surface(model, points[-1] + 3.0 * heading, offset_mm, iterations=2))
    return np.stack(points, axis=1)


def _add_cortical_veins(model: HeadModel, rng: np.random.Generator, lesions: SubjectLesions) -> None:
    """Cortical veins on the convexity (and often a superficial sylvian vein beside the MCA branches)."""
    x, y, z = (np.asarray(a).ravel() for a in model.coordinates())
    surface = np.argwhere((np.abs(model.hull_distance) <= model.resolution_mm) & (z[None, None, :] > -5.0)
                          & (np.abs(x)[:, None, None] > 15.0))
    count = int(rng.integers(5, 11))
    picks = surface[rng.integers(len(surface), size=count)]
    starts = np.stack([x[picks[:, 0]], y[picks[:, 1]], z[picks[:, 2]]], axis=1)
    targets = np.stack([np.sign(starts[:, 0]) * 2.0, starts[:, 1] + rng.uniform(-15.0, 15.0, count), np.full(count, 90.0)], axis=1)
    lengths = rng.uniform(25.0, 60.0, count)
    radii = rng.uniform(0.8, 1.5, count)
    kinds = ["cortical vein"] * count
    if rng.random() < 0.6:
        side = float(rng.choice([-1.0, 1.0]))
        starts = np.vstack([starts, [side * 46.0, 12.0, -10.0]])
        targets = np.vstack([targets, [side * 55.0, -30.0, 15.0]])
        lengths, radii = np.append(lengths, 40.0), np.append(radii, 1.1)
        kinds.append("superficial sylvian vein")
    paths = _surface_walks(model, starts, targets, int(lengths.max() / 3.0), offset_mm=-1.5)
    for path, length, radius, kind in zip(paths, lengths, radii, kinds):
        points = path[: int(length / 3.0) + 1]
        lesions.veins.append(tube_patch(Tube(kind, points, np.full(len(points), radius)), model, 1.5))
        lesions.lookalikes.append({"kind": kind, "start_mni_mm": points[0].round(1), "radius_mm": round(float(radius), 2)})


def _add_microbleeds(model: HeadModel, rng: np.random.Generator, lesions: SubjectLesions) -> None:
    """Microbleeds: round, 2-10 mm across on SWI, at the grey-white junction, deep nuclei or cerebellum."""
    count = int(min(rng.poisson(1.5), 6))
    if count == 0:
        return
    tissue = np.argwhere((model.gm + model.wm) > 0.95)
    x, y, z = (np.asarray(a).ravel() for a in model.coordinates())
    for i, j, k in tissue[rng.choice(len(tissue), size=count, replace=False)]:
        centre = np.array([x[i], y[j], z[k]])
        apparent = float(rng.uniform(1.0, 5.0))
        lesions.microbleeds.append(sphere_patch(centre, 0.45 * apparent, apparent, model))
        lesions.lookalikes.append({"kind": "microbleed", "centre_mni_mm": centre.round(1), "diameter_mm": round(2 * apparent, 1)})


def _add_calcifications(model: HeadModel, rng: np.random.Generator, lesions: SubjectLesions) -> None:
    """Physiological calcifications (pineal, choroid plexus, pallidum): dark on SWI, no infarct."""
    sites = [(0.0, -31.0, 3.0), (27.0, -42.0, 16.0), (-27.0, -42.0, 16.0), (19.0, -3.0, 0.0), (-19.0, -3.0, 0.0)]
    for index in rng.choice(len(sites), size=int(rng.integers(0, 3)), replace=False):
        centre = np.array(sites[index]) + rng.normal(0.0, 1.5, 3)
        radius = float(rng.uniform(1.2, 3.0))
        lesions.calcifications.append(sphere_patch(centre, radius, 1.5, model))
        lesions.lookalikes.append({"kind": "calcification", "centre_mni_mm": centre.round(1), "diameter_mm": round(2 * radius, 1)})
