"""Turning what dcm2niix writes for diffusion series into the two 3-D maps the model reads.

Scanners disagree on what a DWI series holds: a b=0 + b=1000 pair (Siemens TRACEW), many directions
(DTI), a derived isotropic trace volume (Philips), an ADC map in its own series or not at all. The model
wants one isotropic high-b image and one ADC map per subject, whatever the scanner did.
"""

from __future__ import annotations

import numpy as np

#: Signal floor before taking logarithms, as a fraction of the 99th percentile of the b=0 image.
_FLOOR = 1e-3


def _positive(data: np.ndarray, reference: np.ndarray) -> np.ndarray:
    floor = _FLOOR * max(float(np.percentile(reference, 99)), 1e-6)
    return np.maximum(data, floor)


def highest_b(bvals: tuple[float, ...]) -> tuple[float, list[int]]:
    """The highest b-value (to the nearest 50 s/mm^2, as scanners round it) and the volumes acquired at it."""
    rounded = np.round(np.asarray(bvals) / 50.0) * 50.0
    top = float(rounded.max())
    return top, [int(i) for i in np.nonzero(rounded == top)[0]]


def trace_image(data: np.ndarray, bvals: tuple[float, ...]) -> tuple[np.ndarray, float, int]:
    """Isotropic diffusion-weighted image: the geometric mean of the volumes at the highest b-value.

    The geometric mean over directions is what scanners compute for their trace image; it removes the
    direction dependence that would otherwise differ between a 3-direction and a 64-direction protocol.
    Returns the image, its b-value and how many volumes it averages.
    """
    if data.ndim != 4 or data.shape[3] != len(bvals):
        raise ValueError(f"{data.shape[3] if data.ndim == 4 else 1} volumes but {len(bvals)} b-values")
    top, volumes = highest_b(bvals)
    if top <= 0:
        raise ValueError("the series holds no diffusion-weighted volume (all b-values are 0)")
    stack = _positive(data[..., volumes].astype(np.float64), data)
    return np.exp(np.log(stack).mean(axis=3)).astype(np.float32), top, len(volumes)


def adc_map(data: np.ndarray, bvals: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """ADC in 1e-6 mm^2/s (the scanners' unit) from the mean b=0 volume and the highest-b trace.

    A fallback for centers that export no ADC series; the sidecar says the map was computed here.
    """
    rounded = np.round(np.asarray(bvals) / 50.0) * 50.0
    zero = np.nonzero(rounded == 0)[0]
    if zero.size == 0:
        raise ValueError("the series holds no b=0 volume, so no ADC can be computed")
    b0 = data[..., zero].astype(np.float64).mean(axis=3)
    trace, top, _ = trace_image(data, bvals)
    adc = np.log(_positive(b0, b0) / _positive(trace.astype(np.float64), b0)) / top * 1e6
    adc[b0 <= _FLOOR * np.percentile(b0, 99)] = 0.0
    return np.clip(adc, 0.0, 5000.0).astype(np.float32), top
