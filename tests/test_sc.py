"""The "AI summary" Secondary Capture series: rendering, DICOM encoding, Orthanc round trip.

Rendering is checked on numpy arrays (no DICOM): the outline colour lies
exactly on the lesion boundary (computed here with scipy, independently of
the renderer), the legend and research-use text are burned in, the key
images are the slices with the most lesion, the summary page's numbers come
from the result. The encoded series is checked with ``dciodvfy`` and sent
with DCMTK ``storescu`` to a real Orthanc (with the GSPS of
``tests/test_gsps.py``), read back over REST: same SOP Instance UIDs, same
pixel data.
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from inference.result import LungInvolvement
from pacs_node.results.capture import (
    SC_SERIES_DESCRIPTION,
    build_secondary_captures,
    patient_orientation,
)
from pacs_node.results.drawing import LUNG_WINDOW, RESEARCH_TEXT, window
from pacs_node.results.gsps import build_presentation_state
from pacs_node.results.sc import (
    LESION_COLOR,
    OUTLINE_THICKNESS,
    PAGE_SHAPE,
    render_key_image,
    render_summary,
    select_key_slices,
    summary_lines,
)
from tests.peers import Orthanc, dciodvfy_errors, run_dcmtk
from tests.results_fixtures import (
    CT_SERIES,
    UID_ROOT,
    hu_volume,
    load_series,
    make_manifest,
    make_result,
)

YELLOW = (255, 220, 0)


@pytest.fixture(scope="module")
def datasets(shared_data: Path) -> list[pydicom.Dataset]:
    return load_series(shared_data / CT_SERIES)


@pytest.fixture(scope="module")
def headers(datasets: list[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The same series without Pixel Data (what the node encodes from)."""
    copies = [copy.deepcopy(ds) for ds in datasets]
    for ds in copies:
        del ds.PixelData
    return copies


@pytest.fixture(scope="module")
def hu(datasets: list[pydicom.Dataset]) -> np.ndarray:
    return hu_volume(datasets)


def boundary(mask: np.ndarray, thickness: int = OUTLINE_THICKNESS) -> np.ndarray:
    """Pixels of ``mask`` within ``thickness`` pixels of its edge (scipy, 4-connectivity)."""
    inner = ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
    return mask & ~inner


def disk(shape: tuple[int, int], center: tuple[int, int], radius: float) -> np.ndarray:
    rows, columns = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (columns - center[1]) ** 2 <= radius**2


def colour_mask(pixels: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.asarray(colour, dtype=np.uint8), axis=-1)


# -- rendering ---------------------------------------------------------------


def test_outline_colour_lies_exactly_on_the_lesion_boundary() -> None:
    rng = np.random.default_rng(4)
    hu_slice = rng.normal(-700, 200, (256, 256)).astype(np.float32)
    lesion = disk((256, 256), (130, 100), 30) | disk((256, 256), (150, 170), 12)
    pixels = render_key_image(hu_slice, lesion, caption="slice 1", model_label="m 1")
    assert pixels.shape == (256, 256, 3) and pixels.dtype == np.uint8
    expected = boundary(lesion)
    assert expected.sum() > 200
    # Away from the burned-in text boxes (top and bottom bands), the lesion
    # colour is on the boundary pixels and nowhere else; other pixels are the
    # lung-window grey of the slice.
    band = slice(60, 220)
    assert np.array_equal(colour_mask(pixels, LESION_COLOR)[band], expected[band])
    grey = window(hu_slice, *LUNG_WINDOW)
    untouched = ~expected
    untouched[:60] = untouched[220:] = False
    for channel in range(3):
        assert np.array_equal(pixels[..., channel][untouched], grey[untouched])


def test_legend_and_research_text_are_burned_in() -> None:
    hu_slice = np.full((512, 512), -1000.0, dtype=np.float32)  # black in the lung window
    lesion = disk((512, 512), (256, 256), 40)
    pixels = render_key_image(hu_slice, lesion, caption="Image 7", model_label="model 2.0")
    top_left = pixels[:70, :260]
    # The legend: the lesion colour swatch and white/grey text on its box.
    assert colour_mask(top_left, LESION_COLOR).sum() >= 100
    assert (top_left.min(axis=-1) > 150).sum() > 200
    # The research-use line in yellow at the bottom, nothing yellow elsewhere.
    near_yellow = np.all(np.abs(pixels.astype(int) - YELLOW) <= 40, axis=-1)
    assert near_yellow[-40:].sum() > 150
    assert near_yellow[:-40].sum() == 0
    # The window at the top right.
    assert (pixels[:40, -140:].min(axis=-1) > 100).sum() > 50


def test_key_slices_are_the_slices_with_the_most_lesion() -> None:
    rng = np.random.default_rng(1)
    mask = np.zeros((40, 32, 32), dtype=bool)
    counts = rng.permutation(40) * 5
    for k, count in enumerate(counts):
        mask[k].flat[:count] = True
    top = np.argsort(-counts, kind="stable")
    chosen = select_key_slices(mask, 3, slice_spacing_mm=1.0, min_separation_mm=0.0)
    assert [k for k, _ in chosen] == [int(k) for k in top[:3]]
    assert [n for _, n in chosen] == [int(counts[k]) for k in top[:3]]
    # 10 mm apart on a 2.5 mm grid: greedy, skipping slices closer than 4.
    spaced = select_key_slices(mask, 3, slice_spacing_mm=2.5, min_separation_mm=10.0)
    expected: list[int] = []
    for k in top:
        if counts[k] and all(abs(int(k) - other) >= 4 for other in expected):
            expected.append(int(k))
        if len(expected) == 3:
            break
    assert [k for k, _ in spaced] == expected
    assert select_key_slices(np.zeros((5, 4, 4), dtype=bool)) == ()


def test_render_summary_key_images_show_their_slices(datasets, hu) -> None:
    result = make_result(datasets)
    rendering = render_summary(hu, result, make_manifest())
    counts = result.lesion_mask.sum(axis=(1, 2))
    assert 1 <= len(rendering.key_images) <= 3
    first = rendering.key_images[0]
    assert first.slice_index == int(np.argmax(counts)) and first.lesion_pixels == counts.max()
    assert [key.lesion_pixels for key in rendering.key_images] == sorted(
        (key.lesion_pixels for key in rendering.key_images), reverse=True
    )
    for key in rendering.key_images:
        expected = boundary(result.lesion_mask[key.slice_index])
        band = slice(80, 460)
        assert np.array_equal(colour_mask(key.pixels, LESION_COLOR)[band], expected[band])
        grey = window(hu[key.slice_index], *LUNG_WINDOW)
        # Rows 200..300 hold no text box: the rest is the slice itself.
        rows = slice(200, 300)
        keep = ~expected[rows]
        assert np.array_equal(key.pixels[rows][..., 1][keep], grey[rows][keep])
    assert rendering.summary_page.shape == (*PAGE_SHAPE, 3)
    none = render_summary(hu, make_result(datasets, lesions=False), make_manifest())
    assert none.key_images == ()
    assert none.summary_page.shape == (*PAGE_SHAPE, 3)


def test_summary_numbers_come_from_the_result(datasets, hu) -> None:
    result = make_result(datasets)
    zones = tuple(
        LungInvolvement(f"{side}_{zone}", 100.0, value, value)
        for side, values in (("right", (11.25, 22.5, 33.75)), ("left", (4.0, 5.5, 6.75)))
        for zone, value in zip(("upper", "middle", "lower"), values)
    )
    analysis = dataclasses.replace(
        result.analysis, involvement=result.analysis.involvement + zones
    )
    result = dataclasses.replace(result, analysis=analysis)
    lines = summary_lines(result, make_manifest())
    text = "\n".join(lines)
    assert "Model: DeepSC-Node phantom model 1.0.0" in text
    assert "Result: COVID-19 pattern (p = 0.70)" in text
    assert "COVID-19 pattern: 70.0 %" in text
    assert "Community-acquired pneumonia pattern: 20.0 %" in text
    assert "No pneumonia: 10.0 %" in text
    assert f"Lesions: 2, total volume {analysis.total_lesion_volume_ml:.1f} mL" in text
    assert f"both lungs {analysis.region('total').percent:.1f} %" in text
    assert (f"Right lung {analysis.region('right').percent:.1f} % "
            "(upper 11.2 %, middle 22.5 %, lower 33.8 %)") in text
    assert "(upper 4.0 %, middle 5.5 %, lower 6.8 %)" in text
    assert "Research use only, not for diagnosis." in text
    # Other probabilities change the rendered text, not the overview.
    page = render_summary(hu, result, make_manifest()).summary_page
    other = dataclasses.replace(result, class_probabilities=(0.1, 0.2, 0.7))
    other_page = render_summary(hu, other, make_manifest()).summary_page
    differs = np.any(page != other_page, axis=-1)
    assert differs[:, : PAGE_SHAPE[1] // 2].sum() > 100
    assert differs[:, PAGE_SHAPE[1] // 2:].sum() == 0
    # The overview shows the lesions in their colour; the research line is burned in.
    assert colour_mask(page[:, PAGE_SHAPE[1] // 2:], LESION_COLOR).sum() > 100
    near_yellow = np.all(np.abs(page.astype(int) - YELLOW) <= 40, axis=-1)
    assert near_yellow[:40].sum() > 100 and near_yellow[-40:].sum() > 100
    assert RESEARCH_TEXT == "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"


def test_patient_orientation_letters() -> None:
    assert patient_orientation((1, 0, 0)) == "L"
    assert patient_orientation((-0.9, 0.1, 0)) == "R"
    assert patient_orientation((0, 1, 0)) == "P"
    assert patient_orientation((0, 0.2, -0.98)) == "F"


# -- DICOM -------------------------------------------------------------------


def test_sc_series_is_valid_and_keeps_the_source_geometry(
    datasets, headers, hu, tmp_path: Path
) -> None:
    result = make_result(datasets)
    rendering = render_summary(hu, result, make_manifest())
    images = build_secondary_captures(headers, rendering, result, uid_root=UID_ROOT)
    assert len(images) == len(rendering.key_images) + 1
    assert [int(im.InstanceNumber) for im in images] == list(range(1, len(images) + 1))
    assert len({str(im.SeriesInstanceUID) for im in images}) == 1
    for index, image in enumerate(images):
        path = tmp_path / f"sc-{index}.dcm"
        image.save_as(path, enforce_file_format=True)
        assert dciodvfy_errors(path) == []
        back = pydicom.dcmread(path)
        assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert back.StudyInstanceUID == datasets[0].StudyInstanceUID
        assert back.PatientID == datasets[0].PatientID
        assert str(back.SeriesNumber) == "9003"
        assert back.SeriesDescription == SC_SERIES_DESCRIPTION
        assert back.PhotometricInterpretation == "RGB" and back.SamplesPerPixel == 3
        assert back.BurnedInAnnotation == "NO"
        assert str(back.SOPInstanceUID).startswith(UID_ROOT)
    for key, image in zip(rendering.key_images, images):
        source = datasets[key.slice_index]
        assert np.array_equal(image.pixel_array, key.pixels)
        reference = image.SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == source.SOPClassUID
        assert [float(v) for v in image.PixelSpacing] == pytest.approx(
            [float(v) for v in source.PixelSpacing]
        )
        assert [float(v) for v in image.ImagePositionPatient] == pytest.approx(
            [float(v) for v in source.ImagePositionPatient]
        )
        assert image.FrameOfReferenceUID == source.FrameOfReferenceUID
        assert list(image.PatientOrientation) == ["L", "P"]
        assert (int(image.Rows), int(image.Columns)) == (int(source.Rows), int(source.Columns))
    page = images[-1]
    assert np.array_equal(page.pixel_array, rendering.summary_page)
    assert "SourceImageSequence" not in page
    assert "ImagePositionPatient" not in page


def test_no_lesion_gives_only_the_summary_page(datasets, headers, hu, tmp_path: Path) -> None:
    result = make_result(datasets, lesions=False)
    rendering = render_summary(hu, result, make_manifest())
    (page,) = build_secondary_captures(headers, rendering, result, uid_root=UID_ROOT,
                                       series_number=42)
    page.save_as(tmp_path / "page.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "page.dcm") == []
    assert int(page.InstanceNumber) == 1 and int(page.SeriesNumber) == 42


def test_sc_refuses_datasets_in_the_wrong_order(datasets, headers, hu) -> None:
    result = make_result(datasets)
    rendering = render_summary(hu, result, make_manifest())
    with pytest.raises(ValueError, match="slice order"):
        build_secondary_captures(headers[::-1], rendering, result, uid_root=UID_ROOT)


# -- Orthanc round trip --------------------------------------------------------


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc"), aet="ORTHANC")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_sc_and_gsps_round_trip_through_orthanc(
    datasets, headers, hu, orthanc: Orthanc, tmp_path: Path
) -> None:
    result = make_result(datasets)
    rendering = render_summary(hu, result, make_manifest())
    objects = [
        *build_secondary_captures(headers, rendering, result, uid_root=UID_ROOT),
        build_presentation_state(headers, result, uid_root=UID_ROOT),
    ]
    paths = []
    for index, dataset in enumerate(objects):
        path = tmp_path / f"obj-{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    sent = run_dcmtk(["storescu", "-aet", "DEEPSC", "-aec", "ORTHANC", "127.0.0.1",
                      str(orthanc.dicom_port), *map(str, paths)])
    assert sent.returncode == 0, sent.stderr
    for dataset, path in zip(objects, paths):
        found = orthanc.post("/tools/find", {
            "Level": "Instance", "Query": {"SOPInstanceUID": str(dataset.SOPInstanceUID)},
        })
        assert len(found) == 1, dataset.SOPInstanceUID
        back = pydicom.dcmread(pydicom.filebase.DicomBytesIO(orthanc.instance_file(found[0])))
        assert back.SOPInstanceUID == dataset.SOPInstanceUID
        assert back.SOPClassUID == dataset.SOPClassUID
        assert back.StudyInstanceUID == datasets[0].StudyInstanceUID
        if "PixelData" in dataset:
            assert back.PixelData == dataset.PixelData
            assert np.array_equal(back.pixel_array, dataset.pixel_array)
        else:
            sent_file = pydicom.dcmread(path)
            assert back.GraphicAnnotationSequence == sent_file.GraphicAnnotationSequence
            assert back.SoftcopyVOILUTSequence == sent_file.SoftcopyVOILUTSequence
    modalities = orthanc.series_modalities(str(datasets[0].StudyInstanceUID))
    assert {"OT", "PR"} <= set(modalities)
    (sc_series,) = modalities["OT"]
    assert sc_series["MainDicomTags"]["SeriesDescription"] == SC_SERIES_DESCRIPTION
    assert len(sc_series["Instances"]) == len(objects) - 1
