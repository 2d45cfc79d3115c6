"""Tests of the synthetic chest-CT phantom generator (inference.phantom)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from inference.geometry import Geometry
from inference.phantom import (
    CLASS_KEYS,
    Phantom,
    PhantomSpec,
    generate_phantom,
    normalize_label,
    parse_classes,
    phantom_geometry,
    sample_spec,
)
from inference.phantom.fields import BSplineNoise, Capsule
from inference.phantom.generator import plan_phantom
from inference.phantom.lesions import Where

#: Low-resolution grid of the batch statistics (fast; lesions are >= 15 mm).
LOW_MATRIX = 96
LOW_THICKNESS = 6.0
#: Phantoms per class in the batch statistics.
BATCH = 12


def low_res(seed: int, label: str) -> PhantomSpec:
    """A spec's patient on the low-resolution grid (field of view kept)."""
    return sample_spec(seed, label).with_grid(matrix=LOW_MATRIX, slice_thickness=LOW_THICKNESS)


@pytest.fixture(scope="module")
def batch() -> dict[str, list[Phantom]]:
    """BATCH phantoms of each class at low resolution."""
    return {
        label: [generate_phantom(low_res(1000 + n, label)) for n in range(BATCH)]
        for label in CLASS_KEYS
    }


# ----------------------------------------------------------------------
# Spec
# ----------------------------------------------------------------------
def test_labels_accept_short_names_and_keys() -> None:
    assert normalize_label("covid") == "covid19"
    assert normalize_label("COVID19") == "covid19"
    assert normalize_label("normal") == "no_pneumonia"
    assert normalize_label("no_pneumonia") == "no_pneumonia"
    assert normalize_label("cap") == "cap"
    assert parse_classes("covid,cap,normal") == CLASS_KEYS
    assert parse_classes("normal, covid19,covid") == ("no_pneumonia", "covid19")
    with pytest.raises(ValueError, match='"label"'):
        normalize_label("flu")
    with pytest.raises(TypeError, match='"label"'):
        normalize_label(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"classes"'):
        parse_classes(" , ")


def test_sample_spec_is_deterministic_and_in_range() -> None:
    assert sample_spec(11) == sample_spec(11)
    assert sample_spec(11, "cap") == sample_spec(11, "cap")
    assert sample_spec(11) != sample_spec(12)
    labels = [sample_spec(seed).label for seed in range(90)]
    for key in CLASS_KEYS:  # uniform over the classes: each about 30 of 90
        assert 15 <= labels.count(key) <= 45
    for seed in range(40):
        spec = sample_spec(seed)
        assert spec.matrix == 512
        assert 0.5 <= spec.pixel_spacing <= 0.9
        assert 256.0 <= spec.field_of_view <= 460.0 + 1e-6
        assert 1.0 <= spec.slice_thickness <= 8.0
        assert 280.0 <= spec.body_width <= 400.0
        assert spec.padding_value in (-2000, -3024)
        assert 10.0 <= spec.noise_std <= 25.0
        # The scan covers the lungs (0..lung_height) up to a small cut.
        low = spec.scan_center_z - spec.scan_length / 2
        high = spec.scan_center_z + spec.scan_length / 2
        assert low <= 25.0 and high >= spec.lung_height - 25.0


def test_same_seed_different_label_is_the_same_patient() -> None:
    covid, normal = sample_spec(5, "covid"), sample_spec(5, "normal")
    assert (covid.body_width, covid.n_slices, covid.pixel_spacing) == (
        normal.body_width, normal.n_slices, normal.pixel_spacing)
    assert covid.lesion_count > 0 and normal.lesion_count == 0


def test_spec_validation_names_the_argument() -> None:
    spec = sample_spec(3, "covid")
    with pytest.raises(ValueError, match='"matrix"'):
        dataclasses.replace(spec, matrix=8)
    with pytest.raises(TypeError, match='"n_slices"'):
        dataclasses.replace(spec, n_slices=10.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"padding_value"'):
        dataclasses.replace(spec, padding_value=-1024)
    with pytest.raises(ValueError, match='"lesion_count"'):
        dataclasses.replace(spec, label="no_pneumonia")
    with pytest.raises(ValueError, match='"cap_pattern"'):
        dataclasses.replace(spec, label="cap")
    with pytest.raises(ValueError, match='"seed"'):
        sample_spec(-1)
    with pytest.raises(TypeError, match='"spec"'):
        generate_phantom("3")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match='"label"'):
        generate_phantom(spec, label="cap")


def test_with_grid_keeps_field_of_view_and_scan_length() -> None:
    spec = sample_spec(4, "cap")
    small = spec.with_grid(matrix=128, slice_thickness=5.0)
    assert small.matrix == 128 and small.slice_thickness == 5.0
    assert small.field_of_view == pytest.approx(spec.field_of_view)
    assert small.scan_length == pytest.approx(spec.scan_length, abs=5.0)
    exact = spec.with_grid(matrix=512, pixel_spacing=0.7, n_slices=300, slice_thickness=1.0)
    assert exact.shape == (300, 512, 512)
    assert dataclasses.replace(small, label="cap") == small


# ----------------------------------------------------------------------
# Fields
# ----------------------------------------------------------------------
def test_lattice_noise_is_the_same_on_grids_and_at_points() -> None:
    noise = BSplineNoise(np.random.default_rng(1), (0, 0, 0), (60, 80, 90), 4.0)
    zs, ys, xs = np.linspace(3, 55, 14), np.linspace(-3, 77, 21), np.linspace(1, 88, 17)
    grid = noise.grid(zs, ys, xs)
    Z, Y, X = np.meshgrid(zs, ys, xs, indexing="ij")
    np.testing.assert_allclose(noise.points(Z, Y, X), grid, atol=1e-4)
    assert 0.7 < float(grid.std()) < 1.3
    assert abs(float(grid.mean())) < 0.3


def test_capsule_distance() -> None:
    capsule = Capsule((0.0, 0.0, 0.0), (0.0, 0.0, 10.0), 2.0, 2.0)
    z = np.array([5.0, 5.0, 14.0])
    y = np.array([0.0, 0.0, 0.0])
    x = np.array([0.0, 5.0, 0.0])
    np.testing.assert_allclose(capsule.distance(z, y, x), [-2.0, 3.0, 2.0], atol=1e-5)


# ----------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------
def test_same_spec_gives_identical_arrays_and_seeds_differ() -> None:
    spec = sample_spec(21, "covid").with_grid(matrix=64, slice_thickness=8.0)
    first, second = generate_phantom(spec), generate_phantom(spec)
    assert first.hu.dtype == np.int16 and first.lesion_mask.dtype == np.bool_
    assert first.lung_mask.dtype == np.uint8
    np.testing.assert_array_equal(first.hu, second.hu)
    np.testing.assert_array_equal(first.lesion_mask, second.lesion_mask)
    np.testing.assert_array_equal(first.lung_mask, second.lung_mask)
    other = generate_phantom(sample_spec(22, "covid").with_grid(matrix=64, slice_thickness=8.0))
    assert other.hu.shape != first.hu.shape or not np.array_equal(other.hu, first.hu)
    assert not np.array_equal(first.hu, generate_phantom(
        dataclasses.replace(spec, seed=23)).hu)


def test_geometry_sides_and_padding() -> None:
    spec = dataclasses.replace(
        sample_spec(8, "covid").with_grid(matrix=96, slice_thickness=6.0), padding_value=-3024)
    phantom = generate_phantom(spec)
    geometry = phantom.geometry
    assert isinstance(geometry, Geometry)
    assert geometry == phantom_geometry(spec)
    assert geometry.shape == phantom.hu.shape == spec.shape
    assert geometry.spacing == (spec.slice_thickness, spec.pixel_spacing, spec.pixel_spacing)
    assert geometry.row_direction == (1.0, 0.0, 0.0)
    assert geometry.column_direction == (0.0, 1.0, 0.0)
    assert geometry.slice_direction == (0.0, 0.0, 1.0)
    # The image centre is the reconstruction centre.
    np.testing.assert_allclose(geometry.center[:2], spec.fov_center, atol=1e-6)
    # Patient's right lung (label 1) at negative LPS x, left lung at positive x.
    for label, sign in ((1, -1.0), (2, 1.0)):
        k, i, j = np.nonzero(phantom.lung_mask == label)
        x = geometry.index_to_patient(np.column_stack([k, i, j]))[:, 0]
        body_x = spec.fov_center[0] + spec.body_offset[0]
        assert np.all(np.sign(x - body_x) == sign)
    # Padding outside the reconstruction circle, CT numbers inside it.
    assert phantom.padding_value == -3024
    assert np.all(phantom.hu[:, 0, 0] == -3024) and np.all(phantom.hu[:, -1, -1] == -3024)
    m = spec.matrix
    jj = np.arange(m) - (m - 1) / 2.0
    inside = (jj[None, :] ** 2 + jj[:, None] ** 2) <= (m / 2.0 - 1) ** 2
    assert phantom.hu[:, inside].min() >= -1024
    assert phantom.hu[:, inside].max() <= 3071
    # Bone is present (ribs, spine) and the lungs are a few litres.
    assert np.count_nonzero(phantom.hu > 300) > 100
    assert 2000.0 < phantom.lung_volume_ml < 9000.0


def test_class_patterns(batch: dict[str, list[Phantom]]) -> None:
    def lungs_involved(phantom: Phantom) -> set[int]:
        return {side for side in (1, 2)
                if np.any(phantom.lesion_mask & (phantom.lung_mask == side))}

    covid, cap, normal = batch["covid19"], batch["cap"], batch["no_pneumonia"]
    assert all(p.label == "covid19" for p in covid)
    bilateral = sum(lungs_involved(p) == {1, 2} for p in covid)
    assert bilateral >= 0.8 * len(covid)
    unilateral = sum(len(lungs_involved(p)) == 1 for p in cap)
    assert unilateral >= 0.7 * len(cap)
    assert all(not p.lesion_mask.any() for p in normal)
    for phantom in covid + cap:
        assert 0.02 <= phantom.involvement <= 0.4, phantom.spec
        # Lesions lie inside the lungs.
        assert not np.any(phantom.lesion_mask & (phantom.lung_mask == 0))
        hu = phantom.hu[phantom.lesion_mask].astype(float)
        if phantom.label == "covid19":  # ground glass, some mixed
            assert -700.0 <= hu.mean() <= -300.0, phantom.spec
        else:  # consolidation (air bronchograms and edges lower the mean)
            assert -100.0 <= float(np.median(hu)) <= 50.0, phantom.spec
            assert -160.0 <= hu.mean() <= 50.0, phantom.spec
    # COVID-19 lesions are peripheral (subpleural), CAP is deeper (lobar,
    # segmental or peribronchial): depth of lesion voxels below the pleura.
    def depth(phantom: Phantom) -> float:
        inside = ndimage.distance_transform_edt(phantom.lung_mask > 0,
                                                sampling=phantom.geometry.spacing)
        return float(np.median(inside[phantom.lesion_mask]))

    covid_depth = np.median([depth(p) for p in covid])
    cap_depth = np.median([depth(p) for p in cap])
    assert covid_depth < 14.0
    assert covid_depth < cap_depth


def test_lung_parenchyma_density(batch: dict[str, list[Phantom]]) -> None:
    for phantom in batch["no_pneumonia"]:
        lung = phantom.lung_mask > 0
        core = ndimage.binary_erosion(lung, iterations=1)
        hu = phantom.hu[core].astype(float)
        # Parenchyma about -850 HU; vessels raise the mean like on real CT.
        assert -880.0 <= float(np.median(hu)) <= -820.0
        assert -860.0 <= hu.mean() <= -760.0
        # Vessels: a bright tail inside the lungs.
        assert np.mean(hu > -300) > 0.005


def test_masks_sample_the_continuous_fields_at_voxel_centres() -> None:
    spec = sample_spec(2, "covid").with_grid(matrix=96, slice_thickness=6.0)
    phantom = generate_phantom(spec)
    plan = plan_phantom(spec)
    rng = np.random.default_rng(5)
    kij = np.column_stack([rng.integers(0, n, 40000) for n in phantom.hu.shape])
    x, y, z = plan.to_phantom_frame(phantom.geometry.index_to_patient(kij)).T
    lung = plan.anatomy.lung_distance(x, y, z)
    depth = np.full(len(x), -np.inf)
    where = Where(z, y, x)
    for lesion in plan.lesions:
        if lesion.in_mask:
            depth = np.maximum(depth, lesion.depth(where, plan.noise, plan.anatomy))
    k, i, j = kij.T
    clear = np.abs(lung) > 1e-3
    np.testing.assert_array_equal((phantom.lung_mask[k, i, j] > 0)[clear], (lung < 0)[clear])
    clear &= np.abs(depth) > 1e-3
    np.testing.assert_array_equal(phantom.lesion_mask[k, i, j][clear],
                                  ((depth > 0) & (lung < 0))[clear])
    assert np.count_nonzero(phantom.lesion_mask[k, i, j]) > 50
    side = np.where(x < 0, 1, 2)
    inside = phantom.lung_mask[k, i, j] > 0
    np.testing.assert_array_equal(phantom.lung_mask[k, i, j][inside], side[inside])


def test_resolution_independence() -> None:
    for seed, label in ((2, "covid"), (1, "cap")):
        spec = sample_spec(seed, label)
        coarse = generate_phantom(spec.with_grid(matrix=96, slice_thickness=6.0))
        fine = generate_phantom(spec.with_grid(matrix=256, slice_thickness=2.5))
        assert coarse.lesion_volume_ml > 20.0
        assert coarse.lesion_volume_ml == pytest.approx(fine.lesion_volume_ml, rel=0.1)
        assert coarse.lung_volume_ml == pytest.approx(fine.lung_volume_ml, rel=0.05)


def test_distractors_change_the_image_but_not_the_mask() -> None:
    base = dataclasses.replace(
        sample_spec(31, "normal").with_grid(matrix=128, slice_thickness=3.0), distractor=None)
    clean = generate_phantom(base)
    for kind in ("nodule", "atelectasis"):
        spec = dataclasses.replace(base, distractor=kind)
        phantom = generate_phantom(spec)
        assert phantom.lesions == (kind,)
        assert not phantom.lesion_mask.any()
        lung = phantom.lung_mask > 0
        dense_with = np.count_nonzero(phantom.hu[lung] > -300)
        dense_without = np.count_nonzero(clean.hu[lung] > -300)
        assert dense_with > dense_without + 3, kind


def test_air_bronchograms_in_cap_consolidation() -> None:
    spec = sample_spec(1, "cap").with_grid(matrix=256, slice_thickness=2.5)
    assert spec.cap_pattern in ("lobar", "segmental")
    with_air = generate_phantom(dataclasses.replace(spec, air_bronchograms=True))
    without = generate_phantom(dataclasses.replace(spec, air_bronchograms=False))
    np.testing.assert_array_equal(with_air.lesion_mask, without.lesion_mask)
    mask = with_air.lesion_mask
    air_with = np.count_nonzero(with_air.hu[mask] < -600)
    air_without = np.count_nonzero(without.hu[mask] < -600)
    assert air_with > 2 * air_without + 5


def test_ggo_edges_are_soft_and_consolidation_edges_sharp() -> None:
    def edge_ramp(phantom: Phantom) -> float:
        """Mean HU of the first ring outside the lesion, relative to inside."""
        lung = phantom.lung_mask > 0
        mask = phantom.lesion_mask
        ring = ndimage.binary_dilation(mask, iterations=1) & ~mask & lung
        far = lung & ~ndimage.binary_dilation(mask, iterations=6)
        inner = ndimage.binary_erosion(mask, iterations=2)
        hu = phantom.hu.astype(float)
        return (np.median(hu[ring]) - np.median(hu[far])) / (
            np.median(hu[inner]) - np.median(hu[far]))

    plain_ggo = dataclasses.replace(sample_spec(2, "covid"), consolidation_fraction=0.0,
                                    crazy_paving_fraction=0.0, distractor=None)
    covid = generate_phantom(plain_ggo.with_grid(matrix=384, slice_thickness=2.0))
    cap = generate_phantom(sample_spec(1, "cap").with_grid(matrix=384, slice_thickness=2.0))
    # GGO: the density still blends in over the first millimetre outside the mask.
    assert edge_ramp(covid) > 0.22
    assert edge_ramp(cap) < 0.8 * edge_ramp(covid)


def test_scanner_noise_level() -> None:
    spec = dataclasses.replace(
        sample_spec(6, "normal").with_grid(matrix=128, slice_thickness=5.0),
        noise_std=20.0, noise_correlation_mm=0.6)
    noisy = generate_phantom(spec)
    clean = generate_phantom(dataclasses.replace(spec, noise_std=0.0))
    body = (clean.hu > -500) & (clean.hu < 500)
    diff = noisy.hu[body].astype(float) - clean.hu[body]
    assert diff.std() == pytest.approx(20.0, rel=0.15)
    assert abs(diff.mean()) < 1.0


@pytest.mark.slow
def test_seed_overload_equals_sample_spec() -> None:
    phantom = generate_phantom(9, label="normal")
    assert phantom.spec == sample_spec(9, "no_pneumonia")
    assert phantom.label == "no_pneumonia"
    assert phantom.hu.shape == phantom.spec.shape


def _tissue_medians(hu: np.ndarray) -> dict[str, float]:
    """Median HU of lung, fat, soft tissue and bone by thresholds and morphology."""
    body = hu > -500
    labels, count = ndimage.label(body)
    sizes = ndimage.sum(body, labels, range(1, count + 1))
    body = np.stack([ndimage.binary_fill_holes(s) for s in labels == 1 + int(np.argmax(sizes))])
    lung = ndimage.binary_opening(body & (hu < -400) & (hu > -1500), iterations=1)
    rest = body & ~ndimage.binary_dilation(lung, iterations=1)
    classes = {
        "lung": ndimage.binary_erosion(lung, iterations=1),
        "fat": rest & (hu >= -190) & (hu < -30),
        "soft tissue": rest & (hu >= 0) & (hu < 100),
        "bone": rest & (hu >= 200),
    }
    return {name: float(np.median(hu[mask])) for name, mask in classes.items()}


def test_hu_statistics_match_real_chest_ct(shared_data: Path) -> None:
    """The calibration of docs/phantom.md: same grid, same tissue classification."""
    import pydicom

    slices = [pydicom.dcmread(p) for p in sorted(
        (shared_data / "ct" / "lung-pet-ct-dx-a0002").glob("*.dcm"))]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    real = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)
                     for d in slices]).astype(np.float32)
    spacing = float(slices[0].PixelSpacing[0])
    thickness = abs(float(slices[1].ImagePositionPatient[2])
                    - float(slices[0].ImagePositionPatient[2]))
    spec = sample_spec(500, "normal")
    spec = dataclasses.replace(spec, matrix=real.shape[1], pixel_spacing=spacing,
                               slice_thickness=thickness, n_slices=real.shape[0],
                               scan_center_z=spec.lung_height * 0.55, distractor=None)
    phantom = _tissue_medians(generate_phantom(spec).hu.astype(np.float32))
    reference = _tissue_medians(real)
    assert abs(phantom["fat"] - reference["fat"]) <= 15.0
    assert abs(phantom["soft tissue"] - reference["soft tissue"]) <= 15.0
    assert abs(phantom["lung"] - reference["lung"]) <= 60.0
    assert abs(phantom["bone"] - reference["bone"]) <= 60.0
