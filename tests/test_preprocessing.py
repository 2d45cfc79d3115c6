"""Resampling to the model grid and back: geometry round trips."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from inference.geometry import Geometry
from inference.manifest import GridSpec
from inference.preprocessing import (
    find_lungs,
    normalise,
    place_grid,
    prepare_input,
    resample_to_geometry,
    resample_to_spacing,
    to_source_grid,
)
from inference.resample import axis_weights
from tests.manifest_fixtures import make_manifest


def _sphere(geometry: Geometry, centre_mm: np.ndarray, radius_mm: float) -> np.ndarray:
    k, i, j = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    points = geometry.index_to_patient(np.stack([k.ravel(), i.ravel(), j.ravel()], axis=1))
    inside = np.linalg.norm(points - centre_mm, axis=1) <= radius_mm
    return inside.reshape(geometry.shape)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_axis_weights_rows_sum_to_one_inside_and_zero_outside() -> None:
    w = axis_weights(n_in=10, n_out=8, scale=2.0, offset=-3.0)
    sums = w.sum(axis=1)
    centres = np.arange(8) * 2.0 - 3.0
    inside = (centres >= -0.5) & (centres <= 9.5)
    assert np.allclose(sums[inside], 1.0, atol=1e-6)
    assert np.all(sums[~inside] == 0)


def test_axis_weights_identity() -> None:
    w = axis_weights(n_in=5, n_out=5, scale=1.0, offset=0.0)
    assert np.allclose(w, np.eye(5))


def test_axis_weights_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="scale"):
        axis_weights(4, 4, 0.0, 0.0)
    with pytest.raises(ValueError, match="n_in"):
        axis_weights(0, 4, 1.0, 0.0)


def test_downsampling_preserves_mean_and_reduces_noise() -> None:
    rng = np.random.default_rng(0)
    geometry = Geometry(shape=(40, 64, 64), spacing=(1.0, 0.7, 0.7), origin=(0, 0, 0))
    volume = (-850 + 20 * rng.standard_normal(geometry.shape)).astype(np.float32)
    low, low_geometry = resample_to_spacing(volume, geometry, (4.0, 2.8, 2.8))
    assert low_geometry.shape == (10, 16, 16)
    assert abs(float(low.mean()) + 850) < 1.0
    assert float(low.std()) < 20 / 3
    # Same physical centre.
    assert np.allclose(low_geometry.center, geometry.center, atol=1e-6)


@pytest.mark.parametrize(
    "slice_direction,row_direction",
    [((0, 0, 1), (1, 0, 0)), ((0, 0, -1), (1, 0, 0)), ((0, 0, 1), (-1, 0, 0))],
)
def test_round_trip_sphere(slice_direction: tuple, row_direction: tuple) -> None:
    column_direction = (0.0, 1.0, 0.0)
    normal = np.cross(row_direction, column_direction)
    if np.dot(normal, slice_direction) == 0:
        pytest.fail("bad parametrisation")
    geometry = Geometry(
        shape=(48, 96, 96),
        spacing=(2.5, 1.5, 1.5),
        origin=(-70.0, -60.0, 30.0),
        row_direction=row_direction,
        column_direction=column_direction,
        slice_direction=slice_direction,
    )
    centre = geometry.center + np.array([10.0, -8.0, 5.0])
    sphere = _sphere(geometry, centre, 25.0)
    manifest = make_manifest(shape=(24, 40, 40), spacing=(5.0, 3.0, 3.0))
    volume = np.where(sphere, 0.0, -1000.0).astype(np.int16)
    prepared = prepare_input(volume, geometry, manifest)
    assert prepared.tensor.shape == (1, 1, 24, 40, 40)
    assert prepared.tensor.dtype == np.float32
    model_sphere = (prepared.hu > -500).astype(np.float32)
    back = to_source_grid(model_sphere, prepared.geometry, geometry, threshold=0.5)
    assert back.dtype == bool and back.shape == geometry.shape
    assert _dice(back, sphere) > 0.9
    # The centroid lands where it was, within a model voxel.
    centroid_back = geometry.index_to_patient(np.argwhere(back).mean(axis=0)[None])[0]
    assert np.linalg.norm(centroid_back - centre) < 3.0


def test_to_source_grid_zero_outside_model_grid() -> None:
    geometry = Geometry(shape=(20, 40, 40), spacing=(5.0, 5.0, 5.0), origin=(0, 0, 0))
    model_geometry = Geometry(shape=(4, 4, 4), spacing=(5.0, 5.0, 5.0), origin=(50, 50, 50))
    values = np.ones((4, 4, 4), dtype=np.float32)
    back = to_source_grid(values, model_geometry, geometry)
    assert back.sum() == pytest.approx(64.0)
    assert back[10:14, 10:14, 10:14].min() == pytest.approx(1.0)
    assert back[:10].max() == 0.0


def test_to_source_grid_rejects_other_axes() -> None:
    geometry = Geometry(shape=(4, 4, 4), spacing=(1, 1, 1), origin=(0, 0, 0))
    other = Geometry(
        shape=(4, 4, 4), spacing=(1, 1, 1), origin=(0, 0, 0),
        row_direction=(0, 1, 0), column_direction=(1, 0, 0),
    )
    with pytest.raises(ValueError, match="same axes"):
        to_source_grid(np.zeros((4, 4, 4), np.float32), other, geometry)


def test_place_grid_pads_with_fill_and_shifts_origin() -> None:
    geometry = Geometry(shape=(4, 4, 4), spacing=(2, 2, 2), origin=(0, 0, 0))
    array = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    grid = GridSpec(shape=(6, 6, 6), spacing_mm=(2, 2, 2))
    out, model_geometry = place_grid(array, geometry, grid, np.array([1.5, 1.5, 1.5]), -1024.0)
    assert out.shape == (6, 6, 6)
    assert out[0, 0, 0] == -1024.0
    assert np.array_equal(out[1:5, 1:5, 1:5], array)
    assert model_geometry.origin == (-2.0, -2.0, -2.0)


def test_find_lungs_ignores_outside_air_and_padding() -> None:
    volume = np.full((20, 60, 60), -1024.0, dtype=np.float32)  # outside air
    volume[:, 10:50, 10:50] = 40.0  # body
    volume[3:17, 15:45, 15:28] = -850.0  # right lung
    volume[3:17, 15:45, 32:45] = -850.0  # left lung
    lungs = find_lungs(volume, (5.0, 5.0, 5.0))
    assert lungs[10, 30, 20] and lungs[10, 30, 40]
    assert not lungs[10, 2, 2] and not lungs[10, 30, 30]


def test_prepare_input_centres_on_lungs() -> None:
    geometry = Geometry(shape=(60, 100, 100), spacing=(5.0, 4.0, 4.0), origin=(0, 0, 0))
    volume = np.full(geometry.shape, -3024, dtype=np.int16)  # padding
    volume[:, 5:95, 5:95] = 40
    volume[30:55, 20:60, 20:45] = -850
    volume[30:55, 20:60, 55:80] = -850
    manifest = make_manifest(shape=(16, 32, 32), spacing=(5.0, 4.0, 4.0))
    prepared = prepare_input(volume, geometry, manifest)
    lung_centre_mm = geometry.index_to_patient(np.array([[42.0, 39.5, 49.5]]))[0]
    assert np.linalg.norm(prepared.geometry.center - lung_centre_mm) < 6.0
    # The padding value was clipped to the window before resampling.
    assert float(prepared.hu.min()) >= -1024.0


def test_normalise_uses_manifest_window() -> None:
    manifest = make_manifest()
    hu = np.array([-3024.0, -1024.0, -212.0, 600.0, 2000.0])
    out = normalise(hu, manifest.intensity)
    assert np.allclose(out, [-1.0, -1.0, 0.0, 1.0, 1.0])
    bad = dataclasses.replace(manifest.intensity, scale_hu=406.0)
    assert normalise(np.array([600.0]), bad)[0] == pytest.approx(2.0)


def test_resample_to_geometry_matches_prepare_input() -> None:
    geometry = Geometry(shape=(40, 80, 80), spacing=(2.0, 1.2, 1.2), origin=(-40, -50, 0))
    sphere = _sphere(geometry, geometry.center, 20.0)
    volume = np.where(sphere, 0, -900).astype(np.int16)
    manifest = make_manifest(shape=(16, 32, 32), spacing=(5.0, 3.0, 3.0))
    prepared = prepare_input(volume, geometry, manifest)
    mask = resample_to_geometry(sphere.astype(np.float32), geometry, prepared.geometry)
    model_sphere = prepared.hu > -450
    assert _dice(mask > 0.5, model_sphere) > 0.95
    filled = resample_to_geometry(volume, geometry, prepared.geometry, fill=-1024.0)
    assert np.allclose(filled, prepared.hu, atol=1e-3)
