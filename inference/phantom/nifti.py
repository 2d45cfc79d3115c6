"""Write a phantom as NIfTI-1 volumes: the CT and its two masks.

NIfTI voxel axes are ``(column, row, slice)`` (the usual order of a NIfTI
file converted from DICOM) and the affine maps them to RAS+ millimetres:
``RAS = diag(-1, -1, 1) @ LPS``. So the voxel ``[k, i, j]`` of the phantom
is the NIfTI voxel ``(j, i, k)`` and both land on the same patient point.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from inference.geometry import Geometry
    from inference.phantom.generator import Phantom

LOGGER = logging.getLogger(__name__)

__all__ = ["NIFTI_FILES", "nifti_affine", "write_nifti"]

#: File name of each volume written by :func:`write_nifti`.
NIFTI_FILES: dict[str, str] = {
    "image": "image.nii.gz",
    "lesion_mask": "lesion_mask.nii.gz",
    "lung_mask": "lung_mask.nii.gz",
}

#: LPS -> RAS.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def nifti_affine(geometry: Geometry) -> np.ndarray:
    """RAS affine of NIfTI voxel ``(j, i, k)`` for a phantom geometry.

    Parameters
    ----------
    geometry: inference.geometry.Geometry

    Returns
    -------
    numpy.ndarray
        4x4 matrix mapping ``(column, row, slice, 1)`` to RAS mm.
    """
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(geometry.row_direction) * geometry.spacing[2]
    lps[:3, 1] = np.asarray(geometry.column_direction) * geometry.spacing[1]
    lps[:3, 2] = np.asarray(geometry.slice_direction) * geometry.spacing[0]
    lps[:3, 3] = geometry.origin
    return LPS_TO_RAS @ lps


def write_nifti(phantom: Phantom, out_dir: str | Path) -> dict[str, Path]:
    """Write the CT (int16 HU) and the masks (uint8) as ``.nii.gz`` files.

    Parameters
    ----------
    phantom: Phantom
        What to write.
    out_dir: str | pathlib.Path
        Folder (created if missing).

    Returns
    -------
    dict[str, pathlib.Path]
        ``"image"``, ``"lesion_mask"`` and ``"lung_mask"`` paths (see
        :data:`NIFTI_FILES`), plus ``"summary"``: a JSON description (label,
        volumes, geometry, spec).
    """
    import nibabel as nib

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = nifti_affine(phantom.geometry)
    volumes: dict[str, np.ndarray] = {
        "image": phantom.hu.astype(np.int16),
        "lesion_mask": phantom.lesion_mask.astype(np.uint8),
        "lung_mask": phantom.lung_mask.astype(np.uint8),
    }
    paths: dict[str, Path] = {}
    for key, data in volumes.items():
        image = nib.Nifti1Image(np.ascontiguousarray(data.transpose(2, 1, 0)), affine)
        image.header.set_data_dtype(data.dtype)
        image.header.set_xyzt_units("mm")
        image.set_qform(affine, code=1)
        image.set_sform(affine, code=1)
        if key == "image":
            image.header["descrip"] = b"deepsc-node synthetic phantom, HU"
        path = out / NIFTI_FILES[key]
        nib.save(image, str(path))
        paths[key] = path
    summary = out / "phantom.json"
    summary.write_text(json.dumps(phantom.summary(), indent=2))
    paths["summary"] = summary
    LOGGER.info("wrote phantom seed=%d as NIfTI to %s", phantom.spec.seed, out)
    return paths
