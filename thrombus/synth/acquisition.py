"""From the template-space model to what a scanner writes: head pose, series grids, slice profile,
motion, bias field, Rician noise and integer quantisation.

Coordinates: "template" is MNI mm (where the model lives), "head" is the same head before the
subject-specific smooth warp, "world" is scanner RAS mm. A subject's head sits in the scanner with a
pose (rotation, scale, translation) and moves rigidly between series; a series grid is planned by a
technologist around the head (axial, or tilted about the left-right axis) and does not follow later
motion, exactly what registration has to undo. Each voxel averages the model over its slice
thickness (and over its in-plane extent when pixels are coarser than the model), which is the
partial-volume blur of thick 2D slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

#: Physical units per unit of relative signal, and bits stored, by vendor family (stored values differ by vendor).
VENDOR_SCALING: dict[str, tuple[float, int]] = {"siemens": (700.0, 12), "ge": (1400.0, 16), "philips": (1000.0, 12)}

#: LPS (DICOM) <-> RAS (NIfTI) flip.
LPS = np.diag([-1.0, -1.0, 1.0])


def rotation_matrix(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation about x, then y, then z (degrees), as one 3x3 matrix R = Rz @ Ry @ Rx."""
    ax, ay, az = np.deg2rad(np.asarray(angles_deg, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass(frozen=True)
class Rigid:
    """Rigid head motion in scanner RAS mm: p -> R (p - centre) + centre + translation."""

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    centre_mm: tuple[float, float, float]

    def matrix(self) -> np.ndarray:
        """4x4 matrix mapping a point of the head in the reference series to the same point in this series."""
        rotation = rotation_matrix(self.rotation_deg)
        centre = np.asarray(self.centre_mm)
        out = np.eye(4)
        out[:3, :3] = rotation
        out[:3, 3] = centre - rotation @ centre + np.asarray(self.translation_mm)
        return out

    def as_dict(self) -> dict:
        return {
            "rotation_deg": [round(v, 4) for v in self.rotation_deg],
            "rotation_order": "x, then y, then z (R = Rz Ry Rx), about centre_mm",
            "translation_mm": [round(v, 4) for v in self.translation_mm],
            "centre_mm": [round(v, 3) for v in self.centre_mm],
            "matrix_ras": np.round(self.matrix(), 6).tolist(),
            "convention": "scanner RAS mm; maps a head point's position in the reference series to its position in this series",
        }


def draw_motion(rng: np.random.Generator, rotation_deg: float, translation_mm: float, centre: np.ndarray) -> Rigid:
    """Between-series head motion: each angle and shift uniform within the preset's limits."""
    return Rigid(tuple(float(v) for v in rng.uniform(-rotation_deg, rotation_deg, 3)),
                 tuple(float(v) for v in rng.uniform(-translation_mm, translation_mm, 3)),
                 tuple(float(v) for v in centre))


@dataclass(frozen=True)
class SubjectFrame:
    """Where a subject's head is: pose in the scanner and a smooth warp of the template anatomy.

    `pose` maps head mm to scanner RAS mm for the reference series. The warp adds a smooth
    displacement (mm) to head coordinates to get template coordinates, so anatomy differs between
    subjects while staying plausible.
    """

    pose: np.ndarray
    warp: np.ndarray
    warp_origin: np.ndarray
    warp_step_mm: float

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """Warp displacement (3, m) at head points (3, m)."""
        index = (points - self.warp_origin[:, None]) / self.warp_step_mm
        return np.stack([ndimage.map_coordinates(self.warp[i], index, order=1, mode="nearest") for i in range(3)])

    def head_to_template(self, points: np.ndarray) -> np.ndarray:
        """Head mm (3, m) -> template mm (3, m)."""
        return points + self.displacement(points)

    def template_to_head(self, points: np.ndarray) -> np.ndarray:
        """Template mm (3, m) -> head mm, by fixed-point iteration (the warp is small and smooth)."""
        head = points.copy()
        for _ in range(8):
            head = points - self.displacement(head)
        return head

    def template_to_world(self, points: np.ndarray, motion: np.ndarray | None = None) -> np.ndarray:
        """Template mm (3, m) -> scanner RAS mm (3, m), optionally for a series with head motion."""
        transform = self.pose if motion is None else motion @ self.pose
        return transform[:3, :3] @ self.template_to_head(points) + transform[:3, 3:4]

    def world_to_head(self, motion: np.ndarray | None = None) -> np.ndarray:
        """4x4 scanner RAS -> head mm for a series (inverse of motion @ pose)."""
        transform = self.pose if motion is None else motion @ self.pose
        return np.linalg.inv(transform)


def draw_frame(rng: np.random.Generator, rotation_deg: float, scale: float, translation_mm: float, warp_mm: float) -> SubjectFrame:
    """Random head pose (a few degrees, +-5% size) and a smooth anatomical warp for one subject."""
    linear = rotation_matrix(np.clip(rng.normal(0.0, rotation_deg / 2.0, 3), -rotation_deg, rotation_deg))
    size = 1.0 + rng.uniform(-scale, scale)
    linear = linear @ np.diag(size * (1.0 + rng.uniform(-0.015, 0.015, 3)))
    pose = np.eye(4)
    pose[:3, :3] = linear
    pose[:3, 3] = rng.uniform(-translation_mm, translation_mm, 3)
    step, coarse_step = 5.0, 25.0
    origin = np.array([-115.0, -150.0, -115.0])
    extent = np.array([230.0, 265.0, 245.0])
    coarse = rng.normal(size=(3, *(int(e / coarse_step) + 2 for e in extent)))
    factor = coarse_step / step
    warp = np.stack([ndimage.zoom(c, factor, order=3, mode="nearest") for c in coarse]).astype(np.float32)
    magnitude = np.sqrt((warp**2).sum(axis=0))
    warp *= np.float32(warp_mm / max(float(np.percentile(magnitude, 99)), 1e-6))
    return SubjectFrame(pose=pose, warp=warp, warp_origin=origin, warp_step_mm=step)


@dataclass(frozen=True)
class SeriesGeometry:
    """A planned 2D/3D slice stack, in scanner RAS mm.

    `axes` columns are unit vectors: along a row (column index grows), down a column (row index
    grows), and the slice normal (slice index grows). The NIfTI grid is the one dcm2niix writes:
    i = DICOM column, j = DICOM row reversed (dcm2niix flips rows), k = slice along the normal; for a
    3D acquisition (MRAcquisitionType 3D) dcm2niix (v1.0.2026) also reverses the columns, which
    `reverse_columns` reproduces (checked against dcm2niix in tests/test_synth.py).
    """

    rows: int
    columns: int
    slices: int
    pixel_mm: float
    thickness_mm: float
    spacing_mm: float
    axes: np.ndarray
    centre: np.ndarray
    reverse_columns: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """NIfTI array shape (columns, rows, slices)."""
        return (self.columns, self.rows, self.slices)

    def first_pixel(self, k: int) -> np.ndarray:
        """RAS position of the centre of pixel (row 0, column 0) of slice k."""
        a = self.axes
        return (self.centre - 0.5 * (self.columns - 1) * self.pixel_mm * a[:, 0]
                - 0.5 * (self.rows - 1) * self.pixel_mm * a[:, 1]
                + (k - 0.5 * (self.slices - 1)) * self.spacing_mm * a[:, 2])

    def affine(self) -> np.ndarray:
        """NIfTI voxel -> RAS mm affine of the volume dcm2niix makes from this series."""
        out = np.eye(4)
        out[:3, 0] = self.axes[:, 0] * self.pixel_mm
        out[:3, 1] = -self.axes[:, 1] * self.pixel_mm
        out[:3, 2] = self.axes[:, 2] * self.spacing_mm
        out[:3, 3] = self.first_pixel(0) + (self.rows - 1) * self.pixel_mm * self.axes[:, 1]
        if self.reverse_columns:
            out[:3, 3] += (self.columns - 1) * out[:3, 0]
            out[:3, 0] *= -1.0
        return out

    def orientation_patient(self) -> list[float]:
        """DICOM ImageOrientationPatient (LPS row and column cosines)."""
        return [float(round(v, 8)) for v in np.concatenate([LPS @ self.axes[:, 0], LPS @ self.axes[:, 1]])]

    def position_patient(self, k: int) -> list[float]:
        """DICOM ImagePositionPatient (LPS) of slice k."""
        return [float(round(v, 5)) for v in LPS @ self.first_pixel(k)]

    def slice_location(self, k: int) -> float:
        """DICOM SliceLocation of slice k: its position along the slice normal."""
        return float(np.dot(self.first_pixel(k), self.axes[:, 2]))

    def axcodes(self) -> str:
        """Orientation code of the dcm2niix NIfTI, e.g. 'LAS'."""
        return "".join(nib.aff2axcodes(self.affine()))

    def to_dicom(self, volume: np.ndarray, k: int) -> np.ndarray:
        """Slice k of a NIfTI-ordered volume as the DICOM pixel array (rows, columns)."""
        image = volume[::-1, ::-1, k] if self.reverse_columns else volume[:, ::-1, k]
        return np.ascontiguousarray(image.T)


def plan_geometry(rows: int, columns: int, slices: int, pixel_mm: float, thickness_mm: float, spacing_mm: float,
                  tilt_deg: float, centre: np.ndarray, three_d: bool = False) -> SeriesGeometry:
    """Axial stack (rows anterior->posterior, columns right->left, slices inferior->superior), tilted about x."""
    axial = np.array([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0], [0.0, 0.0, 1.0]]).T
    axes = rotation_matrix((tilt_deg, 0.0, 0.0)) @ axial
    return SeriesGeometry(rows, columns, slices, pixel_mm, thickness_mm, spacing_mm, axes, np.asarray(centre, float), three_d)


def _offsets(extent: float, step: float) -> np.ndarray:
    """Sub-sample positions (in units of `extent`) that average a voxel's extent at about `step` spacing."""
    n = max(1, int(np.ceil(extent / step - 1e-6)))
    return (np.arange(n) + 0.5) / n - 0.5


def sample(volumes: Sequence[np.ndarray], model_affine: np.ndarray, geometry: SeriesGeometry, frame: SubjectFrame,
           motion: np.ndarray | None = None, box: tuple[slice, slice, slice] | None = None,
           max_points: int = 1_500_000) -> list[np.ndarray]:
    """Acquire template-space volumes on a series grid (or on a `box` of it).

    Each voxel averages the trilinearly interpolated model over its slice thickness (samples about
    1.5 model voxels apart) and, when pixels are at least twice the model's voxel, over its in-plane
    extent: the partial-volume blur of thick 2D slices, at a cost that keeps the demo affordable.
    """
    resolution = float(model_affine[0, 0])
    to_head = frame.world_to_head(motion) @ geometry.affine()
    linear, shift = to_head[:3, :3], to_head[:3, 3]
    origin = model_affine[:3, 3]
    inplane = _offsets(geometry.pixel_mm, 2.0 * resolution)
    through = _offsets(geometry.thickness_mm, 1.5 * resolution) * geometry.thickness_mm / geometry.spacing_mm
    offsets = np.array([(u, v, w) for u in inplane for v in inplane for w in through])
    steps = (linear @ offsets.T) / resolution
    box = box or tuple(slice(0, n) for n in geometry.shape)
    shape = tuple(b.stop - b.start for b in box)
    warp = _warp_on_grid(frame, to_head, box, (geometry.pixel_mm, geometry.pixel_mm, geometry.spacing_mm))
    out = [np.zeros(shape, np.float32) for _ in volumes]
    chunk = max(1, max_points // (shape[0] * shape[1]))
    i, j = np.meshgrid(*(np.arange(b.start, b.stop, dtype=float) for b in box[:2]), indexing="ij")
    for k0 in range(0, shape[2], chunk):
        ks = np.arange(box[2].start + k0, box[2].start + min(shape[2], k0 + chunk), dtype=float)
        ijk = np.stack([np.broadcast_to(i[..., None], (*i.shape, ks.size)).ravel(),
                        np.broadcast_to(j[..., None], (*j.shape, ks.size)).ravel(),
                        np.broadcast_to(ks, (*i.shape, ks.size)).ravel()])
        head = linear @ ijk + shift[:, None] + warp[..., k0:k0 + ks.size].reshape(3, -1)
        base = (head - origin[:, None]) / resolution
        for volume, target in zip(volumes, out):
            acc = np.zeros(ijk.shape[1], np.float32)
            for step in steps.T:
                acc += ndimage.map_coordinates(volume, base + step[:, None], order=1, mode="constant", cval=0.0,
                                               prefilter=False, output=np.float32)
            target[..., k0:k0 + ks.size] = (acc / steps.shape[1]).reshape(shape[0], shape[1], ks.size)
    return out


def _linear_weights(coarse: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """(fine, coarse) matrix of linear-interpolation weights from coarse sample positions to fine ones."""
    return np.stack([np.interp(fine, coarse, column) for column in np.eye(coarse.size)], axis=1)


def _warp_on_grid(frame: SubjectFrame, to_head: np.ndarray, box: tuple[slice, slice, slice],
                  spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """The subject's warp displacement (3, *box shape) on a box of a series grid.

    The warp varies over about 25 mm, so it is evaluated on a sub-grid 4 mm apart and interpolated
    separably; that is within about 0.15 mm of the exact warp and far cheaper than looking it up at
    every voxel.
    """
    fine = [np.arange(b.start, b.stop, dtype=float) for b in box]
    coarse = [np.linspace(a[0], a[-1], max(2, int(np.ceil((a[-1] - a[0]) * step / 4.0)) + 1)) for a, step in zip(fine, spacing_mm)]
    points = np.stack(np.meshgrid(*coarse, indexing="ij")).reshape(3, -1)
    warp = frame.displacement(to_head[:3, :3] @ points + to_head[:3, 3:4]).reshape(3, *(c.size for c in coarse))
    wi, wj, wk = (_linear_weights(c, f).astype(np.float32) for c, f in zip(coarse, fine))
    warp = warp.astype(np.float32) @ wk.T
    warp = np.einsum("xijk,bj->xibk", warp, wj, optimize=True)
    return np.einsum("xijk,ai->xajk", warp, wi, optimize=True)


def grid_box(geometry: SeriesGeometry, world_points: np.ndarray, margin: int = 2) -> tuple[slice, slice, slice] | None:
    """Voxel box of a series grid holding scanner RAS points (3, m), plus a margin; None when outside."""
    inverse = np.linalg.inv(geometry.affine())
    index = inverse[:3, :3] @ world_points + inverse[:3, 3:4]
    lo = np.maximum(np.floor(index.min(axis=1)).astype(int) - margin, 0)
    hi = np.minimum(np.ceil(index.max(axis=1)).astype(int) + margin + 1, geometry.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def bias_field(geometry: SeriesGeometry, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative coil sensitivity (second-order polynomial), peak-to-peak about `strength`."""
    u, v, w = (np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in geometry.shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    terms = [u, v, w, u * v, u * w, v * w, u * u - 0.33, v * v - 0.33, w * w - 0.33]
    field = sum(np.float32(c) * t for c, t in zip(rng.normal(0.0, 1.0, len(terms)), terms))
    field = np.broadcast_to(field, geometry.shape)
    span = float(field.max() - field.min()) or 1.0
    return (1.0 + strength * (field - float(field.mean())) / span).astype(np.float32)


def rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the image plus complex Gaussian noise: the Rician noise of MR magnitude images."""
    real = image + rng.normal(0.0, sigma, image.shape).astype(np.float32)
    imaginary = rng.normal(0.0, sigma, image.shape).astype(np.float32)
    return np.sqrt(real * real + imaginary * imaginary)


def quantise(image: np.ndarray, family: str, physical_max: float | None = None) -> tuple[np.ndarray, float, float]:
    """Physical values -> (uint16 stored values, RescaleSlope, RescaleIntercept), vendor style.

    Siemens and GE store the values themselves (slope 1); Philips stores a 12-bit range with a
    non-trivial RescaleSlope, which every reader has to apply.
    """
    bits = VENDOR_SCALING[family][1]
    top = float(2**bits - 1)
    slope = 1.0
    if family == "philips":
        peak = physical_max if physical_max is not None else float(np.percentile(image, 99.9)) * 1.2
        slope = float(f"{max(peak, 1.0) / top:.8g}")
    stored = np.clip(np.rint(image / slope), 0, top).astype(np.uint16)
    return stored, slope, 0.0
