"""Lung extraction, lesion restriction and component clean-up on the source grid."""
from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from inference.geometry import Geometry
from inference.manifest import Manifest
from inference.postprocessing import extract_lungs, lung_source, postprocess
from inference.volume import build_volume, read_series
from tests.manifest_fixtures import make_manifest, manifest_dict
from tests.onnx_fixtures import LESION_HU, PADDING_HU, TABLE_HU, synthetic_chest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def patient_xyz(geometry: Geometry) -> np.ndarray:
    k, i, j = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    points = geometry.index_to_patient(np.stack([k.ravel(), i.ravel(), j.ravel()], axis=1))
    return points.reshape(*geometry.shape, 3)


@pytest.mark.parametrize("feet_first", [False, True])
@pytest.mark.parametrize("joined", [False, True])
def test_lungs_right_and_left_on_a_synthetic_chest(feet_first: bool, joined: bool) -> None:
    hu, geometry, truth = synthetic_chest(feet_first=feet_first, joined=joined)
    result = extract_lungs(hu, geometry)
    assert result.lung_mask.dtype == np.uint8
    assert set(np.unique(result.lung_mask)) == {0, 1, 2}
    # 1 = patient's right lung (negative x), 2 = left lung (positive x).
    assert dice(result.lung_mask == 1, truth == 1) > 0.95
    assert dice(result.lung_mask == 2, truth == 2) > 0.95
    xyz = patient_xyz(geometry)
    assert xyz[..., 0][result.lung_mask == 1].max() < 5.0
    assert xyz[..., 0][result.lung_mask == 2].min() > -5.0
    # Outside air, padding and the table are never lung.
    assert not result.lung_mask[hu == PADDING_HU].any()
    table = (xyz[..., 1] > 118) & (xyz[..., 1] < 128) & (np.abs(xyz[..., 0]) < 100)
    assert np.abs(hu[table].astype(float).mean() - TABLE_HU) < 100
    assert not result.lung_mask[table].any()
    outside = (xyz[..., 0] / 150.0) ** 2 + (xyz[..., 1] / 105.0) ** 2 > 1.05
    assert not result.lung_mask[outside].any()
    assert not result.lesion_mask.any()


def test_lungs_with_flipped_columns() -> None:
    """Columns running to the patient's right (-x): sides follow x, not j."""
    hu, geometry, truth = synthetic_chest()
    flipped = Geometry(
        shape=geometry.shape,
        spacing=geometry.spacing,
        origin=(-geometry.origin[0], geometry.origin[1], -geometry.origin[2]),
        row_direction=(-1.0, 0.0, 0.0),
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=(0.0, 0.0, -1.0),
    )
    # Same voxels, new placement: mirror the arrays so the anatomy stays put.
    hu_f = hu[::-1, :, ::-1].copy()
    truth_f = truth[::-1, :, ::-1]
    result = extract_lungs(hu_f, flipped)
    assert dice(result.lung_mask == 1, truth_f == 1) > 0.95
    assert dice(result.lung_mask == 2, truth_f == 2) > 0.95


def test_lesions_are_lung_and_stray_lesions_go() -> None:
    lesions = (((-60.0, 0.0, 30.0), 15.0), ((60.0, 10.0, -40.0), 12.0))
    hu, geometry, truth = synthetic_chest(lesions=lesions)
    xyz = patient_xyz(geometry)
    proposed = hu >= LESION_HU - 60  # the two spheres
    inside_lesions = proposed & (truth > 0)
    assert np.array_equal(proposed, inside_lesions)
    # False positives: below the lungs in the body ("liver"), in outside air, on the
    # table, and one tiny component inside the lung.
    table = (xyz[..., 1] > 118) & (xyz[..., 1] < 128) & (np.abs(xyz[..., 0]) < 100)
    liver = ((xyz[..., 0] - 20) ** 2 + (xyz[..., 1]) ** 2 + (xyz[..., 2] + 85) ** 2) <= 12.0**2
    room_air = ((xyz[..., 0]) ** 2 + (xyz[..., 1] + 125) ** 2 + (xyz[..., 2]) ** 2) <= 8.0**2
    tiny = np.zeros(geometry.shape, dtype=bool)
    k, i, j = np.round(geometry.patient_to_index(np.array([[-40.0, -20.0, 0.0]]))[0]).astype(int)
    tiny[k, i, j] = True
    mask = proposed | liver | room_air | tiny | table
    result = extract_lungs(hu, geometry, lesion_mask=mask, min_lesion_volume_ml=0.1)
    assert np.array_equal(result.lesion_mask, inside_lesions)
    assert result.dropped_components == 1  # the single voxel (0.08 mL)
    # Lesions are inside the lung mask, on their own side; the spheres count as lung.
    assert not (result.lesion_mask & (result.lung_mask == 0)).any()
    assert (result.lung_mask[inside_lesions & (xyz[..., 0] < 0)] == 1).all()
    assert (result.lung_mask[inside_lesions & (xyz[..., 0] > 0)] == 2).all()
    assert dice(result.lung_mask > 0, truth > 0) > 0.98
    assert not result.lung_mask[liver | room_air | table].any()
    # The input mask is not modified.
    assert mask[tiny].all() and mask[liver].all()


def test_dense_consolidation_counts_as_lung() -> None:
    """A lesion filling the lower half of the right lung is lung, not mediastinum."""
    hu, geometry, truth = synthetic_chest()
    xyz = patient_xyz(geometry)
    consolidation = (truth == 1) & (xyz[..., 2] < 0)
    hu[consolidation] = 20  # soft-tissue density: no air left there
    without = extract_lungs(hu, geometry)
    assert (without.lung_mask[consolidation] == 0).mean() > 0.5  # HU alone misses it
    result = extract_lungs(hu, geometry, lesion_mask=consolidation)
    assert np.array_equal(result.lesion_mask, consolidation)
    assert (result.lung_mask[consolidation] == 1).all()
    assert dice(result.lung_mask == 1, truth == 1) > 0.98


def test_fully_consolidated_lung_is_kept_by_size() -> None:
    hu, geometry, truth = synthetic_chest()
    hu[truth == 2] = 30  # a "white" left lung: no aerated lung to touch
    result = extract_lungs(hu, geometry, lesion_mask=truth == 2)
    assert np.array_equal(result.lesion_mask, truth == 2)
    assert (result.lung_mask[truth == 2] == 2).all()
    assert dice(result.lung_mask == 1, truth == 1) > 0.95


def test_postprocess_maps_model_grid_outputs_back(tmp_path: Path) -> None:
    hu, geometry, truth = synthetic_chest(lesions=(((-60.0, 0.0, 30.0), 18.0),))
    model_geometry = Geometry(
        shape=(20, 48, 48), spacing=(10.0, 8.0, 8.0),
        origin=(-188.0, -188.0, -95.0),
    )
    xyz = patient_xyz(model_geometry)
    sphere = np.linalg.norm(xyz - np.array([-60.0, 0.0, 30.0]), axis=-1) <= 18.0
    probability = sphere.astype(np.float32)[None, None]
    lung_probability = np.zeros_like(probability)
    outputs = {
        "lesion_probability": probability,
        "class_probabilities": np.array([[0.5, 0.3, 0.2]], np.float32),
        "lung_probability": lung_probability,
    }
    manifest = make_manifest(shape=(20, 48, 48), spacing=(10.0, 8.0, 8.0))
    assert lung_source(manifest) == "hu_lung_extraction"
    result = postprocess(outputs, model_geometry, hu, geometry, manifest)
    assert result.lung_source == "hu_lung_extraction"
    reference = (hu >= LESION_HU - 60) & (truth > 0)
    assert dice(result.lesion_mask, reference) > 0.6
    assert (result.lung_mask[result.lesion_mask] == 1).all()
    with pytest.raises(ValueError, match="min_lesion_volume_ml"):
        postprocess(outputs, model_geometry, hu, geometry, manifest, min_lesion_volume_ml=-1)


def test_lung_probability_source_is_used_when_the_manifest_says_so() -> None:
    hu, geometry, truth = synthetic_chest()
    data = manifest_dict(shape=(20, 48, 48), spacing=(10.0, 8.0, 8.0), with_lung=True)
    assert lung_source(Manifest.from_dict(data)) == "hu_lung_extraction"
    data["segments"][1]["source"] = "lung_probability"
    manifest = Manifest.from_dict(data)
    assert lung_source(manifest) == "lung_probability"
    model_geometry = Geometry(
        shape=(20, 48, 48), spacing=(10.0, 8.0, 8.0), origin=(-188.0, -188.0, -95.0)
    )
    xyz = patient_xyz(model_geometry)
    # The "model" only sees the right lung: the HU path would find both.
    right = (xyz[..., 0] > -110) & (xyz[..., 0] < -20) & (np.abs(xyz[..., 1]) < 60) & (
        np.abs(xyz[..., 2]) <= 60)
    outputs = {
        "lesion_probability": np.zeros((1, 1, 20, 48, 48), np.float32),
        "class_probabilities": np.array([[0.1, 0.1, 0.8]], np.float32),
        "lung_probability": right.astype(np.float32)[None, None],
    }
    result = postprocess(outputs, model_geometry, hu, geometry, manifest)
    assert result.lung_source == "lung_probability"
    assert dice(result.lung_mask > 0, truth == 1) > 0.9
    assert not (result.lung_mask[truth == 2]).any()
    assert (result.lung_mask[result.lung_mask > 0] == 1).all()


def test_real_ct_lungs(shared_data: Path) -> None:
    volume = build_volume(read_series([shared_data / "ct" / "lung-pet-ct-dx-a0002"]))
    result = extract_lungs(volume.hu, volume.geometry)
    geometry = volume.geometry
    voxel_ml = geometry.voxel_volume_ml
    right_ml = float((result.lung_mask == 1).sum()) * voxel_ml
    left_ml = float((result.lung_mask == 2).sum()) * voxel_ml
    # Both lungs found with adult-sized volumes (partial z coverage: 240 mm).
    assert 600 < right_ml < 4000 and 600 < left_ml < 4000
    # Right lung (label 1) lies at lower patient x than the left lung.
    index = np.array([np.mean(np.nonzero(result.lung_mask[:, ::4, ::4] == lab), axis=1)
                      for lab in (1, 2)]) * np.array([1, 4, 4])
    centres = geometry.index_to_patient(index)
    assert centres[0, 0] < -30 and centres[1, 0] > 30
    # Lung voxels are air or lung tissue, mostly below -500 HU.
    assert float(np.mean(volume.hu[result.lung_mask > 0] < -500)) > 0.9


@pytest.mark.slow
def test_speed_and_memory_on_300_slices(shared_data: Path) -> None:
    volume = build_volume(read_series([shared_data / "ct" / "lung-pet-ct-dx-a0002"]))
    hu = np.repeat(volume.hu, 10, axis=0)  # 300 x 512 x 512 int16, 150 MB
    geometry = Geometry(
        shape=hu.shape, spacing=(0.8, *volume.geometry.spacing[1:]), origin=volume.geometry.origin
    )
    del volume
    lesion = np.zeros(hu.shape, dtype=bool)
    lesion[120:180, 250:300, 120:170] = True
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result = extract_lungs(hu, geometry, lesion_mask=lesion)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    seconds = time.perf_counter() - start
    print(f"extract_lungs 300x512x512: {seconds:.1f} s, peak {peak / 1e6:.0f} MB")
    # Two 1-byte output masks (157 MB) plus coarse and chunk temporaries.
    assert peak < 260e6
    assert seconds < 30.0
    assert result.lung_mask.any() and result.lesion_mask.any()
