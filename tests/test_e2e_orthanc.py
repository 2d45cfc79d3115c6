"""End to end against a real PACS: Orthanc sends CT to the node, SEG + SR + SC come back.

Real processes on loopback: Orthanc (Debian package ``orthanc``) with its own
configuration and storage, the node (``deepsc-node serve``) with its own data
directory and the bundled model, DCMTK ``storescu``/``echoscu`` as independent
clients, ``dciodvfy`` on every object the node writes. Nothing is mocked.
"""
from __future__ import annotations

import copy
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from config import Destination
from inference.phantom import generate_phantom, sample_spec, write_dicom_series
from inference.volume import build_volume, read_series
from pacs_node.results import read_report_measurements, read_segmentation_mask
from pacs_node.results.sc import select_key_slices
from storage import JobState
from tests.dicom_fixtures import make_basic_text_sr
from tests.e2e_fixtures import NodeProcess
from tests.peers import Orthanc, dciodvfy_errors, run_dcmtk

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REAL_CT = "ct/lung-pet-ct-dx-a0002"
EMPTY_UIDS = "ct/empty-uids-jpeg2000"
ORTHANC_AE = "ORTHANC"
#: Calling AEs the node accepts in these tests (DCMTK's defaults, Orthanc, ours).
ALLOWED = ["ORTHANC", "STORESCU", "ECHOSCU", "E2ETEST"]
RESULT_TIMEOUT = 240.0


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient of two boolean masks."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="module")
def orthanc(workdir: Path) -> Iterator[Orthanc]:
    server = Orthanc(workdir / "orthanc", aet=ORTHANC_AE)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def node(workdir: Path, orthanc: Orthanc) -> Iterator[NodeProcess]:
    destination = Destination(
        name="pacs", ae_title=ORTHANC_AE, host="127.0.0.1", port=orthanc.dicom_port
    )
    process = NodeProcess(
        workdir / "node", destinations=[destination], settings={"allowed_calling_aes": ALLOWED}
    )
    process.start()
    orthanc.add_modality("deepsc", process.ae_title, "127.0.0.1", process.port)
    yield process
    code = process.stop()
    assert code == 0, f"node did not stop cleanly ({code}):\n{process.log_tail()}"


@pytest.fixture(scope="module")
def covid_phantom(workdir: Path):  # type: ignore[no-untyped-def]
    """A COVID-19 phantom study (512 x 512, 5 mm slices) as DICOM files."""
    spec = sample_spec(20261126, "covid19").with_grid(matrix=512, slice_thickness=5.0)
    phantom = generate_phantom(spec)
    files = write_dicom_series(phantom, workdir / "covid", uid_seed="20261126")
    return phantom, files


def result_series(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict]]:
    """SEG, SR and Secondary Capture ("OT") series of a study, once all are there."""
    series = orthanc.series_modalities(study_uid)
    if series.get("SEG") and series.get("SR") and series.get("OT"):
        return series
    return {}


def reports_by_number(series: dict[str, list[dict]]) -> dict[int, dict]:
    """The SR series of a study by Series Number: 9002 the full report, 9005 the
    outline report (only when a lesion reaches 0.5 mL)."""
    return {int(item["MainDicomTags"]["SeriesNumber"]): item for item in series["SR"]}


def instance_dataset(orthanc: Orthanc, series: dict) -> pydicom.Dataset:
    """The one instance of a result series, parsed."""
    (instance,) = orthanc.instances_of_series(series["ID"])
    return pydicom.dcmread(io.BytesIO(orthanc.instance_file(instance)))


def check_results(
    orthanc: Orthanc, study_uid: str, source_files: list[Path], tmp_path: Path
) -> tuple[pydicom.Dataset, pydicom.Dataset, np.ndarray]:
    """Wait for SEG + SR + SC in Orthanc and check what does not depend on the model.

    Returns the SEG, the SR and the lesion mask on the source grid.
    """
    series = orthanc.wait_for(
        lambda: result_series(orthanc, study_uid), RESULT_TIMEOUT,
        what="SEG, SR and SC in Orthanc",
    )
    reports = reports_by_number(series)
    assert len(series["SEG"]) == 1 and set(reports) in ({9002}, {9002, 9005}), set(reports)
    seg = instance_dataset(orthanc, series["SEG"][0])
    sr = instance_dataset(orthanc, reports[9002])
    outline = instance_dataset(orthanc, reports[9005]) if 9005 in reports else None
    checked = [("seg.dcm", seg), ("sr.dcm", sr)]
    if outline is not None:
        checked.append(("outline.dcm", outline))
    for name, ds in checked:
        path = tmp_path / name
        ds.save_as(path)
        assert dciodvfy_errors(path) == [], f"dciodvfy errors in {name}"
        assert ds.StudyInstanceUID == study_uid
    assert "research" in seg.SeriesDescription.lower()
    assert "research" in sr.SeriesDescription.lower()
    volume = build_volume(read_series(source_files))
    masks = read_segmentation_mask(seg, volume.geometry)
    assert "Lesion" in masks
    lesion = masks["Lesion"]
    assert lesion.shape == volume.geometry.shape
    # The SEG's frames reference the source series, on the source geometry.
    referenced = {
        item.SeriesInstanceUID for item in seg.ReferencedSeriesSequence
    }
    assert referenced == {volume.series_instance_uid}
    report = read_report_measurements(sr)
    # The outline report exactly when the full report has planar groups, with the same ones.
    assert (outline is not None) is bool(report["planar"])
    if outline is not None:
        def planar(groups: list[dict]) -> list[tuple]:
            return [(g["tracking_uid"], g["referenced_sop_instance_uid"], g["area_mm2"],
                     g["long_axis_mm"], np.asarray(g["points"]).tolist()) for g in groups]

        assert planar(read_report_measurements(outline)["planar"]) == planar(report["planar"])
    voxel_ml = volume.geometry.voxel_volume_ml
    assert report["total_lesion_volume_ml"] == pytest.approx(lesion.sum() * voxel_ml, rel=1e-3, abs=1e-3)
    assert report["lesions_present"] is bool(lesion.any())
    assert sum(report["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)
    assert any("not for diagnosis" in text.lower() for text in report["statements"])
    # The "AI summary" series: one key image per chosen lesion slice (from the
    # SEG's mask, read back independently), then the summary page.
    (sc_series,) = series["OT"]
    expected = len(select_key_slices(lesion, slice_spacing_mm=volume.geometry.spacing[0])) + 1
    sc_ids = orthanc.wait_for(
        lambda: (ids if len(ids := orthanc.instances_of_series(sc_series["ID"])) == expected
                 else None),
        RESULT_TIMEOUT, what=f"{expected} SC images in Orthanc",
    )
    pages = sorted(
        (pydicom.dcmread(io.BytesIO(orthanc.instance_file(i))) for i in sc_ids),
        key=lambda ds: int(ds.InstanceNumber),
    )
    for number, page in enumerate(pages, start=1):
        path = tmp_path / f"sc-{number}.dcm"
        page.save_as(path)
        assert dciodvfy_errors(path) == [], f"dciodvfy errors in SC image {number}"
        assert int(page.InstanceNumber) == number and str(page.SeriesNumber) == "9003"
        assert page.SeriesDescription == "AI summary (research)"
        assert page.StudyInstanceUID == study_uid
    for page in pages[:-1]:
        (source,) = page.SourceImageSequence
        assert source.ReferencedSOPInstanceUID in volume.sop_instance_uids
    return seg, sr, lesion


def test_covid_phantom_sent_by_orthanc_comes_back_as_seg_and_sr(
    orthanc: Orthanc, node: NodeProcess, covid_phantom, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    phantom, files = covid_phantom
    orthanc.upload(files)
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    series_uid = pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID
    (orthanc_series,) = [
        s["ID"] for s in orthanc.find_series(study_uid) if s["MainDicomTags"]["Modality"] == "CT"
    ]
    started = time.monotonic()
    orthanc.send_to_modality("deepsc", [orthanc_series])
    seg, sr, lesion = check_results(orthanc, study_uid, files, tmp_path)
    elapsed = time.monotonic() - started
    # The phantom's true lesion and the model's agree (synthetic data, bundled model).
    assert dice(lesion, phantom.lesion_mask) >= 0.5
    (job,) = node.jobs(series_uid)
    assert job.state is JobState.EXPORTED
    print(f"Orthanc send -> SEG and SR stored in Orthanc: {elapsed:.1f} s (quiet time 2 s)")


def test_real_chest_ct_sent_with_storescu_gets_valid_seg_and_sr(
    orthanc: Orthanc, node: NodeProcess, shared_data: Path, tmp_path: Path
) -> None:
    files = sorted((shared_data / REAL_CT).glob("*.dcm"))
    assert len(files) == 30
    proc = run_dcmtk(["storescu", "-aet", "STORESCU", "-aec", node.ae_title,
                      "127.0.0.1", str(node.port), *map(str, files)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    check_results(orthanc, study_uid, files, tmp_path)


def _send(node: NodeProcess, items: list, calling_ae: str = "E2ETEST") -> list[int]:
    """C-STORE datasets or files (files are sent raw, command UIDs from the file
    meta, as a forwarding archive does) in one association; the statuses."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.4.90")  # JPEG 2000 lossless
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        assoc.release()


def _echo_ok(node: NodeProcess) -> None:
    proc = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", node.ae_title,
                      "127.0.0.1", str(node.port)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _real_ct_copy(shared_data: Path) -> list[pydicom.Dataset]:
    """The real chest CT as a new series (fresh series and instance UIDs)."""
    series_uid = generate_uid()
    datasets = []
    for path in sorted((shared_data / REAL_CT).glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        datasets.append(ds)
    return datasets


def _wait_rejected(node: NodeProcess, series_uid: str) -> str:
    def rejected() -> str | None:
        jobs = node.jobs(series_uid)
        if jobs and jobs[-1].state is JobState.REJECTED:
            return jobs[-1].reason or ""
        return None

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reason = rejected()
        if reason is not None:
            return reason
        time.sleep(0.5)
    raise AssertionError(f"series {series_uid} was not rejected: {node.jobs(series_uid)}")


def test_bad_input_is_refused_or_rejected_and_the_node_keeps_serving(
    node: NodeProcess, shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real JPEG 2000 with empty UIDs: refused with a failure status, nothing stored.
    empty = sorted((shared_data / EMPTY_UIDS).iterdir())
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    statuses = _send(node, empty[:3])
    assert all(status in (0xA900, 0xC000) for status in statuses), statuses
    _echo_ok(node)

    # A non-CT series (Basic Text SR documents).
    sr_series = generate_uid()
    documents = [make_basic_text_sr() for _ in range(2)]
    for document in documents:
        document.SeriesInstanceUID = sr_series
    assert _send(node, documents) == [0, 0]
    assert "SR" in _wait_rejected(node, sr_series)

    # Three slices.
    three = _real_ct_copy(shared_data)[:3]
    assert _send(node, three) == [0, 0, 0]
    assert "3 slices" in _wait_rejected(node, three[0].SeriesInstanceUID)

    # Mixed orientations: half the slices sagittal.
    mixed = _real_ct_copy(shared_data)
    for ds in mixed[::2]:
        ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    assert _send(node, mixed) == [0] * len(mixed)
    reason = _wait_rejected(node, mixed[0].SeriesInstanceUID)
    assert "orientation" in reason.lower() or "axial" in reason.lower(), reason

    # A truncated file in an otherwise good series.
    truncated = _real_ct_copy(shared_data)
    folder = tmp_path / "truncated"
    folder.mkdir()
    paths = []
    for index, ds in enumerate(truncated):
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    data = paths[10].read_bytes()
    paths[10].write_bytes(data[: len(data) - 200_000])
    statuses = _send(node, paths)
    assert statuses[:10] == [0] * 10 and statuses[11:] == [0] * 19
    if statuses[10] == 0:
        # Accepted as received: the job says why no result is made.
        reason = _wait_rejected(node, truncated[0].SeriesInstanceUID)
        assert "pixel" in reason.lower() or "truncated" in reason.lower(), reason
    else:
        assert statuses[10] in (0xA900, 0xC000, 0xC210), statuses[10]

    # An unknown calling AE is not let in at all.
    proc = run_dcmtk(["echoscu", "-aet", "INTRUDER", "-aec", node.ae_title,
                      "127.0.0.1", str(node.port)])
    assert proc.returncode != 0
    assert "reject" in (proc.stdout + proc.stderr).lower()
    _echo_ok(node)


def test_destination_down_then_back_gets_the_result_once(
    orthanc: Orthanc, node: NodeProcess, shared_data: Path, tmp_path: Path
) -> None:
    datasets = _real_ct_copy(shared_data)
    series_uid = datasets[0].SeriesInstanceUID
    study_uid = generate_uid()
    folder = tmp_path / "down"
    folder.mkdir()
    files = []
    for index, ds in enumerate(datasets):
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID = study_uid
        path = folder / f"{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    orthanc.stop()
    try:
        proc = run_dcmtk(["storescu", "-aet", "STORESCU", "-aec", node.ae_title,
                          "127.0.0.1", str(node.port), *map(str, files)])
        assert proc.returncode == 0, proc.stdout + proc.stderr

        def written_and_failing() -> bool:
            jobs = node.jobs(series_uid)
            return bool(jobs) and jobs[-1].state is JobState.WRITTEN

        deadline = time.monotonic() + RESULT_TIMEOUT
        while not written_and_failing():
            assert time.monotonic() < deadline, f"job not written: {node.jobs(series_uid)}"
            time.sleep(0.5)
        time.sleep(3.0)  # a few failed attempts with backoff
        assert node.jobs(series_uid)[-1].state is JobState.WRITTEN
    finally:
        orthanc.start()
    check_results(orthanc, study_uid, files, tmp_path)
    deadline = time.monotonic() + 30
    while node.jobs(series_uid)[-1].state is not JobState.EXPORTED:
        assert time.monotonic() < deadline, node.jobs(series_uid)
        time.sleep(0.5)
    time.sleep(3.0)  # nothing more arrives later
    series = orthanc.series_modalities(study_uid)
    assert len(series["SEG"]) == 1 and len(reports_by_number(series)) == len(series["SR"])
    for item in [*series["SEG"], *series["SR"]]:
        assert len(orthanc.instances_of_series(item["ID"])) == 1
