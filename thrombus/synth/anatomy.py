"""The head every synthetic subject starts from: MNI152 2009a brain tissue plus skull, scalp and neck.

nilearn ships the MNI152 2009a T1, grey- and white-matter maps, so the brain anatomy is real and needs no
download. The template is brain only; a skull-stripping network (HD-BET was trained on whole heads)
would have nothing to do on it, so layers are grown around a smoothed brain hull: CSF rim, inner table,
diploe (marrow), outer table, subcutaneous fat and skin, a temporalis muscle, and below the brain a neck
with vertebrae and cord, orbits with eyes and the maxillary sinuses. The model is built once per
template resolution and shared by all subjects; subject-specific changes are applied later.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np
from scipy import ndimage

from thrombus.synth import vessels

log = logging.getLogger(__name__)

#: Extra millimetres below the template (which stops at z = -72 mm, mid-medulla) to hold the neck.
PAD_BELOW_MM = 30


class Tissue(IntEnum):
    """What fills a voxel besides grey and white matter."""

    AIR = 0
    CSF = 1
    BONE = 2
    MARROW = 3
    FAT = 4
    MUSCLE = 5
    SKIN = 6
    EYE = 7


class Territory(IntEnum):
    """Arterial territories an infarct may occupy (left and right MCA divisions, posterior circulation)."""

    NONE = 0
    MCA_SUPERIOR_R = 1
    MCA_INFERIOR_R = 2
    MCA_DEEP_R = 3
    MCA_SUPERIOR_L = 4
    MCA_INFERIOR_L = 5
    MCA_DEEP_L = 6
    POSTERIOR = 7


@dataclass
class HeadModel:
    """Template-space head at one resolution: tissue fractions, labels, vessels, territories.

    `affine` maps voxel indices to MNI mm (axis-aligned, RAS). Fractions are float32 in [0, 1]; `gm`
    and `wm` are brain tissue, the rest of a voxel is `tissue` (CSF inside the brain).
    """

    resolution_mm: float
    affine: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    tissue: np.ndarray
    iron: np.ndarray
    hull_distance: np.ndarray
    territory: np.ndarray
    arteries: dict[str, vessels.Tube]
    artery: np.ndarray
    vein: np.ndarray
    vein_halo: np.ndarray
    rest: np.ndarray = field(init=False, repr=False)
    _sparse: dict[str, tuple[np.ndarray, np.ndarray]] = field(init=False, repr=False, default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    def sparse(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices and values of the non-zero voxels of a thin map ('artery', 'vein', 'vein_halo', 'iron').

        Vessels fill well under 1% of the grid; blending them through their indices keeps rendering a
        subject's images cheap.
        """
        if name not in self._sparse:
            values = getattr(self, name).ravel()
            index = np.flatnonzero(values > 1e-3)
            self._sparse[name] = (index, values[index])
        return self._sparse[name]

    def to_voxel(self, points_mm: np.ndarray) -> np.ndarray:
        """MNI mm (m, 3) -> fractional voxel indices (m, 3)."""
        return (points_mm - self.affine[:3, 3]) / np.diag(self.affine)[:3]

    def coordinates(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Open (broadcastable) MNI mm coordinate axes x, y, z of the grid."""
        axes = [self.affine[i, 3] + self.affine[i, i] * np.arange(self.shape[i], dtype=np.float32) for i in range(3)]
        return np.ix_(*axes)


@functools.lru_cache(maxsize=2)
def build_head_model(resolution_mm: int) -> HeadModel:
    """Build (once per process and resolution) the head model from the nilearn MNI152 maps."""
    from nilearn import datasets

    log.info("building the %d mm head model from the MNI152 2009a template", resolution_mm)
    gm_img = datasets.load_mni152_gm_template(resolution=resolution_mm)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).dataobj, dtype=np.float32)
    gm = np.asarray(gm_img.dataobj, dtype=np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution_mm).dataobj) > 0.5
    pad = int(round(PAD_BELOW_MM / resolution_mm))
    affine = np.array(gm_img.affine, dtype=float)
    affine[2, 3] -= pad * resolution_mm
    widths = ((0, 0), (0, 0), (pad, 0))
    gm, wm, mask = (np.pad(a, widths) for a in (gm, wm, mask))
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]

    model = HeadModel(resolution_mm=float(resolution_mm), affine=affine, gm=gm, wm=wm, brain=mask,
                      tissue=np.zeros(gm.shape, np.uint8), iron=np.zeros(gm.shape, np.float32),
                      hull_distance=np.zeros(gm.shape, np.float32), territory=np.zeros(gm.shape, np.uint8),
                      arteries=vessels.arteries(), artery=np.zeros(gm.shape, np.float32),
                      vein=np.zeros(gm.shape, np.float32), vein_halo=np.zeros(gm.shape, np.float32))
    x, y, z = model.coordinates()
    _add_cord(model, x, y, z)
    _add_head(model, x, y, z)
    model.iron[:] = _iron(x, y, z) * (model.gm + model.wm)
    model.territory[:] = _territories(model, x, y, z)
    model.artery[:], _ = vessels.rasterise(list(model.arteries.values()), affine, model.shape)
    sinuses = [_hug_surface(t, model, 2.5) if t.name.startswith(("SSS", "transverse")) else t for t in vessels.sinuses()]
    model.vein[:], model.vein_halo[:] = vessels.rasterise(sinuses, affine, model.shape, reach_mm=2.0)
    model.rest = np.clip(1.0 - model.gm - model.wm, 0.0, 1.0)
    return model


def _hug_surface(tube: vessels.Tube, model: HeadModel, offset_mm: float) -> vessels.Tube:
    """The superior sagittal and transverse sinuses lie in the dura against the inner table: moving rough
    MNI points onto the hull keeps them there whatever the template's exact outline."""
    return vessels.Tube(tube.name, project_to_surface(model, tube.points, offset_mm), tube.radii)


def project_to_surface(model: HeadModel, points: np.ndarray, offset_mm: float, iterations: int = 4) -> np.ndarray:
    """Move points (m, 3) along the hull's normal onto the surface `offset_mm` outside the brain hull."""
    points = np.array(points, dtype=float)
    h = model.resolution_mm
    for _ in range(iterations):
        index = model.to_voxel(points).T
        distance = ndimage.map_coordinates(model.hull_distance, index, order=1)
        normal = np.stack([
            ndimage.map_coordinates(model.hull_distance, index + step[:, None], order=1)
            - ndimage.map_coordinates(model.hull_distance, index - step[:, None], order=1)
            for step in np.eye(3)
        ], axis=1) / (2.0 * h)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-6)
        points -= (distance - offset_mm)[:, None] * normal
    return points


def _add_cord(model: HeadModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Continue the medulla (cut by the template at z = -72) as a spinal cord down through the neck."""
    below = z < -70.0
    radius = np.sqrt(x**2 + (y + 46.0) ** 2)
    cord = below & (radius < 5.0)
    model.wm[:] = np.where(cord, 0.8, model.wm)
    model.gm[:] = np.where(cord, 0.2, model.gm)


def _add_head(model: HeadModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> None:
    """Label skull, scalp, face and neck around the brain hull (distances in mm)."""
    r = model.resolution_mm
    x = np.broadcast_to(x, model.shape)
    y = np.broadcast_to(y, model.shape)
    z = np.broadcast_to(z, model.shape)
    brainish = model.brain | ((model.gm + model.wm) > 0.5)
    hull = ndimage.gaussian_filter(brainish.astype(np.float32), 3.0 / r) > 0.3
    hull = ndimage.binary_fill_holes(hull)
    outside = ndimage.distance_transform_edt(~hull, sampling=r).astype(np.float32)
    inside = ndimage.distance_transform_edt(hull, sampling=r).astype(np.float32)
    model.hull_distance[:] = outside - inside

    # Skull thickness varies: thicker over the occiput, thin over the temporal squama.
    temporal = np.exp(-(((np.abs(x) - 62.0) / 10.0) ** 2) - ((z + 5.0) / 25.0) ** 2)
    occipital = 1.0 / (1.0 + np.exp((y + 80.0) / 8.0))
    factor = (1.0 + 0.35 * occipital - 0.45 * temporal).astype(np.float32)
    rim = 1.5
    inner = rim + 1.6 * factor
    diploe = inner + 3.2 * factor
    outer = diploe + 1.6 * factor

    neck = (z < -30.0) & (((x / 58.0) ** 2 + ((y + 22.0) / 60.0) ** 2) < 1.0)
    face = (((x / 62.0) ** 2 + ((y - 38.0) / 52.0) ** 2 + ((z + 48.0) / 40.0) ** 2) < 1.0) & (y > -10)
    scalp = outer + 5.0 + 4.0 * temporal
    head = ndimage.gaussian_filter(((outside <= scalp) | neck | face).astype(np.float32), 2.0 / r) > 0.5
    depth = ndimage.distance_transform_edt(head, sampling=r).astype(np.float32)

    tissue = np.full(model.shape, Tissue.AIR, np.uint8)
    tissue[head] = Tissue.MUSCLE
    tissue[head & (depth > 2.0) & (depth <= 5.5)] = Tissue.FAT
    tissue[head & (depth <= 2.0)] = Tissue.SKIN
    cranium = outside <= outer
    tissue[cranium & (outside > diploe)] = Tissue.BONE
    tissue[cranium & (outside > inner) & (outside <= diploe)] = Tissue.MARROW
    tissue[cranium & (outside > rim) & (outside <= inner)] = Tissue.BONE
    tissue[hull | (outside <= rim)] = Tissue.CSF
    scalp_fat = head & ~cranium & (depth > 2.0) & (outside > outer) & (outside <= scalp) & (temporal < 0.3)
    tissue[scalp_fat] = Tissue.FAT

    _add_face_and_neck(tissue, x, y, z, hull)
    model.tissue[:] = tissue


def _ellipsoid(x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: tuple[float, float, float],
               radii: tuple[float, float, float]) -> np.ndarray:
    """Boolean ellipsoid."""
    return (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2) < 1.0


def _add_face_and_neck(tissue: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, hull: np.ndarray) -> None:
    """Eyes in orbital fat, maxillary sinuses and nasal cavity, vertebrae around the cord."""
    for side in (-1.0, 1.0):
        orbit = _ellipsoid(x, y, z, (side * 32.0, 52.0, -34.0), (17.0, 20.0, 16.0)) & ~hull
        tissue[orbit & (tissue != Tissue.SKIN)] = Tissue.FAT
        tissue[_ellipsoid(x, y, z, (side * 32.0, 56.0, -34.0), (11.5, 11.5, 11.5))] = Tissue.EYE
        tissue[_ellipsoid(x, y, z, (side * 24.0, 40.0, -62.0), (11.0, 15.0, 14.0))] = Tissue.AIR
    tissue[(np.abs(x) < 7.0) & (y > 30.0) & (y < 70.0) & (z < -40.0) & (z > -75.0)] = Tissue.AIR
    canal = np.sqrt(x**2 + (y + 46.0) ** 2)
    below = z < -72.0
    tissue[below & (canal >= 5.0) & (canal < 7.5)] = Tissue.CSF
    tissue[below & (canal >= 7.5) & (canal < 10.0)] = Tissue.BONE
    body = np.sqrt(x**2 + (y + 27.0) ** 2)
    tissue[below & (body < 9.5)] = Tissue.BONE
    tissue[below & (body < 8.0)] = Tissue.MARROW


def _iron(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Iron-rich deep grey nuclei (globus pallidus, red nucleus, substantia nigra, dentate), dark on SWI."""
    weight = np.zeros(np.broadcast_shapes(x.shape, y.shape, z.shape), np.float32)
    nuclei = [((19.0, -4.0, -1.0), (4.5, 9.0, 5.5), 1.0), ((5.0, -20.0, -9.0), (3.0, 3.5, 3.5), 0.8),
              ((11.0, -17.0, -12.0), (3.0, 6.0, 2.5), 0.8), ((15.0, -57.0, -35.0), (6.0, 8.0, 5.0), 0.6)]
    for (cx, cy, cz), (rx, ry, rz), strength in nuclei:
        for side in (-1.0, 1.0):
            d2 = ((x - side * cx) / rx) ** 2 + ((y - cy) / ry) ** 2 + ((z - cz) / rz) ** 2
            np.maximum(weight, strength * np.exp(-(d2**2)), out=weight)
    return weight


def _territories(model: HeadModel, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Rough arterial territories from MNI coordinates (good enough for a plausible infarct).

    The MCA feeds the lateral hemisphere and, through the lenticulostriate arteries, the basal ganglia;
    the ACA the medial frontal-parietal strip and the gyrus rectus; the posterior circulation the
    brainstem, cerebellum, thalami and occipital lobes. The sylvian fissure splits the MCA into its
    superior (frontal, upper parietal) and inferior (temporal, lower parietal) divisions.
    """
    shape = model.shape
    x = np.broadcast_to(x, shape)
    y = np.broadcast_to(y, shape)
    z = np.broadcast_to(z, shape)
    tissue = (model.gm + model.wm) > 0.5
    ax = np.abs(x)
    posterior_fossa = (z < -22.0) & (y < -28.0)
    brainstem = (ax < 14.0) & (y > -45.0) & (y < -8.0) & (z < -4.0)
    thalamus = (ax < 22.0) & (y > -36.0) & (y < -4.0) & (z > -6.0) & (z < 18.0)
    occipital = y < -70.0
    inferomedial_temporal = (z < -8.0) & (y < -28.0) & (ax < 40.0)
    posterior = posterior_fossa | brainstem | thalamus | occipital | inferomedial_temporal
    aca = ((ax < 16.0) & (z > -10.0) & (y > -72.0)) | ((ax < 22.0) & (y > 10.0) & (z <= -10.0))
    deep = (ax > 10.0) & (ax < 32.0) & (y > -22.0) & (y < 26.0) & (z > -8.0) & (z < 24.0) & ~thalamus
    mca = ~posterior & ~aca & (ax > 4.0) & (z > -50.0) & (y < 75.0)
    superior = (z > 2.0 - 0.25 * y) | (y > 20.0)
    out = np.zeros(shape, np.uint8)
    right = x > 0
    out[tissue & posterior] = Territory.POSTERIOR
    for side_mask, sup, inf, dee in ((right, Territory.MCA_SUPERIOR_R, Territory.MCA_INFERIOR_R, Territory.MCA_DEEP_R),
                                     (~right, Territory.MCA_SUPERIOR_L, Territory.MCA_INFERIOR_L, Territory.MCA_DEEP_L)):
        region = tissue & side_mask & mca
        out[region & superior & ~deep] = sup
        out[region & ~superior & ~deep] = inf
        out[region & deep] = dee
    return out
