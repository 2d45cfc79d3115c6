"""Helpers for the results tests: the real CT series and a synthetic result.

The result is built directly (two spheres as lesions, two boxes as lungs,
fixed probabilities), never by a model; the lesion analysis is computed here
with scipy on the same masks, so the report's numbers can be checked against
independent voxel counts.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut
from pydicom.uid import generate_uid
from scipy import ndimage

from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.result import InferenceResult, Lesion, LesionAnalysis, LungInvolvement

#: The UID root the tests encode with (the pydicom test root plus a branch).
UID_ROOT = "1.2.826.0.1.3680043.8.498.77"

CT_SERIES = Path("ct") / "lung-pet-ct-dx-a0002"

MANIFEST_DICT = {
    "format": "deepsc-node-model",
    "format_version": 1,
    "model_name": "DeepSC-Node phantom model",
    "model_version": "1.0.0",
    "description": "test manifest",
    "input": {"name": "ct", "layout": "NCDHW", "dtype": "float32", "shape": [1, 1, 8, 16, 16]},
    "grid": {"shape": [8, 16, 16], "spacing_mm": [5.0, 3.0, 3.0]},
    "intensity": {"clip_hu": [-1024.0, 600.0], "offset_hu": -212.0, "scale_hu": 812.0},
    "outputs": [
        {"role": "lesion_probability", "name": "lesion_probability", "dtype": "float32",
         "shape": [1, 1, 8, 16, 16]},
        {"role": "class_probabilities", "name": "class_probabilities", "dtype": "float32",
         "shape": [1, 3]},
    ],
    "lesion_threshold": 0.5,
    "classes": [
        {"key": "covid19", "display": "COVID-19 pattern",
         "code": {"value": "840539006", "scheme": "SCT",
                  "meaning": "COVID-19"}},
        {"key": "cap", "display": "Community-acquired pneumonia pattern",
         "code": {"value": "385093006", "scheme": "SCT",
                  "meaning": "Community acquired pneumonia"}},
        {"key": "none", "display": "No pneumonia",
         "code": {"value": "17621005", "scheme": "SCT", "meaning": "Normal"}},
    ],
    "segments": [
        {"label": "Lesion", "source": "lesion_probability",
         "category": {"value": "49755003", "scheme": "SCT",
                      "meaning": "Morphologically Abnormal Structure"},
         "type": {"value": "52988006", "scheme": "SCT", "meaning": "Lesion"}},
        {"label": "Lung", "source": "hu_lung_extraction",
         "category": {"value": "123037004", "scheme": "SCT", "meaning": "Anatomical Structure"},
         "type": {"value": "39607008", "scheme": "SCT", "meaning": "Lung"}},
    ],
    "training": {"data": "synthetic chest-CT phantoms"},
    "intended_use": "Research use only, not for diagnosis. The bundled model is trained on "
    "synthetic chest-CT phantoms.",
}

PROBABILITIES = (0.7, 0.2, 0.1)


def make_manifest() -> Manifest:
    """The test model's manifest (lesion + HU lung segments, three classes)."""
    return Manifest.from_dict(MANIFEST_DICT)


def load_series(folder: Path) -> list[Dataset]:
    """Read a CT series and sort it along the slice normal (ascending)."""
    datasets = [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]
    normal = _normal(datasets[0])
    datasets.sort(key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))
    return datasets


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    return np.cross(iop[:3], iop[3:])


def geometry_of(datasets: Sequence[Dataset]) -> Geometry:
    """The geometry of slices sorted by :func:`load_series` (or reversed)."""
    first, last = datasets[0], datasets[-1]
    iop = [float(v) for v in first.ImageOrientationPatient]
    p0 = np.array([float(v) for v in first.ImagePositionPatient])
    p1 = np.array([float(v) for v in last.ImagePositionPatient])
    n = len(datasets)
    step = (p1 - p0) / (n - 1)
    spacing = float(np.linalg.norm(step))
    return Geometry(
        shape=(n, int(first.Rows), int(first.Columns)),
        spacing=(spacing, float(first.PixelSpacing[0]), float(first.PixelSpacing[1])),
        origin=tuple(p0),
        row_direction=tuple(iop[:3]),
        column_direction=tuple(iop[3:]),
        slice_direction=tuple(step / spacing),
    )


def hu_volume(datasets: Sequence[Dataset]) -> np.ndarray:
    """HU array ``[slice, row, column]`` of the sorted datasets."""
    return np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in datasets]).astype(np.float32)


def sphere(shape: tuple[int, int, int], spacing: Sequence[float], center: Sequence[int],
           radius_mm: float) -> np.ndarray:
    """Boolean ball of ``radius_mm`` around voxel ``center`` on an anisotropic grid."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    distance2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing))
    return distance2 <= radius_mm**2


def lung_boxes(shape: tuple[int, int, int]) -> np.ndarray:
    """Crude lungs: two boxes, patient right (low column index) = 1, left = 2."""
    lungs = np.zeros(shape, dtype=np.uint8)
    n, rows, columns = shape
    k0, k1 = n // 8, n - n // 8
    lungs[k0:k1, rows // 4: 3 * rows // 4, columns // 8: columns // 2 - 10] = 1
    lungs[k0:k1, rows // 4: 3 * rows // 4, columns // 2 + 10: 7 * columns // 8] = 2
    return lungs


def analyse(lesion_mask: np.ndarray, lung_mask: np.ndarray, hu: np.ndarray,
            geometry: Geometry) -> LesionAnalysis:
    """Connected lesions (26-connectivity) and involvement, computed with scipy."""
    voxel_ml = geometry.voxel_volume_ml
    labels, count = ndimage.label(lesion_mask, structure=np.ones((3, 3, 3), dtype=bool))
    lesions = []
    for index in range(1, count + 1):
        component = labels == index
        voxels = int(component.sum())
        k, i, j = np.nonzero(component)
        side_counts = np.bincount(lung_mask[component], minlength=3)
        side = "left" if side_counts[2] > side_counts[1] else "right"
        lung_k = np.nonzero((lung_mask == (2 if side == "left" else 1)).any(axis=(1, 2)))[0]
        third = (lung_k.max() - lung_k.min() + 1) / 3.0 if lung_k.size else 1.0
        position = (k.mean() - (lung_k.min() if lung_k.size else 0)) / third
        zone = ("lower", "middle", "upper")[int(min(max(position, 0), 2))]
        centroid = geometry.index_to_patient(np.array([[k.mean(), i.mean(), j.mean()]]))[0]
        lesions.append(Lesion(
            index=0, voxel_count=voxels, volume_ml=voxels * voxel_ml,
            mean_hu=float(hu[component].mean()), side=side, zone=zone,
            centroid_mm=tuple(float(v) for v in centroid),
            bbox=(int(k.min()), int(k.max()) + 1, int(i.min()), int(i.max()) + 1,
                  int(j.min()), int(j.max()) + 1),
        ))
    lesions.sort(key=lambda lesion: -lesion.voxel_count)
    lesions = [Lesion(**{**lesion.__dict__, "index": n + 1}) for n, lesion in enumerate(lesions)]
    involvement = []
    for region, lung in (("total", lung_mask > 0), ("right", lung_mask == 1),
                         ("left", lung_mask == 2)):
        lung_ml = float(lung.sum()) * voxel_ml
        lesion_ml = float((lesion_mask & lung).sum()) * voxel_ml
        involvement.append(LungInvolvement(region, lung_ml, lesion_ml,
                                           100.0 * lesion_ml / lung_ml if lung_ml else 0.0))
    return LesionAnalysis(lesions=tuple(lesions), involvement=tuple(involvement),
                          total_lesion_volume_ml=float(lesion_mask.sum()) * voxel_ml)


def make_result(datasets: Sequence[Dataset], *, lesions: bool = True,
                geometry: Geometry | None = None) -> InferenceResult:
    """A synthetic result on ``datasets``' grid: two spheres (or none) and two lungs."""
    geometry = geometry or geometry_of(datasets)
    shape = geometry.shape
    lung_mask = lung_boxes(shape)
    lesion_mask = np.zeros(shape, dtype=bool)
    if lesions:
        n, rows, columns = shape
        lesion_mask |= sphere(shape, geometry.spacing, (n // 2, rows // 2, columns // 4), 20.0)
        lesion_mask |= sphere(shape, geometry.spacing, (n // 3, rows // 2 + 20,
                                                         3 * columns // 4), 12.0)
    hu = hu_volume(datasets)
    manifest = make_manifest()
    return InferenceResult(
        geometry=geometry, lesion_mask=lesion_mask, lung_mask=lung_mask,
        class_keys=manifest.class_keys, class_probabilities=PROBABILITIES,
        analysis=analyse(lesion_mask, lung_mask, hu, geometry),
        model_name=manifest.model_name, model_version=manifest.model_version,
    )


def dciodvfy(path: Path) -> list[str]:
    """Lines ``dciodvfy`` prints for ``path`` (stdout and stderr)."""
    executable = shutil.which("dciodvfy")
    if executable is None:
        raise RuntimeError("dciodvfy (Debian package dicom3tools) is not installed")
    completed = subprocess.run([executable, str(path)], capture_output=True, text=True,
                               timeout=120, check=False)
    return (completed.stdout + completed.stderr).splitlines()


def synthetic_series(folder: Path, slices: int) -> list[Dataset]:
    """``slices`` metadata-only copies of a real CT header, 1 mm apart along +z."""
    template = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0], stop_before_pixels=True)
    series_uid = generate_uid()
    x, y, _ = (float(v) for v in template.ImagePositionPatient)
    datasets = []
    for k in range(slices):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [x, y, float(k)]
        datasets.append(ds)
    return datasets


def synthetic_result(datasets: Sequence[Dataset]) -> InferenceResult:
    """Box lungs over 3/4 of the slices and two spherical lesions (HU -600)."""
    geometry = geometry_of(datasets)
    shape = geometry.shape
    n, rows, columns = shape
    lung_mask = lung_boxes(shape)
    lesion_mask = sphere(shape, geometry.spacing, (n // 2, rows // 2, columns // 4), 30.0)
    lesion_mask |= sphere(shape, geometry.spacing, (n // 3, rows // 2 + 20, 3 * columns // 4),
                          15.0)
    hu = np.full(shape, -600.0, dtype=np.float32)
    manifest = make_manifest()
    return InferenceResult(
        geometry=geometry, lesion_mask=lesion_mask, lung_mask=lung_mask,
        class_keys=manifest.class_keys, class_probabilities=PROBABILITIES,
        analysis=analyse(lesion_mask, lung_mask, hu, geometry),
        model_name=manifest.model_name, model_version=manifest.model_version,
    )


#: Attributes highdicom fills from the clock: two objects built from the same
#: arguments differ only there.
CLOCK_KEYWORDS = ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime")


def part10_bytes(dataset: Dataset) -> bytes:
    """``dataset`` written as a Part 10 file."""
    import io

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def same_part10_but_clock(first: Dataset, second: Dataset) -> bool:
    """Whether two objects are the same file once their clock values agree.

    ``second``'s Content/Instance Creation Date and Time and Contribution
    DateTime values are overwritten with ``first``'s (on a copy), then both are
    written as Part 10 files and compared byte for byte.
    """
    second = copy.deepcopy(second)
    for keyword in CLOCK_KEYWORDS:
        if keyword in first:
            setattr(second, keyword, getattr(first, keyword))
    for mine, theirs in zip(first.get("ContributingEquipmentSequence", []),
                            second.get("ContributingEquipmentSequence", [])):
        if "ContributionDateTime" in mine:
            theirs.ContributionDateTime = mine.ContributionDateTime
    return part10_bytes(first) == part10_bytes(second)


def phantom_case(folder: Path, *, seed: int = 3, label: str = "covid19",
                 matrix: int = 128, slices: int = 40) -> tuple[list[Dataset], InferenceResult]:
    """A synthetic chest CT (``inference.phantom``) written to ``folder`` and
    a result made from the phantom's own lesion and lung masks.

    The lesion analysis is the node's (:func:`inference.analysis.analyse_lesions`);
    with the defaults (seed 3, 128 x 128 pixels of 3 mm, 40 slices of 5 mm)
    there are nine lesions, five of them of 0.5 ml or more.

    Returns
    -------
    tuple[list[pydicom.Dataset], InferenceResult]
        The slices read back in ``result.geometry`` order, and the result.
    """
    import dataclasses

    from inference.analysis import analyse_lesions
    from inference.phantom import generate_phantom, sample_spec
    from inference.phantom.dicom import write_dicom_series

    spec = dataclasses.replace(sample_spec(seed, label), matrix=matrix, pixel_spacing=3.0,
                               n_slices=slices, slice_thickness=5.0)
    phantom = generate_phantom(spec)
    write_dicom_series(phantom, folder)
    datasets = load_series(folder)
    manifest = make_manifest()
    result = InferenceResult(
        geometry=phantom.geometry, lesion_mask=phantom.lesion_mask,
        lung_mask=phantom.lung_mask, class_keys=manifest.class_keys,
        class_probabilities=PROBABILITIES,
        analysis=analyse_lesions(phantom.lesion_mask, phantom.lung_mask, phantom.hu,
                                 phantom.geometry),
        model_name=manifest.model_name, model_version=manifest.model_version,
    )
    return datasets, result
