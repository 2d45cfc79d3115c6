"""The node's results as a radiologist sees them in OHIF v3, the reference web viewer.

Real processes on loopback, nothing mocked: Orthanc with the Debian
``orthanc-dicomweb`` plugin (the PACS), the node (``python -m pacs_node serve``)
with the bundled model, DCMTK ``storescu`` as the modality, the built OHIF 3.13
(``@ohif/app`` dist) served by :mod:`tests.viewer_server` with a DICOMweb proxy
to Orthanc, and Debian's headless Chromium driven by playwright-core
(``tests/viewer/ohif_check.mjs``). The Node script records what the page shows
(panels, the displayed image, screenshots); this module decides pass or fail,
reading the screenshots' pixels itself. Screenshots are kept in pytest's
``tmp_path`` and copied to ``test-artifacts/viewer/`` at the repository root.
"""
from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image

from config import Destination
from inference.phantom import generate_phantom, sample_spec, write_dicom_series
from pacs_node.results import read_report_measurements
from pacs_node.results.outline_sr import OHIF_PLANAR_FREEHAND_TRACKING_PREFIX
from storage import JobState
from tests.e2e_fixtures import REPO_ROOT, NodeProcess
from tests.peers import Orthanc, dciodvfy_errors, free_port, run_dcmtk
from tests.viewer_server import (
    VIEWER_DIR,
    ViewerServer,
    require_browser_tools,
    require_ohif_dist,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ORTHANC_AE = "ORTHANC"
OHIF_SCRIPT = VIEWER_DIR / "ohif_check.mjs"
ARTIFACTS = REPO_ROOT / "test-artifacts" / "viewer"
RESULT_TIMEOUT = 180.0
BROWSER_TIMEOUT = 180.0
#: Series descriptions the node writes (pacs_node.results): the viewer lists them.
SEG_LABEL = "AI lesions"
SR_LABEL = "AI report"
OUTLINE_LABEL = "AI lesion measurements"


@dataclass(frozen=True)
class ProcessedStudy:
    """A phantom CT study after the node processed it, as stored in Orthanc."""

    study_instance_uid: str
    ct_series_instance_uid: str
    ct_files: list[Path]
    seg: pydicom.Dataset
    sr: pydicom.Dataset
    outline: pydicom.Dataset
    secondary_captures: int
    seconds_to_results: float


def require_viewer_tools() -> None:
    """Chromium, node, playwright-core and the OHIF dist; a missing one fails the test."""
    require_browser_tools()
    require_ohif_dist()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ohif")


@pytest.fixture(scope="module")
def orthanc(workdir: Path) -> Iterator[Orthanc]:
    server = Orthanc(workdir / "orthanc", aet=ORTHANC_AE, dicomweb=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(workdir: Path, orthanc: Orthanc) -> Iterator[NodeProcess]:
    destination = Destination(
        name="pacs", ae_title=ORTHANC_AE, host="127.0.0.1", port=orthanc.dicom_port
    )
    process = NodeProcess(
        workdir / "node", destinations=[destination],
        settings={"allowed_calling_aes": ["STORESCU", "E2ETEST"]},
    )
    process.start()
    yield process
    code = process.stop()
    assert code == 0, f"node did not stop cleanly ({code}):\n{process.log_tail()}"


@pytest.fixture(scope="module")
def viewer(orthanc: Orthanc) -> Iterator[ViewerServer]:
    require_viewer_tools()
    server = ViewerServer(orthanc.http_port)
    server.start()
    yield server
    server.stop()


def _exported(node: NodeProcess, series_uid: str) -> bool:
    jobs = node.jobs(series_uid)
    return bool(jobs) and jobs[-1].state is JobState.EXPORTED


def _instance(orthanc: Orthanc, series: dict[str, Any]) -> pydicom.Dataset:
    (instance,) = orthanc.instances_of_series(series["ID"])
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))


@pytest.fixture(scope="module")
def processed_study(workdir: Path, orthanc: Orthanc, node: NodeProcess) -> ProcessedStudy:
    """A small COVID-19 phantom (256 x 256, 8 mm slices, with lesions) sent by DCMTK
    ``storescu`` to the node, and by ``storescu`` to Orthanc (the modality's copy
    for the PACS); waits until the node exported its results (SEG, SR, outline
    report, SC images) to Orthanc."""
    spec = sample_spec(20261126, "covid19").with_grid(matrix=256, slice_thickness=8.0)
    phantom = generate_phantom(spec)
    assert phantom.lesion_mask.any(), "the phantom should have lesions"
    files = write_dicom_series(phantom, workdir / "ct", uid_seed="ohif-viewer-test")
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    started = time.monotonic()
    for ae_title, port in ((node.ae_title, node.port), (ORTHANC_AE, orthanc.dicom_port)):
        proc = run_dcmtk(["storescu", "-aet", "STORESCU", "-aec", ae_title,
                          "127.0.0.1", str(port), *map(str, files)])
        assert proc.returncode == 0, f"storescu to {ae_title}: {proc.stdout}{proc.stderr}"
    orthanc.wait_for(
        lambda: _exported(node, header.SeriesInstanceUID), RESULT_TIMEOUT,
        what=f"the node's results of series {header.SeriesInstanceUID} exported to Orthanc",
    )
    elapsed = time.monotonic() - started
    series = orthanc.series_modalities(header.StudyInstanceUID)
    assert len(series["SEG"]) == 1 and len(series["CT"]) == 1
    # The full report (9002) and the outline report (9005: the phantom has lesions).
    reports = {int(item["MainDicomTags"]["SeriesNumber"]): item for item in series["SR"]}
    assert sorted(reports) == [9002, 9005], sorted(reports)
    assert len(series["OT"]) == 1  # the "AI summary" Secondary Capture series
    return ProcessedStudy(
        study_instance_uid=header.StudyInstanceUID,
        ct_series_instance_uid=header.SeriesInstanceUID,
        ct_files=files,
        seg=_instance(orthanc, series["SEG"][0]),
        sr=_instance(orthanc, reports[9002]),
        outline=_instance(orthanc, reports[9005]),
        secondary_captures=len(orthanc.instances_of_series(series["OT"][0]["ID"])),
        seconds_to_results=elapsed,
    )


@pytest.fixture(scope="module")
def stock_viewer(orthanc: Orthanc) -> Iterator[ViewerServer]:
    """OHIF with the stock SR behaviour (no ``onBeforeSRAddMeasurement`` workaround)."""
    require_viewer_tools()
    server = ViewerServer(orthanc.http_port, sr_workaround=False)
    server.start()
    yield server
    server.stop()


# -- helpers -------------------------------------------------------------------
def run_ohif(
    viewer: ViewerServer, study_uid: str, mode: str, out: Path, sr_measurements: int = 1,
    sr_label: str = SR_LABEL, artifacts: str | None = None,
) -> dict[str, Any]:
    """Run ``ohif_check.mjs``; returns its observations (and keeps its screenshots)."""
    require_viewer_tools()
    out.mkdir(parents=True, exist_ok=True)
    command = [
        require_browser_tools(), str(OHIF_SCRIPT), "--url", viewer.url, "--study", study_uid,
        "--out", str(out), "--mode", mode, "--seg-label", SEG_LABEL, "--sr-label", sr_label,
        "--sr-measurements", str(sr_measurements), "--timeout", "60000",
    ]
    try:
        proc = subprocess.run(
            command, cwd=VIEWER_DIR, capture_output=True, text=True, timeout=BROWSER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"OHIF check ({mode}) did not finish within {BROWSER_TIMEOUT} s: {exc}")
    keep_artifacts(out, artifacts or mode)
    observed_path = out / "observed.json"
    assert observed_path.is_file(), f"ohif_check.mjs wrote nothing: {proc.stdout}{proc.stderr}"
    observed: dict[str, Any] = json.loads(observed_path.read_text())
    assert proc.returncode == 0 and observed.get("ok"), (
        f"OHIF check ({mode}) failed: {observed.get('error')}\nsteps: {observed.get('steps')}\n"
        f"console errors: {observed.get('console_errors')}\nstderr: {proc.stderr[-2000:]}"
    )
    return observed


def keep_artifacts(out: Path, mode: str) -> None:
    """Copy screenshots and observations to ``test-artifacts/viewer/<mode>/``."""
    target = ARTIFACTS / mode
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.suffix in {".png", ".json"}:
            shutil.copy2(path, target / path.name)


def colour_pixels(png: Path, rgb: tuple[int, int, int], min_chroma: float = 25.0) -> int:
    """Pixels of a screenshot whose colour (not grey) points the way of ``rgb``.

    A labelmap is blended over the grey CT, so a pixel's colour is a mix of the
    segment colour and grey: its chroma (the pixel minus its grey level) keeps the
    direction of the segment colour's chroma. Counted: chroma at least
    ``min_chroma`` long and within ~25 degrees of the segment colour's.
    """
    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64)
    chroma = pixels - pixels.mean(axis=-1, keepdims=True)
    target = np.asarray(rgb, dtype=np.float64)
    target = target - target.mean()
    target /= np.linalg.norm(target)
    length = np.linalg.norm(chroma, axis=-1)
    cosine = (chroma @ target) / np.maximum(length, 1e-9)
    return int(((length >= min_chroma) & (cosine >= 0.9)).sum())


def parse_rgb(css: str) -> tuple[int, int, int]:
    """``"rgb(230, 50, 50)"`` -> ``(230, 50, 50)``."""
    r, g, b = (int(part) for part in css.strip()[css.index("(") + 1:-1].split(",")[:3])
    return r, g, b


def assert_outline_drawn(where: str, seen: dict[str, Any], shape: dict[str, Any],
                         ct_shot: Path) -> None:
    """At least 200 pixels of the outline's stroke colour in the viewport's
    screenshot, and almost none (<= 1 %) on the plain CT before anything was loaded."""
    stroke = parse_rgb(shape["stroke"])
    drawn = colour_pixels(Path(seen["screenshot"]), stroke, min_chroma=60.0)
    before = colour_pixels(ct_shot, stroke, min_chroma=60.0)
    print(f"{where}: {shape['points']} points, {drawn} pixels of {stroke} "
          f"(plain CT {before}); {seen['svg']['text_lines']}")
    assert drawn >= 200 and before <= 0.01 * drawn, (where, drawn, before)


def segment_frames(seg: pydicom.Dataset, label: str) -> dict[str, int]:
    """``{source SOP Instance UID: segment pixels}`` for one segment of a SEG."""
    (number,) = [
        int(item.SegmentNumber) for item in seg.SegmentSequence if item.SegmentLabel == label
    ]
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    out: dict[str, int] = {}
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber) != number:
            continue
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        count = int(np.count_nonzero(pixels[index]))
        if count:
            out[str(source)] = out.get(str(source), 0) + count
    return out


def segment_rgb(seg: pydicom.Dataset, label: str) -> tuple[int, int, int]:
    """The Recommended Display CIELab colour of a segment, as sRGB."""
    import highdicom as hd

    (item,) = [item for item in seg.SegmentSequence if item.SegmentLabel == label]
    rgb = hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb()
    return int(rgb[0]), int(rgb[1]), int(rgb[2])


def check_sr_drawing(
    observed: dict[str, Any], planar: list[dict[str, Any]], seg: pydicom.Dataset
) -> None:
    """Each planar group drawn by OHIF's SR viewport on its slice: one polyline with
    all the SR's points, the SR's area and long axis in the text box, and pixels of
    the annotation colour that the plain CT does not have."""
    assert observed["blocked_requests"] == [], "OHIF tried to reach other hosts"
    assert observed["page_errors"] == []
    assert not [m for m in observed["console_type_errors"] if "ReferencedSOPSequence" in m]
    lesion_frames = segment_frames(seg, "Lesion")
    ct_shot = Path(observed["screenshots"]["ct"])
    drawn = observed["sr_measurements"]
    assert len(drawn) == len(planar)
    for group, seen in zip(planar, drawn):
        where = f"{group['tracking_id']} ({group['referenced_sop_instance_uid']})"
        # On the slice the group references, which is a lesion slice of our SEG.
        assert seen["image"]["sopInstanceUid"] == group["referenced_sop_instance_uid"], where
        assert group["referenced_sop_instance_uid"] in lesion_frames, where
        # The outline: one polyline with every point of the SR's Graphic Data.
        (polyline,) = seen["svg"]["polylines"]
        assert polyline["points"] == len(group["points"]), where
        lines = seen["svg"]["text_lines"]
        assert f"Area: {group['area_mm2']:.2f} mm2" in lines, (where, lines)
        assert f"Long axis: {group['long_axis_mm']:.2f} mm" in lines, (where, lines)
        assert_outline_drawn(where, seen, polyline, ct_shot)
    print(f"browser {observed['elapsed_ms']} ms")


# -- tests ---------------------------------------------------------------------
def test_node_results_are_served_by_orthanc_dicomweb_through_the_viewer_origin(
    processed_study: ProcessedStudy, node: NodeProcess, viewer: ViewerServer, tmp_path: Path
) -> None:
    """The node processed the series and exported its results; the study (CT + SEG
    + SR) answers QIDO-RS and WADO-RS on the viewer's origin, as OHIF asks for it."""
    (job,) = node.jobs(processed_study.ct_series_instance_uid)
    assert job.state is JobState.EXPORTED
    study = processed_study.study_instance_uid
    for name, ds in (("seg.dcm", processed_study.seg), ("sr.dcm", processed_study.sr),
                     ("outline.dcm", processed_study.outline)):
        ds.save_as(tmp_path / name)
        assert dciodvfy_errors(tmp_path / name) == [], f"dciodvfy errors in {name}"
    with urllib.request.urlopen(f"{viewer.url}/dicom-web/studies/{study}/series", timeout=30) as rsp:
        assert rsp.headers["Content-Type"].startswith("application/dicom+json")
        series = json.loads(rsp.read())
    modalities = sorted(item["00080060"]["Value"][0] for item in series)
    assert modalities == ["CT", "OT", "SEG", "SR", "SR"]
    seg_series = processed_study.seg.SeriesInstanceUID
    with urllib.request.urlopen(
        f"{viewer.url}/dicom-web/studies/{study}/series/{seg_series}/metadata", timeout=30
    ) as rsp:
        (metadata,) = json.loads(rsp.read())
    assert metadata["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.66.4"]  # SEG Storage
    request = urllib.request.Request(
        f"{viewer.url}/dicom-web/studies/{study}/series/{seg_series}/instances/"
        f"{processed_study.seg.SOPInstanceUID}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    with urllib.request.urlopen(request, timeout=30) as rsp:
        assert rsp.headers["Content-Type"].startswith("multipart/related")
        body = rsp.read()
    assert processed_study.seg.SOPInstanceUID.encode() in body
    print(f"storescu -> SEG and SR in Orthanc: {processed_study.seconds_to_results:.1f} s")


def test_ohif_draws_the_seg_overlay_on_the_lesion_slices(
    processed_study: ProcessedStudy, viewer: ViewerServer, tmp_path: Path
) -> None:
    """OHIF lists the study, shows the CT, loads our SEG after its prompt, lists the
    "Lesion" segment in its colour and draws it on a lesion slice; hiding the
    segment removes those pixels from the same view."""
    observed = run_ohif(viewer, processed_study.study_instance_uid, "seg", tmp_path / "seg")
    seg = processed_study.seg
    assert observed["blocked_requests"] == [], "OHIF tried to reach other hosts"
    assert observed["page_errors"] == []
    # The study's modalities: the CT and the node's SEG, SRs and SC ("OT").
    assert any(set(token.split("\\")) == {"CT", "OT", "SEG", "SR"}
               for token in observed["study_list"].split()), observed["study_list"]
    assert "AI lesions (research)" in observed["series_browser"]
    assert "AI report (research)" in observed["series_browser"]
    assert "Do you want to open this Segmentation?" in observed["seg_prompt"]
    # The CT is displayed from our series.
    source_uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
                   for f in processed_study.ct_files}
    assert observed["ct_image"]["sopInstanceUid"] in source_uids
    # The segmentation panel lists the SEG's segments, "Lesion" in the SEG's colour.
    segments = {item["title"]: item for item in observed["segments"]}
    assert set(segments) == {str(item.SegmentLabel) for item in seg.SegmentSequence}
    lesion_rgb = parse_rgb(segments["Lesion"]["color"])
    assert np.allclose(lesion_rgb, segment_rgb(seg, "Lesion"), atol=3), lesion_rgb
    # Loading jumps to the SEG's first frame; clicking "Lesion" shows a lesion slice.
    any_segment = set().union(*(segment_frames(seg, label) for label in segments))
    assert observed["first_segment_frame_image"]["sopInstanceUid"] in any_segment
    lesion_frames = segment_frames(seg, "Lesion")
    shown = observed["lesion_image"]["sopInstanceUid"]
    assert shown in lesion_frames, f"OHIF shows {shown}, not a slice with lesion"
    assert observed["lesion_image_after_toggles"]["sopInstanceUid"] == shown
    # Pixels of the lesion colour: drawn with the segment shown, gone when hidden.
    shots = {name: Path(path) for name, path in observed["screenshots"].items()}
    on = colour_pixels(shots["seg-lesion-only"], lesion_rgb)
    off = colour_pixels(shots["seg-hidden"], lesion_rgb)
    ct_only = colour_pixels(shots["ct"], lesion_rgb)
    width, height = Image.open(shots["seg-lesion-only"]).size
    scale = min(width, height) / max(seg.Rows, seg.Columns)  # the image fits the viewport
    expected = lesion_frames[shown] * scale * scale
    print(f"lesion-coloured pixels: shown {on}, hidden {off}, CT before SEG {ct_only}; "
          f"expected from the SEG frame ~{expected:.0f}; browser {observed['elapsed_ms']} ms")
    assert off <= 0.01 * on and ct_only <= 0.01 * on
    assert 0.5 * expected <= on <= 1.5 * expected


def test_ohif_draws_the_sr_planar_measurements_on_their_slices(
    processed_study: ProcessedStudy, viewer: ViewerServer, tmp_path: Path
) -> None:
    """OHIF opens our SR in its SR viewport on the first lesion's largest slice and
    draws each planar (TID 1410) group: the outline as a polyline with all its
    points, and a text box with the area and the long axis the SR holds; the
    viewport's arrows step to the next lesion on its own slice."""
    report = read_report_measurements(processed_study.sr)
    planar = report["planar"]
    assert planar, "the COVID-19 phantom should give at least one planar measurement group"
    observed = run_ohif(
        viewer, processed_study.study_instance_uid, "sr", tmp_path / "sr",
        sr_measurements=len(planar),
    )
    check_sr_drawing(observed, planar, processed_study.seg)
    # Not rehydratable by design (display-only outlines): no prompt, an empty tracked
    # measurement panel, and OHIF's "SR" badge in the viewport.
    assert "SR" in observed["sr_viewport_text"].split()
    assert "No tracked measurements" in observed["measurement_panel"]

def test_stock_ohif_draws_the_outline_report(
    processed_study: ProcessedStudy, orthanc: Orthanc, stock_viewer: ViewerServer,
    tmp_path: Path,
) -> None:
    """The planar-only outline report the node sends by default (kind "outline",
    series 9005) is drawn by OHIF 3.13 as shipped, without the app-config hook:
    opened in the SR viewport, every outline on its slice with its area and long
    axis."""
    outline = processed_study.outline
    planar = read_report_measurements(outline)["planar"]
    assert planar, "the COVID-19 phantom should have a significant lesion"
    # The same lesions as the node's full report (same tracking UIDs and areas).
    full = read_report_measurements(processed_study.sr)["planar"]
    assert [(p["tracking_uid"], p["area_mm2"]) for p in planar] == [
        (p["tracking_uid"], p["area_mm2"]) for p in full]
    assert b"onBeforeSRAddMeasurement" not in stock_viewer.app_config
    observed = run_ohif(
        stock_viewer, processed_study.study_instance_uid, "sr", tmp_path / "outline",
        sr_measurements=len(planar), sr_label=str(outline.SeriesDescription),
        artifacts="sr-outline-stock",
    )
    check_sr_drawing(observed, planar, processed_study.seg)
    # The report is rehydratable: OHIF asks to track its measurements (answered in
    # test_stock_ohif_lists_the_outline_report_in_its_measurement_panel); unanswered,
    # the SR viewport draws and the measurement panel stays empty.
    assert "Do you want to continue tracking measurements for this study?" in (
        observed["sr_viewport_text"])
    assert "No tracked measurements" in observed["measurement_panel"]


def test_stock_ohif_3_13_shows_a_black_sr_viewport_for_our_sr(
    processed_study: ProcessedStudy, stock_viewer: ViewerServer, tmp_path: Path
) -> None:
    """Why the test configuration carries the ``onBeforeSRAddMeasurement`` hook:
    without it OHIF 3.13 throws on the SR's first non-geometric measurement and
    renders no image in the SR viewport (docs/viewers.md, "Known limits"). When an
    OHIF upgrade fixes this, this test fails and the workaround can go."""
    assert b"onBeforeSRAddMeasurement" not in stock_viewer.app_config
    observed = run_ohif(stock_viewer, processed_study.study_instance_uid, "sr-stock",
                        tmp_path / "sr-stock")
    assert observed["sr_stock"]["canvases"] == 0, observed["sr_stock"]
    assert observed["sr_stock"]["polylines"] == 0, observed["sr_stock"]
    # ... because of that bug, not because the page was slow.
    assert any(
        "_checkIfCanAddMeasurementsToDisplaySet" in message
        and "reading 'ReferencedSOPSequence'" in message
        for message in observed["console_type_errors"]
    ), observed["console_type_errors"]


def test_viewer_server_serves_the_shell_config_and_assets(tmp_path: Path) -> None:
    """Client routes get index.html, /app-config.js has only same-origin DICOMweb
    roots, a missing asset is a 404, and the DICOMweb proxy answers 502 when the
    PACS is down."""
    dead_port = free_port()
    with ViewerServer(dead_port) as server:
        with urllib.request.urlopen(f"{server.url}/viewer?StudyInstanceUIDs=1.2.3", timeout=10) as rsp:
            assert rsp.headers["Content-Type"].startswith("text/html")
            assert b"app-config.js" in rsp.read()
        with urllib.request.urlopen(f"{server.url}/app-config.js", timeout=10) as rsp:
            config = rsp.read().decode()
        assert '"qidoRoot": "/dicom-web"' in config and '"wadoRoot": "/dicom-web"' in config
        assert "http://" not in config and "https://" not in config
        assert "onBeforeSRAddMeasurement" in config
        for path, status in (("/no-such-bundle.js", 404), ("/dicom-web/studies", 502)):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(f"{server.url}{path}", timeout=10)
            assert error.value.code == status, path



def test_stock_ohif_lists_the_outline_report_in_its_measurement_panel(
    processed_study: ProcessedStudy, stock_viewer: ViewerServer, tmp_path: Path,
) -> None:
    """The outline report is rehydratable by OHIF 3.13 as shipped: opening it asks
    "Do you want to continue tracking measurements for this study?"; after "Yes"
    OHIF's measurement panel lists exactly the report's planar groups (as editable
    PlanarFreehandROI measurements, in order, with the report's areas), and each,
    clicked in the panel, is drawn as a closed contour with all the report's points
    on the slice the group references."""
    assert b"onBeforeSRAddMeasurement" not in stock_viewer.app_config
    outline = processed_study.outline
    planar = read_report_measurements(outline)["planar"]
    full = read_report_measurements(processed_study.sr)["planar"]
    assert len(planar) == len(full) >= 1
    # "Lesion <n>" stays readable after the cornerstone3D tool prefix.
    assert [p["tracking_id"] for p in planar] == [
        f"{OHIF_PLANAR_FREEHAND_TRACKING_PREFIX}{p['tracking_id']}" for p in full]
    observed = run_ohif(
        stock_viewer, processed_study.study_instance_uid, "sr-hydrate", tmp_path / "hydrate",
        sr_measurements=len(planar), sr_label=str(outline.SeriesDescription),
        artifacts="sr-outline-hydrated",
    )
    assert observed["blocked_requests"] == [] and observed["page_errors"] == []
    assert "Do you want to continue tracking measurements for this study?" in observed["sr_prompt"]
    # Every group went through the PlanarFreehandROI adapter, none was refused.
    assert observed["console_sr"].count("log: === PlanarFreehandROI ===") == len(planar), (
        observed["console_sr"])
    assert not [m for m in observed["console_sr"]
                if "Unable to generate tool state" in m or "not rehydratable" in m]
    # The panel: exactly the planar groups, titled with their finding, with their areas;
    # row n is "Lesion <n>" (lesions are numbered by decreasing volume, as the groups).
    assert [p["tracking_id"].rsplit(":", 1)[1] for p in planar] == [
        f"Lesion {n}" for n in range(1, len(planar) + 1)]
    rows = observed["measurement_panel_rows"]
    assert [row["text"] for row in rows] == [
        f"{n} {p['finding']['meaning']}" for n, p in enumerate(planar, start=1)], rows
    panel = observed["measurement_panel_after"]
    assert f"Measurements ({len(planar)})" in panel, panel
    areas = [float(m) for m in re.findall(r"^([\d.]+) mm²$", panel, flags=re.MULTILINE)]
    assert areas == pytest.approx([p["area_mm2"] for p in planar], abs=0.5), panel
    ct_shot = Path(observed["screenshots"]["ct"])
    assert len(observed["sr_measurements"]) == len(planar)
    for group, seen in zip(planar, observed["sr_measurements"]):
        where = f"{group['tracking_id']} ({group['referenced_sop_instance_uid']})"
        assert seen["image"]["sopInstanceUid"] == group["referenced_sop_instance_uid"], where
        # cornerstone's own tool draws it (a <path>), not the SR display tool (<polyline>):
        # the closed contour without the repeated first point.
        assert seen["svg"]["polylines"] == [], where
        (contour,) = seen["svg"]["paths"]
        assert contour["closed"] and contour["points"] == len(group["points"]) - 1, (where, contour)
        (area_line,) = [line for line in seen["svg"]["text_lines"] if line.startswith("Area: ")]
        assert float(area_line.split()[1]) == pytest.approx(group["area_mm2"], abs=0.5), area_line
        assert_outline_drawn(where, seen, contour, ct_shot)
    print(f"browser {observed['elapsed_ms']} ms")
