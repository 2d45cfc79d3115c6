"""Lesion outlines as closed polylines, and the GSPS that carries them.

The outlines are checked by filling them back (even-odd rule on pixel
centres, written here) and comparing with the mask; the presentation state
is built from header-only datasets (as in the node, whose source pixels are
released), validated with ``dciodvfy`` and DCMTK ``dcmpschk``, and read back: one annotation per
slice with lesion, its polylines the slice's outlines, the lung window, the
research-use text. Its round trip through Orthanc is in ``tests/test_sc.py``.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from pacs_node.results.contours import mask_outlines, polygon_area
from pacs_node.results.gsps import (
    GRAPHIC_LAYER,
    GSPS_SERIES_DESCRIPTION,
    GSPS_TEXT,
    build_presentation_state,
)
from tests.peers import dciodvfy_errors, run_dcmtk
from tests.results_fixtures import CT_SERIES, UID_ROOT, load_series, make_result


def fill(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Pixels whose centre is inside the outlines (even-odd rule, horizontal rays)."""
    rows, columns = shape
    centres_x = np.arange(columns) + 0.5
    inside = np.zeros(shape, dtype=bool)
    for outline in outlines:
        for (x0, y0), (x1, y1) in zip(outline[:-1], outline[1:]):
            if x0 != x1:
                assert y0 == y1, "edges follow the pixel grid"
                continue
            low, high = sorted((y0, y1))
            for row in range(int(low), int(high)):
                inside[row] ^= centres_x < x0
    return inside


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_outlines_fill_back_to_the_mask(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mask = rng.random((24, 30)) < 0.45
    mask[:, :2] = False
    outlines = mask_outlines(mask)
    assert outlines
    for outline in outlines:
        assert outline.shape[1] == 2 and np.array_equal(outline[0], outline[-1])
        assert np.array_equal(outline, np.round(outline))  # pixel corners
        assert outline[:, 0].min() >= 0 and outline[:, 0].max() <= 30
        assert outline[:, 1].min() >= 0 and outline[:, 1].max() <= 24
    assert np.array_equal(fill(outlines, mask.shape), mask)
    assert sum(polygon_area(o) for o in outlines) == pytest.approx(mask.sum())


def test_outline_of_a_rectangle_is_its_four_corners() -> None:
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:7] = True
    (outline,) = mask_outlines(mask)
    assert outline.tolist() == [[3, 2], [7, 2], [7, 5], [3, 5], [3, 2]]
    assert mask_outlines(np.zeros((4, 4), dtype=bool)) == []


@pytest.fixture(scope="module")
def datasets(shared_data: Path) -> list[pydicom.Dataset]:
    return load_series(shared_data / CT_SERIES)


@pytest.fixture(scope="module")
def headers(shared_data: Path, datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The series read with ``stop_before_pixels``, in the same order."""
    by_uid = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                   for p in (shared_data / CT_SERIES).glob("*.dcm"))
    }
    return [by_uid[str(ds.SOPInstanceUID)] for ds in datasets]


def test_gsps_from_headers_is_valid_and_holds_the_outlines(
    datasets, headers, tmp_path: Path
) -> None:
    result = make_result(datasets)
    state = build_presentation_state(headers, result, uid_root=UID_ROOT)
    path = tmp_path / "gsps.dcm"
    state.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    checked = run_dcmtk(["dcmpschk", str(path)])  # DCMTK's presentation state checker
    assert checked.returncode == 0 and "Test passed" in checked.stdout + checked.stderr
    back = pydicom.dcmread(path)
    assert back.Modality == "PR" and back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.11.1"
    assert back.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert str(back.SeriesNumber) == "9004"
    assert back.SeriesDescription == GSPS_SERIES_DESCRIPTION
    referenced = back.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == datasets[0].SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedImageSequence} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    (voi,) = back.SoftcopyVOILUTSequence
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (-600.0, 1500.0)
    assert [layer.GraphicLayer for layer in back.GraphicLayerSequence] == [GRAPHIC_LAYER]
    lesion_slices = [k for k in range(len(datasets)) if result.lesion_mask[k].any()]
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(datasets)}
    annotated = []
    for annotation in back.GraphicAnnotationSequence:
        (image,) = annotation.ReferencedImageSequence
        k = index[str(image.ReferencedSOPInstanceUID)]
        annotated.append(k)
        assert annotation.GraphicLayer == GRAPHIC_LAYER
        (text,) = annotation.TextObjectSequence
        assert text.UnformattedTextValue == GSPS_TEXT and "RESEARCH USE ONLY" in GSPS_TEXT
        outlines = []
        for item in annotation.GraphicObjectSequence:
            assert (item.GraphicType, item.GraphicAnnotationUnits) == ("POLYLINE", "PIXEL")
            points = np.asarray(item.GraphicData, dtype=float).reshape(-1, 2)
            assert int(item.NumberOfGraphicPoints) == len(points)
            assert np.array_equal(points[0], points[-1])  # closed
            outlines.append(points)
        assert np.array_equal(fill(outlines, result.lesion_mask[k].shape),
                              result.lesion_mask[k])
    assert annotated == lesion_slices


def test_gsps_caps_the_annotated_images(datasets, headers) -> None:
    result = make_result(datasets)
    counts = result.lesion_mask.sum(axis=(1, 2))
    state = build_presentation_state(headers, result, uid_root=UID_ROOT, max_annotated_images=2)
    index = {str(ds.SOPInstanceUID): k for k, ds in enumerate(datasets)}
    annotated = sorted(
        index[str(a.ReferencedImageSequence[0].ReferencedSOPInstanceUID)]
        for a in state.GraphicAnnotationSequence
    )
    assert len(annotated) == 2
    assert min(counts[annotated]) >= sorted(counts)[-2]


def test_gsps_without_lesion_has_the_window_and_no_annotation(
    datasets, headers, tmp_path: Path
) -> None:
    state = build_presentation_state(headers, make_result(datasets, lesions=False),
                                     uid_root=UID_ROOT)
    state.save_as(tmp_path / "empty.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "empty.dcm") == []
    assert "GraphicAnnotationSequence" not in state
    assert float(state.SoftcopyVOILUTSequence[0].WindowWidth) == 1500.0


def test_gsps_refuses_a_shuffled_series(datasets, headers) -> None:
    shuffled = copy.copy(headers)
    shuffled[0], shuffled[1] = shuffled[1], shuffled[0]
    with pytest.raises(ValueError, match="slice order"):
        build_presentation_state(shuffled, make_result(datasets), uid_root=UID_ROOT)
