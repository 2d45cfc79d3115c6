"""Lesion analysis on known masks: components, volumes, HU, sides, zones, involvement."""
from __future__ import annotations

import numpy as np
import pytest

from inference.analysis import analyse_lesions, drop_small_components, label_components
from inference.geometry import Geometry
from inference.result import LesionAnalysis

SHAPE = (30, 40, 60)
SPACING = (2.0, 1.5, 1.25)


def make_geometry(feet_first: bool, flip_x: bool) -> Geometry:
    """Axial grid over x in [-37, 37], y in [-29, 29], z in [-29, 29] mm."""
    extent = [(n - 1) * s for n, s in zip(SHAPE, SPACING)]
    row = (-1.0, 0.0, 0.0) if flip_x else (1.0, 0.0, 0.0)
    normal = np.cross(row, (0.0, 1.0, 0.0))
    slice_direction = -normal if feet_first else normal
    origin = (
        extent[2] / 2 if flip_x else -extent[2] / 2,
        -extent[1] / 2,
        extent[0] / 2 * (1 if slice_direction[2] < 0 else -1),
    )
    return Geometry(
        shape=SHAPE,
        spacing=SPACING,
        origin=origin,
        row_direction=row,
        column_direction=(0.0, 1.0, 0.0),
        slice_direction=tuple(slice_direction),
    )


def patient_points(geometry: Geometry) -> np.ndarray:
    k, i, j = np.meshgrid(*[np.arange(n) for n in geometry.shape], indexing="ij")
    points = geometry.index_to_patient(np.stack([k.ravel(), i.ravel(), j.ravel()], axis=1))
    return points.reshape(*geometry.shape, 3)


def scene(geometry: Geometry) -> dict[str, np.ndarray]:
    """Two lungs and two lesions defined in patient space (LPS mm)."""
    p = patient_points(geometry)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    in_z = (z >= -24) & (z <= 24)
    right = in_z & (x >= -34) & (x <= -6) & (np.abs(y) <= 20)  # patient right: -x
    left = in_z & (x >= 6) & (x <= 34) & (np.abs(y) <= 20)
    lung = np.zeros(geometry.shape, dtype=np.uint8)
    lung[right] = 1
    lung[left] = 2
    # Lesion A: right lung, upper zone (z 14..22); lesion B: left lung, lower zone.
    lesion_a = ((x + 20) ** 2 + y**2 + (z - 18) ** 2) <= 5.0**2
    lesion_b = ((x - 20) ** 2 + (y - 4) ** 2 + (z + 16) ** 2) <= 6.5**2
    rng = np.random.default_rng(5)
    hu = rng.integers(-900, 100, size=geometry.shape).astype(np.int16)
    return {"lung": lung, "a": lesion_a, "b": lesion_b, "hu": hu, "z": z}


@pytest.mark.parametrize("feet_first", [False, True])
@pytest.mark.parametrize("flip_x", [False, True])
def test_two_lesions_in_different_lungs_and_zones(feet_first: bool, flip_x: bool) -> None:
    geometry = make_geometry(feet_first, flip_x)
    s = scene(geometry)
    lesion_mask = s["a"] | s["b"]
    analysis = analyse_lesions(lesion_mask, s["lung"], s["hu"], geometry)
    assert isinstance(analysis, LesionAnalysis)
    assert len(analysis.lesions) == 2
    big, small = analysis.lesions
    assert (big.index, small.index) == (1, 2)
    # B (radius 6.5) is bigger than A (radius 5).
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    assert big.voxel_count == int(s["b"].sum()) and small.voxel_count == int(s["a"].sum())
    assert big.volume_ml == pytest.approx(s["b"].sum() * voxel_ml, rel=1e-12)
    assert small.volume_ml == pytest.approx(s["a"].sum() * voxel_ml, rel=1e-12)
    for lesion, sphere in ((big, s["b"]), (small, s["a"])):
        expected_hu = float(s["hu"][sphere].astype(np.float64).mean())
        assert lesion.mean_hu == pytest.approx(expected_hu, abs=1e-9)
    assert (big.side, big.zone) == ("left", "lower")
    assert (small.side, small.zone) == ("right", "upper")
    assert big.centroid_mm == pytest.approx((20.0, 4.0, -16.0), abs=0.3)
    assert small.centroid_mm == pytest.approx((-20.0, 0.0, 18.0), abs=0.3)
    # Bounding boxes enclose exactly the component.
    k0, k1, i0, i1, j0, j1 = small.bbox
    assert s["a"][k0:k1, i0:i1, j0:j1].sum() == s["a"].sum()
    assert s["a"][k0:k1].any(axis=(1, 2)).all() and s["a"][:, i0:i1].any(axis=(0, 2)).all()
    assert analysis.total_lesion_volume_ml == pytest.approx(lesion_mask.sum() * voxel_ml)


def oblique_geometry() -> Geometry:
    """Slices tilted 20 degrees about x: patient z changes along the rows too."""
    angle = np.radians(20.0)
    column = (0.0, float(np.cos(angle)), float(np.sin(angle)))
    row = (1.0, 0.0, 0.0)
    base = Geometry(shape=SHAPE, spacing=SPACING, origin=(0.0, 0.0, 0.0),
                    row_direction=row, column_direction=column)
    centre = base.center
    return Geometry(shape=SHAPE, spacing=SPACING, origin=tuple(-centre),
                    row_direction=row, column_direction=column)


@pytest.mark.parametrize("kind", ["head_first", "feet_first", "oblique"])
def test_involvement_by_region(kind: str) -> None:
    geometry = oblique_geometry() if kind == "oblique" else make_geometry(
        kind == "feet_first", flip_x=False)
    s = scene(geometry)
    lesion_mask = s["a"] | s["b"]
    analysis = analyse_lesions(lesion_mask, s["lung"], s["hu"], geometry)
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    names = [item.region for item in analysis.involvement]
    assert names == [
        "total", "left", "right",
        "left_upper", "left_middle", "left_lower",
        "right_upper", "right_middle", "right_lower",
    ]
    for side, label in (("right", 1), ("left", 2)):
        lung = s["lung"] == label
        z = s["z"][lung]
        low, high = z.min(), z.max()
        third = (high - low) / 3
        zones = {
            "upper": lung & (s["z"] >= high - third),
            "lower": lung & (s["z"] < low + third),
        }
        zones["middle"] = lung & ~zones["upper"] & ~zones["lower"]
        for zone, region_mask in zones.items():
            item = analysis.region(f"{side}_{zone}")
            assert item.lung_volume_ml == pytest.approx(region_mask.sum() * voxel_ml)
            lesion = (lesion_mask & region_mask).sum()
            assert item.lesion_volume_ml == pytest.approx(lesion * voxel_ml)
            expected = 100.0 * lesion / region_mask.sum()
            assert item.percent == pytest.approx(expected)
        whole = analysis.region(side)
        assert whole.lung_volume_ml == pytest.approx(lung.sum() * voxel_ml)
        assert whole.percent == pytest.approx(100.0 * (lesion_mask & lung).sum() / lung.sum())
    total = analysis.region("total")
    assert total.percent == pytest.approx(100.0 * lesion_mask.sum() / (s["lung"] > 0).sum())
    assert analysis.region("right_upper").percent > 0
    assert analysis.region("right_lower").lesion_volume_ml == 0.0
    assert analysis.region("left_lower").percent > 0
    assert [(lesion.side, lesion.zone) for lesion in analysis.lesions] == [
        ("left", "lower"), ("right", "upper")]
    with pytest.raises(KeyError):
        analysis.region("middle")


def test_lesion_outside_lungs_takes_side_of_its_centroid() -> None:
    geometry = make_geometry(feet_first=False, flip_x=True)
    s = scene(geometry)
    p = patient_points(geometry)
    # Between the lungs, slightly to the patient's left (+x), outside both lungs.
    outside = ((p[..., 0] - 3.0) ** 2 + p[..., 1] ** 2 + p[..., 2] ** 2) <= 2.5**2
    assert not (outside & (s["lung"] > 0)).any()
    analysis = analyse_lesions(outside, s["lung"], s["hu"], geometry)
    assert len(analysis.lesions) == 1
    assert analysis.lesions[0].side == "left"
    assert analysis.lesions[0].zone == "middle"
    # Counted in the total lesion volume, not in any lung's involvement.
    assert analysis.total_lesion_volume_ml == pytest.approx(
        outside.sum() * geometry.voxel_volume_ml)
    assert analysis.region("total").lesion_volume_ml == 0.0


def test_empty_lesion_mask() -> None:
    geometry = make_geometry(False, False)
    s = scene(geometry)
    analysis = analyse_lesions(np.zeros(SHAPE, bool), s["lung"], s["hu"], geometry)
    assert analysis.lesions == ()
    assert analysis.total_lesion_volume_ml == 0.0
    assert analysis.region("total").percent == 0.0
    assert analysis.region("total").lung_volume_ml > 0


def test_components_use_26_connectivity() -> None:
    mask = np.zeros((4, 4, 4), dtype=bool)
    mask[0, 0, 0] = True
    mask[1, 1, 1] = True  # touches the first voxel only at a corner
    mask[3, 3, 3] = True
    components = label_components(mask)
    assert components.count == 2
    assert sorted(components.voxel_count(n) for n in (1, 2)) == [1, 2]


def test_drop_small_components_in_place() -> None:
    geometry = Geometry(shape=(10, 10, 10), spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0))
    mask = np.zeros(geometry.shape, dtype=bool)
    mask[1:4, 1:4, 1:4] = True  # 27 voxels = 0.054 mL
    mask[7, 7, 7] = True  # 0.002 mL
    mask[8, 8, 8] = True  # corner-touching: same component as (7, 7, 7): 0.004 mL
    removed = drop_small_components(mask, geometry, min_volume_ml=0.01)
    assert removed == 1
    assert mask.sum() == 27 and not mask[7, 7, 7] and not mask[8, 8, 8]
    assert drop_small_components(mask, geometry, min_volume_ml=0.0) == 0
    assert drop_small_components(mask, geometry, min_volume_ml=0.06) == 1
    assert not mask.any()
    with pytest.raises(ValueError, match="min_volume_ml"):
        drop_small_components(mask, geometry, min_volume_ml=-1)


def test_argument_checks() -> None:
    geometry = make_geometry(False, False)
    s = scene(geometry)
    with pytest.raises(ValueError, match="lesion_mask"):
        analyse_lesions(np.zeros((2, 2, 2), bool), s["lung"], s["hu"], geometry)
    with pytest.raises(ValueError, match="lung_mask"):
        analyse_lesions(np.zeros(SHAPE, bool), s["lung"].astype(np.int32), s["hu"], geometry)
    with pytest.raises(ValueError, match="lesion_mask"):
        analyse_lesions(np.zeros(SHAPE, np.uint8), s["lung"], s["hu"], geometry)
