"""Vessels as tubes: arteries that can hold a thrombus, veins that look like one on SWI.

A tube is a centreline polyline with a radius at each point, in MNI millimetres. Tubes are rasterised
with a partial-volume edge (so a 1.4 mm M1 on a 1 mm grid is not a jagged line of full voxels) and
with a smooth "blooming" halo for susceptibility effects. The coordinates below were checked on
overlays of the MNI152 2009a template (M1 in the sylvian cistern, basilar in front of the pons,
superior sagittal sinus under the vertex); right-hemisphere points are mirrored for the left.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Tube:
    """A vessel segment: centreline points (n, 3) in MNI mm and the radius (n,) in mm at each."""

    name: str
    points: np.ndarray
    radii: np.ndarray

    @property
    def length_mm(self) -> float:
        """Centreline length."""
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    def arc_length(self) -> np.ndarray:
        """Cumulative centreline length at each point (0 at the first)."""
        return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(self.points, axis=0), axis=1))])

    def dense(self, step_mm: float) -> Tube:
        """The same tube with points at most `step_mm` apart, so point distances approximate the tube."""
        s = self.arc_length()
        n = max(2, int(np.ceil(s[-1] / step_mm)) + 1)
        t = np.linspace(0.0, s[-1], n)
        points = np.stack([np.interp(t, s, self.points[:, i]) for i in range(3)], axis=1)
        return Tube(self.name, points, np.interp(t, s, self.radii))

    def between(self, start_mm: float, stop_mm: float, name: str | None = None) -> Tube:
        """The piece of the centreline between two arc lengths (clipped to the tube)."""
        s = self.arc_length()
        start, stop = max(0.0, start_mm), min(s[-1], stop_mm)
        inner = (s > start) & (s < stop)
        t = np.concatenate([[start], s[inner], [stop]])
        points = np.stack([np.interp(t, s, self.points[:, i]) for i in range(3)], axis=1)
        return Tube(name or self.name, points, np.interp(t, s, self.radii))

    def mirrored(self, name: str) -> Tube:
        """The tube reflected across the midline (x -> -x)."""
        return Tube(name, self.points * np.array([-1.0, 1.0, 1.0]), self.radii)


def join(tubes: list[Tube], name: str) -> Tube:
    """Concatenate tubes that continue each other (the last point of one is the first of the next)."""
    points = [tubes[0].points] + [t.points[1:] for t in tubes[1:]]
    radii = [tubes[0].radii] + [t.radii[1:] for t in tubes[1:]]
    return Tube(name, np.concatenate(points), np.concatenate(radii))


def _tube(name: str, points: list[tuple[float, float, float]], radii: list[float] | float) -> Tube:
    array = np.asarray(points, dtype=float)
    r = np.full(len(array), float(radii)) if np.isscalar(radii) else np.asarray(radii, dtype=float)
    return Tube(name, array, r)


def _right_arteries() -> list[Tube]:
    """Right-hemisphere anterior circulation (x > 0), MNI mm; radii from typical diameters (ICA 4.5, M1 2.8, M2 2)."""
    return [
        _tube("ICA_R", [(21, -6, -78), (20, -4, -62), (18, 2, -48), (15, 8, -38), (13, 9, -28), (13, 4, -21), (14, 0, -15)],
              [2.3, 2.3, 2.25, 2.2, 2.15, 2.1, 2.0]),
        _tube("M1_R", [(14, 0, -15), (20, 2, -13.5), (27, 3.5, -11.5), (34, 5, -8.5), (40, 5, -5)], [1.45, 1.42, 1.4, 1.35, 1.3]),
        _tube("M2sup_R", [(40, 5, -5), (40, 3, 1), (38, -3, 8), (37, -12, 14), (38, -24, 19)], [1.05, 1.0, 1.0, 0.95, 0.9]),
        _tube("M2inf_R", [(40, 5, -5), (43, 0, -5), (45, -8, -4), (47, -20, -1), (48, -32, 4)], [1.05, 1.0, 1.0, 0.95, 0.9]),
        _tube("A1_R", [(14, 0, -15), (10, 6, -13), (5, 11, -11), (2, 14, -9)], 0.9),
        _tube("A2_R", [(2, 14, -9), (2, 22, -5), (2, 32, 4), (2, 36, 16), (2, 30, 30)], 0.85),
        _tube("VA_R", [(9, -34, -80), (7, -32, -66), (4, -29, -54), (0.5, -26, -46)], 1.5),
        _tube("PCA_R", [(0, -15, -20), (6, -16, -17), (14, -24, -12), (21, -38, -8), (24, -54, -4), (20, -74, 2)],
              [1.05, 1.0, 1.0, 0.95, 0.9, 0.85]),
    ]


def arteries() -> dict[str, Tube]:
    """The arterial tree: ICA, ICA terminus, M1, M2 trunks, A1/A2, vertebral, basilar and PCA, both sides."""
    tubes: dict[str, Tube] = {}
    for tube in _right_arteries():
        tubes[tube.name] = tube
        tubes[tube.name.replace("_R", "_L")] = tube.mirrored(tube.name.replace("_R", "_L"))
    tubes["BA"] = _tube("BA", [(0, -26, -46), (0, -22, -38), (0, -18, -29), (0, -15, -20)], [1.6, 1.55, 1.5, 1.45])
    return tubes


def sinuses() -> list[Tube]:
    """Dural sinuses and deep veins that stay the same in every subject (dark on SWI/T2*)."""
    tubes = [
        _tube("SSS", [(0, 62, 30), (0, 55, 55), (0, 35, 72), (0, 10, 80), (0, -20, 81), (0, -50, 74), (0, -75, 58),
                      (0, -95, 35), (0, -103, 12)], [1.8, 2.2, 2.6, 2.9, 3.1, 3.3, 3.5, 3.7, 3.8]),
        _tube("straight", [(0, -46, 6), (0, -58, 6), (0, -72, 6), (0, -88, 7), (0, -101, 9)], [1.8, 2.0, 2.2, 2.4, 2.6]),
        _tube("galen", [(0, -32, 10), (0, -40, 8), (0, -46, 6)], 1.8),
        _tube("ICV_R", [(3, -8, 16), (3, -16, 15), (2.5, -25, 13), (1.5, -32, 10)], 1.1),
        _tube("ICV_L", [(-3, -8, 16), (-3, -16, 15), (-2.5, -25, 13), (-1.5, -32, 10)], 1.1),
        _tube("rosenthal_R", [(20, -4, -14), (24, -16, -8), (20, -30, 0), (10, -38, 5), (1.5, -38, 8)], 0.9),
        _tube("rosenthal_L", [(-20, -4, -14), (-24, -16, -8), (-20, -30, 0), (-10, -38, 5), (-1.5, -38, 8)], 0.9),
    ]
    transverse = _tube("transverse_R", [(0, -103, 12), (18, -104, 8), (36, -96, 2), (48, -80, -6), (52, -64, -16),
                                        (48, -52, -30), (42, -40, -44)], [3.6, 3.4, 3.2, 3.0, 3.0, 3.0, 3.2])
    return [*tubes, transverse, transverse.mirrored("transverse_L")]


def signed_distance(tube: Tube, points: np.ndarray, step_mm: float = 0.25) -> np.ndarray:
    """Distance (mm) from each point (m, 3) to the tube surface: negative inside, positive outside."""
    dense = tube.dense(step_mm)
    distance, index = cKDTree(dense.points).query(points)
    return (distance - dense.radii[index]).astype(np.float32)


def tube_box(tube: Tube, affine: np.ndarray, shape: tuple[int, int, int], margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Voxel box of a grid (axis-aligned `affine`) holding the tube plus a margin; None when outside the grid."""
    spacing = np.diag(affine)[:3]
    lo = (tube.points.min(axis=0) - tube.radii.max() - margin_mm - affine[:3, 3]) / spacing
    hi = (tube.points.max(axis=0) + tube.radii.max() + margin_mm - affine[:3, 3]) / spacing
    start = np.maximum(np.floor(lo).astype(int), 0)
    stop = np.minimum(np.ceil(hi).astype(int) + 1, shape)
    if np.any(stop <= start):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


def box_points(box: tuple[slice, slice, slice], affine: np.ndarray) -> np.ndarray:
    """MNI mm coordinates (m, 3) of the voxel centres of a box of an axis-aligned grid."""
    axes = [affine[i, 3] + affine[i, i] * np.arange(box[i].start, box[i].stop) for i in range(3)]
    grid = np.meshgrid(*axes, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1)


def partial_volume(distance: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Fraction of a voxel inside a surface from the signed distance of its centre (linear ramp one voxel wide)."""
    return np.clip(0.5 - distance / voxel_mm, 0.0, 1.0).astype(np.float32)


def bloom(distance: np.ndarray, reach_mm: np.ndarray | float) -> np.ndarray:
    """Susceptibility halo weight: 1 inside the object, a smooth fall to 0 at `reach_mm` outside it."""
    t = np.clip(1.0 - np.maximum(distance, 0.0) / np.maximum(reach_mm, 1e-3), 0.0, 1.0)
    return (t * t * (3.0 - 2.0 * t)).astype(np.float32)


def rasterise(tubes: list[Tube], affine: np.ndarray, shape: tuple[int, int, int],
              reach_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Partial-volume fraction and blooming weight of several tubes on an axis-aligned grid (max over tubes)."""
    voxel = float(abs(affine[0, 0]))
    fraction = np.zeros(shape, np.float32)
    halo = np.zeros(shape, np.float32)
    for tube in tubes:
        box = tube_box(tube, affine, shape, margin_mm=reach_mm + voxel)
        if box is None:
            continue
        distance = signed_distance(tube, box_points(box, affine)).reshape([s.stop - s.start for s in box])
        np.maximum(fraction[box], partial_volume(distance, voxel), out=fraction[box])
        if reach_mm > 0:
            np.maximum(halo[box], bloom(distance, reach_mm), out=halo[box])
    return fraction, halo
