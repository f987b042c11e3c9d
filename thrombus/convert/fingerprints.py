"""What a converted image is recorded by: its grid (the step record) and its fingerprints (the sidecar),
the same for a DICOM conversion and a NIfTI import."""

from __future__ import annotations

import hashlib
from typing import Any

import nibabel as nib
import numpy as np

from thrombus.nifti import orientation


def geometry(image: nib.Nifti1Image) -> dict[str, Any]:
    return {
        "shape": [int(n) for n in image.shape],
        "spacing_mm": [round(float(z), 4) for z in image.header.get_zooms()[:3]],
        "orientation": orientation(image.affine),
        "dtype": str(image.get_data_dtype()),
    }


def uid_fingerprint(series_uid: str) -> str:
    """A series UID as the sidecars keep it (hashed): compared, never read back."""
    return hashlib.sha256(series_uid.encode()).hexdigest()


def fingerprints(series_uid: str, data: np.ndarray) -> dict[str, str]:
    """What finds one scan under two pseudonyms (`thrombus duplicate-scans`): its series UID and its
    voxels, both hashed, since a UID in the clear links back to the source archive."""
    voxels = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    voxels.update(np.ascontiguousarray(data).tobytes())
    return {"series_uid_sha256": uid_fingerprint(series_uid), "voxels_sha256": voxels.hexdigest()}
