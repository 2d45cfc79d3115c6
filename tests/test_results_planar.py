"""Planar (TID 1410) lesion groups: the geometry on shapes with known answers,
and the groups in the SR checked against an independent scipy computation.
"""
from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from inference.result import InferenceResult
from pacs_node.results import (
    build_measurement_report,
    build_outline_report,
    codes,
    encode_results,
    read_report_measurements,
)
from pacs_node.results.outline_sr import OHIF_PLANAR_FREEHAND_TRACKING_PREFIX
from pacs_node.results.planar import (
    largest_region,
    largest_slice,
    longest_diameter,
    planar_outline,
    polygon_area,
    trace_outline,
)
from pacs_node.results.sr import MIN_PLANAR_VOLUME_ML
from tests.peers import dciodvfy_errors
from tests.results_fixtures import (
    CT_SERIES,
    UID_ROOT,
    analyse,
    load_series,
    lung_boxes,
    make_manifest,
    phantom_case,
)


# --- geometry on known shapes --------------------------------------------------
def _disc(radius: float, size: int = 101) -> np.ndarray:
    centre = size // 2
    rows, columns = np.mgrid[:size, :size]
    return (rows - centre) ** 2 + (columns - centre) ** 2 <= radius**2


@pytest.mark.parametrize("radius", [5.0, 12.0, 40.0])
def test_disc_area_and_diameter(radius):
    spacing = (0.7, 0.7)
    outline = planar_outline(_disc(radius)[None], spacing)
    pixel_mm = spacing[0]
    # The outline runs along pixel edges: its area is the pixel count exactly,
    # and the pixel count approximates pi r^2 within the boundary pixels.
    assert outline.area_mm2 == pytest.approx(outline.pixel_count * pixel_mm**2)
    perimeter_pixels = 2 * math.pi * radius
    error = abs(outline.area_mm2 - math.pi * (radius * pixel_mm) ** 2)
    assert error <= perimeter_pixels * pixel_mm**2
    # Pixel centres span 2r; the pixel edges add at most one pixel diagonal.
    diameter = outline.longest_diameter_mm
    assert 2 * radius * pixel_mm <= diameter <= (2 * radius + math.sqrt(2)) * pixel_mm
    assert np.array_equal(outline.points[0], outline.points[-1])


def test_rectangle_area_and_diagonal_with_anisotropic_pixels():
    mask = np.zeros((3, 30, 40), dtype=bool)
    mask[1, 5:17, 8:33] = True  # 12 rows x 25 columns
    mask[2, 6:8, 10:12] = True
    spacing = (0.5, 0.8)  # row spacing, column spacing
    outline = planar_outline(mask, spacing)
    assert outline.slice_index == 1
    assert outline.pixel_count == 12 * 25
    assert outline.area_mm2 == pytest.approx(12 * 0.5 * 25 * 0.8)
    assert outline.longest_diameter_mm == pytest.approx(math.hypot(12 * 0.5, 25 * 0.8))
    # Four corners, clockwise on screen from the top left, closed.
    assert outline.points.tolist() == [[8, 5], [33, 5], [33, 17], [8, 17], [8, 5]]
    assert sorted(map(tuple, outline.diameter_endpoints.tolist())) in (
        [(8.0, 5.0), (33.0, 17.0)], [(8.0, 17.0), (33.0, 5.0)]
    )


def test_l_shape_polygon_area():
    region = np.zeros((10, 10), dtype=bool)
    region[1:8, 1:4] = True
    region[5:8, 4:9] = True
    points = trace_outline(region)
    assert len(points) == 7  # six corners, closed
    assert polygon_area(points, (1.0, 1.0)) == region.sum()
    assert polygon_area(points[::-1], (2.0, 3.0)) == region.sum() * 6.0


def test_largest_slice_and_region():
    mask = np.zeros((4, 20, 20), dtype=bool)
    mask[0, 2:6, 2:6] = True  # 16
    mask[2, 1:4, 1:4] = True  # 9 ...
    mask[2, 10:15, 10:15] = True  # ... + 25 = 34: the largest slice
    mask[2, 12, 12] = False  # a hole in the larger part
    assert largest_slice(mask) == 2
    region = largest_region(mask[2])
    assert region.sum() == 25 and region[12, 12] and not region[2, 2]
    # Touching only at a corner is not 4-connected.
    diagonal = np.zeros((6, 6), dtype=bool)
    diagonal[1:3, 1:3] = True
    diagonal[3:5, 3:5] = True
    assert ndimage.label(diagonal, structure=np.ones((3, 3)))[1] == 1
    assert largest_region(diagonal).sum() == 4


def test_trace_outline_refuses_holes_and_two_regions():
    ring = np.ones((5, 5), dtype=bool)
    ring[2, 2] = False
    with pytest.raises(ValueError, match="region"):
        trace_outline(ring)
    two = np.zeros((5, 9), dtype=bool)
    two[1:3, 1:3] = two[1:3, 5:8] = True
    with pytest.raises(ValueError, match="region"):
        trace_outline(two)
    with pytest.raises(ValueError, match="mask"):
        planar_outline(np.zeros((2, 3, 3), dtype=bool), (1.0, 1.0))
    with pytest.raises(ValueError, match="pixel_spacing"):
        planar_outline(np.ones((1, 3, 3), dtype=bool), (0.0, 1.0))


def test_longest_diameter_of_collinear_points():
    distance, ends = longest_diameter(np.array([[0, 0], [1, 0], [4, 0], [2, 0]]), (1.0, 2.0))
    assert distance == 8.0
    assert sorted(ends[:, 0].tolist()) == [0.0, 4.0]


# --- the planar groups of the SR ------------------------------------------------
def _inside(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre lies inside a closed polygon (even-odd rule)."""
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    x, y = columns + 0.5, rows + 0.5
    inside = np.zeros(shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _expected(result: InferenceResult, lesion) -> tuple[int, np.ndarray]:
    """Largest slice and outlined region of one lesion, computed here with scipy."""
    labels, _ = ndimage.label(result.lesion_mask, structure=np.ones((3, 3, 3), dtype=bool))
    k0, k1, i0, i1, j0, j1 = lesion.bbox
    boxes = ndimage.find_objects(labels)
    number = next(
        n + 1 for n, box in enumerate(boxes)
        if box == (slice(k0, k1), slice(i0, i1), slice(j0, j1))
        and np.count_nonzero(labels[box] == n + 1) == lesion.voxel_count
    )
    component = labels == number
    k = int(np.argmax(component.sum(axis=(1, 2))))
    parts, count = ndimage.label(component[k])
    sizes = [np.count_nonzero(parts == n) for n in range(1, count + 1)]
    region = ndimage.binary_fill_holes(parts == int(np.argmax(sizes)) + 1)
    return k, region


def _max_corner_distance(region: np.ndarray, spacing: tuple[float, float]) -> float:
    edge = region & ~ndimage.binary_erosion(region)
    i, j = np.nonzero(edge)
    corners = np.concatenate([np.stack([j + dx, i + dy], axis=1)
                              for dx in (0, 1) for dy in (0, 1)]).astype(float)
    corners *= np.array([spacing[1], spacing[0]])
    diff = corners[:, None, :] - corners[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    datasets, result = phantom_case(folder / "ct")
    objects = encode_results(datasets, result, make_manifest(), uid_root=UID_ROOT)
    objects.sr.save_as(folder / "sr.dcm")
    objects.seg.save_as(folder / "seg.dcm")
    return datasets, result, folder / "sr.dcm"


def test_phantom_sr_is_valid(phantom):
    assert dciodvfy_errors(phantom[2]) == []


def test_planar_groups_match_an_independent_computation(phantom):
    datasets, result, sr_path = phantom
    report = read_report_measurements(pydicom.dcmread(sr_path))
    significant = [x for x in result.analysis.lesions if x.volume_ml >= MIN_PLANAR_VOLUME_ML]
    assert 2 <= len(significant) < len(result.analysis.lesions)  # the threshold matters here
    planar = report["planar"]
    assert [p["tracking_id"] for p in planar] == [f"Lesion {x.index}" for x in significant]
    spacing = (result.geometry.spacing[1], result.geometry.spacing[2])
    by_id = {x["tracking_id"]: x for x in report["lesions"]}
    for group, lesion in zip(planar, significant):
        k, region = _expected(result, lesion)
        assert group["referenced_sop_instance_uid"] == datasets[k].SOPInstanceUID
        assert group["graphic_type"] == "POLYLINE"
        points = group["points"]
        assert np.array_equal(points[0], points[-1]) and len(points) not in (4, 5)
        assert np.array_equal(_inside(points, region.shape), region)
        area = region.sum() * spacing[0] * spacing[1]
        assert group["area_mm2"] == pytest.approx(area, abs=0.005)
        assert group["long_axis_mm"] == pytest.approx(_max_corner_distance(region, spacing),
                                                      abs=0.005)
        assert group["finding"]["value"] == "52988006"
        assert (group["side"], group["zone"]) == (lesion.side, lesion.zone)
        # The same finding as the lesion's TID 1501 group: same tracking UID.
        assert by_id[group["tracking_id"]]["tracking_uid"] == group["tracking_uid"]


def test_planar_groups_come_first(phantom):
    """OHIF's SR viewport opens on the first measurement group."""
    sr = pydicom.dcmread(phantom[2])
    container = next(item for item in sr.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    templates = [group.ContentTemplateSequence[0].TemplateIdentifier
                 for group in container.ContentSequence]
    planar = templates.count("1410")
    assert planar >= 2 and templates[:planar] == ["1410"] * planar


@pytest.fixture(scope="module")
def real_ct(shared_data: Path):
    return load_series(shared_data / CT_SERIES)


def _cuboid_result(datasets) -> InferenceResult:
    from tests.results_fixtures import geometry_of, hu_volume

    geometry = geometry_of(datasets)
    n, rows, columns = geometry.shape
    lesion_mask = np.zeros(geometry.shape, dtype=bool)
    k, i, j = n // 2, rows // 2, columns // 4
    lesion_mask[k - 2: k + 2, i: i + 20, j: j + 30] = True
    lung_mask = lung_boxes(geometry.shape)
    manifest = make_manifest()
    return InferenceResult(
        geometry=geometry, lesion_mask=lesion_mask, lung_mask=lung_mask,
        class_keys=manifest.class_keys, class_probabilities=(0.7, 0.2, 0.1),
        analysis=analyse(lesion_mask, lung_mask, hu_volume(datasets), geometry),
        model_name=manifest.model_name, model_version=manifest.model_version,
    )


def test_rectangular_outline_is_not_an_ohif_rectangle(real_ct, tmp_path):
    result = _cuboid_result(real_ct)
    objects = encode_results(real_ct, result, make_manifest(), uid_root=UID_ROOT)
    objects.sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    (group,) = read_report_measurements(pydicom.dcmread(tmp_path / "sr.dcm"))["planar"]
    points = group["points"]
    assert len(points) == 6  # four corners, a midpoint on the first edge, closed
    spacing = [float(v) for v in real_ct[0].PixelSpacing]
    assert group["area_mm2"] == pytest.approx(20 * 30 * spacing[0] * spacing[1], abs=0.005)
    assert polygon_area(points, spacing) == pytest.approx(group["area_mm2"], abs=0.005)


def test_planar_group_limits(phantom):
    datasets, result, _ = phantom
    manifest = make_manifest()
    report = read_report_measurements(encode_results(
        datasets, result, manifest, uid_root=UID_ROOT, max_planar_groups=2).sr)
    assert [p["tracking_id"] for p in report["planar"]] == ["Lesion 1", "Lesion 2"]
    report = read_report_measurements(encode_results(
        datasets, result, manifest, uid_root=UID_ROOT, max_planar_groups=0).sr)
    assert report["planar"] == [] and len(report["lesions"]) == len(result.analysis.lesions)
    largest = result.analysis.lesions[0].volume_ml
    report = read_report_measurements(encode_results(
        datasets, result, manifest, uid_root=UID_ROOT, min_planar_volume_ml=largest + 1).sr)
    assert report["planar"] == []
    with pytest.raises(ValueError, match="max_planar_groups"):
        encode_results(datasets, result, manifest, uid_root=UID_ROOT, max_planar_groups=-1)
    with pytest.raises(ValueError, match="min_planar_volume_ml"):
        encode_results(datasets, result, manifest, uid_root=UID_ROOT, min_planar_volume_ml=-1)


def test_highdicom_reads_the_planar_groups(phantom):
    datasets, result, sr_path = phantom
    sr = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(sr_path))
    groups = sr.content.get_planar_roi_measurement_groups()
    report = read_report_measurements(pydicom.dcmread(sr_path))
    assert [str(g.tracking_identifier) for g in groups] == [
        p["tracking_id"] for p in report["planar"]]
    for group, mine in zip(groups, report["planar"]):
        assert str(group.tracking_uid) == mine["tracking_uid"]
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert np.array_equal(region.value, mine["points"])
        (source,) = region.ContentSequence  # SELECTED FROM the source image
        assert source.referenced_sop_instance_uid == mine["referenced_sop_instance_uid"]
        area = group.get_measurements(name=codes.AREA)[0]
        assert area.value == pytest.approx(mine["area_mm2"])
        assert area.unit == codes.SQUARE_MILLIMETER


def test_outline_report_holds_only_the_same_planar_groups(phantom, tmp_path):
    datasets, result, sr_path = phantom
    manifest = make_manifest()
    seg = pydicom.dcmread(sr_path.parent / "seg.dcm")
    full = build_measurement_report(datasets, seg, result, manifest, uid_root=UID_ROOT)
    outline = build_outline_report(datasets, seg, result, manifest, uid_root=UID_ROOT)
    outline.save_as(tmp_path / "outline.dcm")
    assert dciodvfy_errors(tmp_path / "outline.dcm") == []
    assert outline.SeriesNumber == 9005
    assert outline.SeriesDescription == "AI lesion measurements (research)"
    assert outline.SeriesInstanceUID != full.SeriesInstanceUID
    container = next(item for item in outline.ContentSequence
                     if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    assert {group.ContentTemplateSequence[0].TemplateIdentifier
            for group in container.ContentSequence} == {"1410"}
    mine = read_report_measurements(pydicom.dcmread(tmp_path / "outline.dcm"))
    theirs = read_report_measurements(full)
    assert mine["lesions"] == [] and mine["segments"] == {} and mine["classification"] is None
    assert len(mine["planar"]) == len(theirs["planar"]) >= 2
    for a, b in zip(mine["planar"], theirs["planar"]):
        # same lesion, same tracking UID (derived from the SEG) in both reports; the
        # outline report's identifier names OHIF's PlanarFreehandROI tool first
        assert b["tracking_id"].startswith("Lesion ")
        assert a["tracking_id"] == f"{OHIF_PLANAR_FREEHAND_TRACKING_PREFIX}{b['tracking_id']}"
        assert a["tracking_uid"] == b["tracking_uid"]
        assert np.array_equal(a["points"], b["points"])
        assert (a["area_mm2"], a["long_axis_mm"]) == (b["area_mm2"], b["long_axis_mm"])
    # The Area NUM (the group's first NUM, where OHIF's adapter reads the outline) is
    # INFERRED FROM a copy of the group's Image Region; the full report has no such copy.
    for group in container.ContentSequence:
        (region,) = [item for item in group.ContentSequence if item.ValueType == "SCOORD"]
        nums = [item for item in group.ContentSequence if item.ValueType == "NUM"]
        assert nums[0].ConceptNameCodeSequence[0].CodeValue == codes.AREA.value
        (inferred,) = nums[0].ContentSequence
        assert inferred.RelationshipType == "INFERRED FROM" and inferred.ValueType == "SCOORD"
        assert list(inferred.GraphicData) == list(region.GraphicData)
        assert inferred.GraphicType == region.GraphicType == "POLYLINE"
        assert (inferred.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                == region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        assert all("ContentSequence" not in num for num in nums[1:])
    full_container = next(item for item in full.ContentSequence
                          if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    assert not [num for group in full_container.ContentSequence
                if group.ContentTemplateSequence[0].TemplateIdentifier == "1410"
                for num in group.ContentSequence
                if num.ValueType == "NUM" and "ContentSequence" in num]
    # ohif_rehydratable=False: exactly the measurement report's planar groups.
    plain = build_outline_report(datasets, seg, result, manifest, uid_root=UID_ROOT,
                                 ohif_rehydratable=False)
    plain.save_as(tmp_path / "plain.dcm")
    assert dciodvfy_errors(tmp_path / "plain.dcm") == []
    plain_planar = read_report_measurements(pydicom.dcmread(tmp_path / "plain.dcm"))["planar"]
    assert [(p["tracking_id"], p["tracking_uid"]) for p in plain_planar] == [
        (p["tracking_id"], p["tracking_uid"]) for p in theirs["planar"]]
    plain_container = next(item for item in plain.ContentSequence
                           if item.ConceptNameCodeSequence[0].CodeValue == "126010")
    assert not [num for group in plain_container.ContentSequence
                for num in group.ContentSequence
                if num.ValueType == "NUM" and "ContentSequence" in num]
    evidence = {item.ReferencedSOPInstanceUID
                for study in outline.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence
                for item in series.ReferencedSOPSequence}
    assert seg.SOPInstanceUID not in evidence
    assert build_outline_report(datasets, seg, result, manifest, uid_root=UID_ROOT,
                                min_planar_volume_ml=1e6) is None
