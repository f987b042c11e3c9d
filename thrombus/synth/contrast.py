"""Tissue and object signals per sequence, and the template-space images of one subject.

Relative signals follow the usual appearance of each sequence (SWI: CSF bright, iron-rich nuclei and
veins dark; FLAIR: CSF nulled; DWI b0: T2-weighted EPI with fat suppression; T1: white matter bright).
ADC values are in 1e-6 mm^2/s (CSF about 3000, grey matter 800, white matter 700, acute infarct
400-600); DWI b1000 is b0 * exp(-b * ADC) compartment by compartment, so partial volume behaves as on a
scanner, and the ADC series is computed from the acquired b0 and b1000 as a scanner does.

Susceptibility (SWI, T2*) darkens veins, microbleeds, calcifications and the thrombus multiplicatively,
with a halo ("blooming") whose depth grows with field strength and echo time. The thrombus is made
deliberately less dark than veins and microbleeds: on real SWI it is a subtle sign, and a generator
where the clot is simply the darkest object would make segmentation numbers meaningless.
"""

from __future__ import annotations

import numpy as np

from thrombus.synth.anatomy import HeadModel, Tissue
from thrombus.synth.lesions import Patch, SubjectLesions

#: Relative signal by image kind: tissues (Tissue names, lower case), grey/white matter, and objects.
SIGNAL: dict[str, dict[str, float]] = {
    "swi": dict(csf=0.95, gm=0.62, wm=0.76, bone=0.04, marrow=0.45, fat=0.70, muscle=0.40, skin=0.55, eye=0.90,
                artery=0.88, vein=0.50, thrombus=0.55, distal=0.88),
    "t2star": dict(csf=1.00, gm=0.62, wm=0.50, bone=0.04, marrow=0.55, fat=0.75, muscle=0.30, skin=0.50, eye=0.95,
                   artery=0.40, vein=0.50, thrombus=0.45, distal=0.40),
    "dwi_b0": dict(csf=1.00, gm=0.52, wm=0.44, bone=0.02, marrow=0.06, fat=0.05, muscle=0.15, skin=0.12, eye=0.95,
                   artery=0.10, vein=0.15, thrombus=0.40, distal=0.10),
    "flair": dict(csf=0.06, gm=0.72, wm=0.56, bone=0.04, marrow=0.75, fat=0.85, muscle=0.30, skin=0.55, eye=0.08,
                  artery=0.05, vein=0.08, thrombus=0.55, distal=0.85),
    "t1": dict(csf=0.12, gm=0.48, wm=0.78, bone=0.04, marrow=0.85, fat=1.00, muscle=0.42, skin=0.55, eye=0.10,
               artery=0.10, vein=0.15, thrombus=0.50, distal=0.10),
}

#: Apparent diffusion coefficient (1e-6 mm^2/s) of tissues and objects.
ADC: dict[str, float] = dict(csf=3000.0, gm=800.0, wm=700.0, bone=0.0, marrow=400.0, fat=150.0, muscle=1450.0,
                             skin=1100.0, eye=2900.0, artery=2200.0, vein=1800.0, thrombus=650.0)

#: Fraction of signal a susceptibility source removes at its core on SWI at 3 T, TE 20 ms.
SUSCEPTIBILITY: dict[str, float] = {"vein": 0.82, "microbleed": 0.9, "calcification": 0.75, "iron": 0.35}

#: Kinds on which susceptibility shows.
SUSCEPTIBILITY_KINDS = ("swi", "t2star")


def susceptibility_power(field_strength_t: float, echo_time_ms: float, slice_mm: float) -> float:
    """How strongly susceptibility shows relative to SWI at 3 T, TE 20 ms, 2 mm slices.

    Dephasing grows with B0 * TE, and intravoxel dephasing with the voxel's thickness, which is why
    a 2D T2* gradient echo at 1.5 T with 5 mm slices still shows the susceptibility vessel sign.
    """
    return float(np.clip((field_strength_t / 3.0) * (echo_time_ms / 20.0) * np.sqrt(slice_mm / 2.0), 0.3, 2.0)) ** 0.6


def attenuation(depth: float, power: float) -> float:
    """Signal fraction removed at a source's core for a given susceptibility power."""
    return 1.0 - (1.0 - depth) ** power


def subject_signals(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-subject tissue signals: the table with a few percent of biological variation."""
    return {kind: {name: value * float(rng.normal(1.0, 0.03)) for name, value in table.items()}
            for kind, table in SIGNAL.items()}


def _tissue_image(model: HeadModel, table: dict[str, float]) -> np.ndarray:
    """Grey and white matter fractions plus whatever fills the rest of each voxel."""
    lut = np.array([0.0 if t is Tissue.AIR else table[t.name.lower()] for t in Tissue], np.float32)
    image = lut[model.tissue]
    image *= model.rest
    image += model.gm * np.float32(table["gm"])
    image += model.wm * np.float32(table["wm"])
    return image


def _blend(image: np.ndarray, patch: Patch | None, value: float) -> None:
    """Replace the occupied part of each voxel of a patch by `value` (partial volume)."""
    if patch is not None:
        region = image[patch.box]
        region += patch.fraction * (np.float32(value) - region)


def _darken(image: np.ndarray, patch: Patch | None, depth: float) -> None:
    """Multiply a patch's region by (1 - depth * halo): susceptibility blooming."""
    if patch is not None:
        image[patch.box] *= 1.0 - np.float32(depth) * patch.halo


def _scale(image: np.ndarray, patch: Patch | None, gain: float) -> None:
    """Multiply a patch's region by a gain weighted by its fraction (infarct signal change)."""
    if patch is not None and gain != 1.0:
        image[patch.box] *= 1.0 + np.float32(gain - 1.0) * patch.fraction


def render(kind: str, model: HeadModel, lesions: SubjectLesions, signals: dict[str, dict[str, float]],
           power: float = 1.0, infarct_gain: float | None = None) -> np.ndarray:
    """Template-space image of one kind ('swi', 't2star', 'dwi_b0', 'dwi_b1000', 'flair', 't1') for one subject."""
    table = signals[kind]
    image = _tissue_image(model, table)
    gains = {"flair": lesions.infarct_flair_gain, "dwi_b0": lesions.infarct_b0_gain, "t1": 0.94}
    _scale(image, lesions.infarct, gains.get(kind, 1.0) if infarct_gain is None else infarct_gain)
    index, fraction = model.sparse("artery")
    image.flat[index] += fraction * (np.float32(table["artery"]) - image.flat[index])
    _blend(image, lesions.distal_vessels, table["distal"])
    _blend(image, lesions.thrombus_patch, table["thrombus"])
    index, fraction = model.sparse("vein")
    image.flat[index] += fraction * (np.float32(table["vein"]) - image.flat[index])
    for patch in lesions.veins:
        _blend(image, patch, table["vein"])
    if kind in SUSCEPTIBILITY_KINDS:
        _susceptibility(image, model, lesions, power)
    return image


def _susceptibility(image: np.ndarray, model: HeadModel, lesions: SubjectLesions, power: float) -> None:
    """Darken veins, iron, microbleeds, calcifications and the thrombus, each with its blooming."""
    for name, depth in (("vein_halo", SUSCEPTIBILITY["vein"]), ("iron", SUSCEPTIBILITY["iron"])):
        index, weight = model.sparse(name)
        image.flat[index] *= 1.0 - np.float32(attenuation(depth, power)) * weight
    for patch in lesions.veins:
        _darken(image, patch, attenuation(SUSCEPTIBILITY["vein"], power))
    for patch in lesions.microbleeds:
        _darken(image, patch, attenuation(SUSCEPTIBILITY["microbleed"], power))
    for patch in lesions.calcifications:
        _darken(image, patch, attenuation(SUSCEPTIBILITY["calcification"], power))
    if lesions.thrombus is not None:
        _darken(image, lesions.thrombus_patch, attenuation(lesions.thrombus.susceptibility, power))


def render_diffusion(model: HeadModel, lesions: SubjectLesions, signals: dict[str, dict[str, float]],
                     b_value: float = 1000.0) -> tuple[np.ndarray, np.ndarray]:
    """Template-space DWI b0 and b=`b_value` images.

    Each compartment decays with its own ADC (b1000 = b0 * exp(-b * ADC) tissue by tissue), and the
    infarct's restricted diffusion multiplies its b0 gain by exp(-b * (ADC_infarct - 750)), so the
    ADC a scanner computes from the two images is about the infarct ADC drawn for the subject.
    """
    b0 = render("dwi_b0", model, lesions, signals)
    decay = {name: float(np.exp(-b_value * 1e-6 * ADC[name])) for name in ADC}
    decay["distal"] = decay["artery"]
    weighted = {name: value * decay[name] for name, value in signals["dwi_b0"].items()}
    gain = lesions.infarct_b0_gain * float(np.exp(-b_value * 1e-6 * (lesions.infarct_adc - 750.0)))
    b1000 = render("dwi_b1000", model, lesions, {**signals, "dwi_b1000": weighted}, infarct_gain=gain)
    return b0, b1000
