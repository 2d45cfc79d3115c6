"""Bad input over the network: every case gets a documented outcome, and the node keeps serving.

Each test sends one case of the corpus (:mod:`tests.bad_input_corpus`, plus
the real ``../shared/data/ct/empty-uids-jpeg2000``) to a real node over
DICOM on 127.0.0.1 and checks

* the DIMSE status of every instance (Error Comment included);
* the job of the series in the node's database: state and reason
  (``rejected`` with the reason, or processed to SEG + SR);
* that no SEG/SR exists where the geometry is wrong or the input was refused;
* that a log line names the series UID and no log line at INFO or above
  holds the patient's name or ID;
* that the node still answers C-ECHO afterwards.

One in-process :class:`pacs_node.node.Node` (module scope, SQLite, the tiny
test model, quiet time 0.5 s, at least 8 slices) serves the in-process
tests; the last test runs ``deepsc-node serve`` as a process
(:class:`tests.e2e_fixtures.NodeProcess`), so that a crash or an
out-of-memory kill would show as a dead process. The peers are pynetdicom
(raw files are sent byte for byte with ``STORE_SEND_CHUNKED_DATASET``) and
DCMTK ``storescu``. The outcomes are tabulated in ``docs/robustness.md``.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import re
import resource
import zlib
from collections.abc import Iterator, Sequence
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from config import Destination
from inference.errors import VolumeError
from inference.volume_checks import MAX_MATRIX, MAX_VOXELS, check_image_format
from pacs_node import scu
from pacs_node.dataset_checks import EncodingReport, inspect_encoding, pixel_data_problem
from pacs_node.node import Node
from pacs_node.receive import decode_header
from pacs_node.results.common import result_character_set
from storage import (
    JobRecord,
    JobState,
    ResultObjectRecord,
    get_series,
    jobs_for_series,
    result_objects_for_job,
    result_summary,
    series_instances,
)
from tests import bad_input_corpus as corpus
from tests.dicom_fixtures import encode_dataset
from tests.e2e_fixtures import NodeProcess
from tests.node_fixtures import (
    assert_result_kinds,
    node_settings,
    tiny_model,
    wait_until,
    write_datasets,
)
from tests.peers import free_port, run_dcmtk

#: Smallest series the test node processes (selection rule ``min_slices``).
MIN_SLICES = 8
#: The test node's patient attributes, which must never reach a log at INFO+.
PHI = ("Synthetic", "SYNTH-0001")
EMPTY_UIDS = "ct/empty-uids-jpeg2000"


# -- the node and the peer -----------------------------------------------------------


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("bad-input-node")
    settings = node_settings(
        folder, model_dir=tiny_model(folder), port=free_port(), min_slices=MIN_SLICES
    )
    with Node(settings, intra_op_threads=1) as running:
        yield running


@pytest.fixture(autouse=True)
def info_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Capture INFO and above from every logger (the node's threads included)."""
    caplog.set_level(logging.INFO)
    return caplog


@contextlib.contextmanager
def chunked() -> Iterator[None]:
    """pynetdicom sends files byte for byte, command UIDs from the file meta."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved


def send(node: Node, items: Sequence[Dataset | Path]) -> list[Dataset]:
    """C-STORE `items` to the in-process node; the status data sets in order."""
    return send_to(node.port, node.settings.ae_title, items)


def send_to(port: int, ae_title: str, items: Sequence[Dataset | Path]) -> list[Dataset]:
    """C-STORE `items` over one association (files raw); the status data sets in order."""
    ae = AE("MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, RLELossless)
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    ae.add_requested_context(EnhancedCTImageStorage, ExplicitVRLittleEndian)
    with chunked():
        assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(item) for item in items]
        finally:
            assoc.release()
    assert all("Status" in status for status in statuses), "a C-STORE got no response"
    return statuses


def codes(statuses: Sequence[Dataset]) -> list[int]:
    return [int(status.Status) for status in statuses]


def assert_echo(node: Node) -> None:
    """The node still answers C-ECHO."""
    destination = Destination("node", node.settings.ae_title, "127.0.0.1", node.port)
    assert scu.echo(destination, "ECHOSCU", timeout=10) == 0


def settle(node: Node) -> None:
    """Wait until every job reached a resting state."""
    assert node.wait_idle(120), "the node did not become idle"


def jobs(node: Node, series_uid: str) -> list[JobRecord]:
    assert node.session_factory is not None
    with node.session_factory() as session:
        return jobs_for_series(session, series_uid)


def results(node: Node, job: JobRecord) -> list[ResultObjectRecord]:
    assert node.session_factory is not None
    with node.session_factory() as session:
        return result_objects_for_job(session, job.id)


def stored_uids(node: Node, series_uid: str) -> set[str]:
    assert node.session_factory is not None
    with node.session_factory() as session:
        return {row.sop_instance_uid for row in series_instances(session, series_uid)}


def rejected(node: Node, series_uid: str) -> str:
    """The reason of the series' only job, which must be rejected with no result."""
    (job,) = jobs(node, series_uid)
    assert job.state is JobState.REJECTED, (job.state, job.reason)
    assert results(node, job) == []
    assert job.reason
    return job.reason


def processed(node: Node, series_uid: str) -> list[Dataset]:
    """SEG, SR (outline report) and SC images of the series' only job (processed once)."""
    (job,) = jobs(node, series_uid)
    assert job.state is JobState.EXPORTED, (job.state, job.reason)
    objects = results(node, job)
    assert node.session_factory is not None
    with node.session_factory() as session:
        assert_result_kinds([o.kind for o in objects], result_summary(session, job.id))
    return [pydicom.dcmread(node.settings.results_dir / o.file_path) for o in objects]


def assert_logs(caplog: pytest.LogCaptureFixture, series_uid: str, *phi: str) -> None:
    """A log line names the series; none at INFO or above holds a patient name/ID part."""
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any(series_uid in message for message in messages), f"no log line names {series_uid}"
    parts = {p for value in (*PHI, *phi) for p in re.split(r"[=^]", value) if len(p) > 1}
    leaks = [m for m in messages for part in parts if part in m]
    assert leaks == [], leaks


def referenced_series(seg: Dataset) -> set[str]:
    return {str(item.SeriesInstanceUID) for item in seg.ReferencedSeriesSequence}


# -- the checks themselves (no network) --------------------------------------------------


def _deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return packer.compress(data) + packer.flush()


def _inspect(encoded: bytes, syntax: str) -> EncodingReport:
    stream = BytesIO(encoded)
    header = decode_header(stream, syntax)
    return inspect_encoding(stream, syntax, header)


@pytest.mark.parametrize(
    "syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
               DeflatedExplicitVRLittleEndian],
)
def test_inspect_encoding_finds_truncation_in_every_uncompressed_syntax(syntax: str) -> None:
    ds = corpus.series(1)[0]
    if syntax == DeflatedExplicitVRLittleEndian:
        plain = encode_dataset(ds, ExplicitVRLittleEndian)
        whole, cut = (_deflate(plain), _deflate(plain[:-40]))
    else:
        whole = encode_dataset(ds, syntax)
        cut = whole[:-40]
    complete = _inspect(whole, syntax)
    assert not complete.truncated and complete.pixel_tag == 0x7FE00010
    assert complete.pixel_length == 512
    assert pixel_data_problem(ds, complete, syntax) is None
    truncated = _inspect(cut, syntax)
    assert truncated.truncated and truncated.truncated_tag == 0x7FE00010


def test_inspect_encoding_walks_encapsulated_fragments() -> None:
    ds = corpus.huge_encapsulated_series(1)[0]
    encoded = encode_dataset(ds)  # RLE: encapsulated, little endian
    report = _inspect(encoded, RLELossless)
    assert (report.truncated, report.fragments) == (False, 1)
    assert pixel_data_problem(ds, report, RLELossless) is None  # not decodable unread
    assert _inspect(encoded[:-8], RLELossless).truncated  # no sequence delimiter
    assert _inspect(encoded[:-20], RLELossless).truncated  # inside the fragment


@pytest.mark.parametrize(
    ("source", "written"),
    [
        (None, None),
        ("ISO_IR 100", "ISO_IR 100"),
        ("ISO_IR 192", "ISO_IR 192"),
        (["", "ISO 2022 IR 87"], ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
        (["ISO 2022 IR 6", "ISO 2022 IR 149"], "ISO_IR 192"),  # Korean: unknown to highdicom
        ("ISO_IR 999", "ISO_IR 192"),
    ],
)
def test_result_character_set(source: str | list[str] | None, written: object) -> None:
    ds = Dataset()
    if source is not None:
        ds.SpecificCharacterSet = source
    assert result_character_set([ds]) == written


def test_volume_size_limits_are_checked_before_any_pixel_is_decoded() -> None:
    header = corpus.series(1, rows=512, columns=512)[0]
    del header.PixelData
    header.PixelData = b"\x00\x00"  # never decoded: the limits come first
    images = [header] * (MAX_VOXELS // (512 * 512))
    assert check_image_format(images, "1.2.3") == (512, 512)
    with pytest.raises(VolumeError, match=r"has 2049 images of 512x512 = 537133056 voxels; "
                       r"the limit is 536870912 \(e.g. 2048 slices of 512x512\)"):
        check_image_format([*images, header], "1.2.3")
    header.Rows = MAX_MATRIX + 1
    with pytest.raises(VolumeError, match="declares 4097x512 pixels; the limit is 1 to 4096"):
        check_image_format([header], "1.2.3")


# -- refused at C-STORE -----------------------------------------------------------------


def test_truncated_instances_are_refused_and_the_rest_is_not_processed(
    node: Node, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(12)
    series_uid = str(datasets[0].SeriesInstanceUID)
    cut = {
        3: corpus.truncate(datasets[3], keep=corpus.offset_of(datasets[3], "PixelSpacing") + 3),
        6: corpus.truncate(datasets[6], cut=100),  # inside the pixel data value
        9: corpus.truncate(datasets[9], cut=len(datasets[9].PixelData) + 6),  # element header
    }
    items: list[Dataset | Path] = [
        corpus.raw_file(tmp_path / f"{i}.dcm", ds, cut.get(i)) for i, ds in enumerate(datasets)
    ]
    statuses = send(node, items)
    assert codes(statuses) == [0xC210 if i in cut else 0 for i in range(12)]
    assert statuses[3].ErrorComment == "Data set truncated in element (0028,0030)"
    assert statuses[6].ErrorComment == "Data set truncated in element (7FE0,0010)"
    assert statuses[9].ErrorComment == "Data set truncated"
    assert statuses[3].OffendingElement == 0x00280030
    settle(node)
    assert stored_uids(node, series_uid) == {
        str(ds.SOPInstanceUID) for i, ds in enumerate(datasets) if i not in cut
    }
    assert "3 slice(s) appear to be missing" in rejected(node, series_uid)
    assert_logs(info_logs, series_uid)
    assert sum("Data set truncated" in r.getMessage() for r in info_logs.records) == 3
    assert_echo(node)


def test_missing_or_inconsistent_pixel_data_is_refused_with_a900(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(13)
    series_uid = str(datasets[0].SeriesInstanceUID)
    del datasets[2].PixelData
    ds = datasets[4]  # 16-bit pixels declared as 8-bit
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    datasets[6].Rows = 20  # 16 x 16 pixels declared as 20 x 16
    datasets[8].Columns = 8
    ds = datasets[10]  # far beyond memory: 8 GiB declared, 512 bytes sent
    ds.Rows = ds.Columns = 65535
    statuses = send(node, datasets)
    refused = {2, 4, 6, 8, 10}
    assert codes(statuses) == [0xA900 if i in refused else 0 for i in range(13)]
    assert [statuses[i].ErrorComment for i in sorted(refused)] == [
        "Pixel Data missing (Rows and Columns present)",
        "Pixel Data has 512 bytes, Image Pixel module needs 256",
        "Pixel Data has 512 bytes, Image Pixel module needs 640",
        "Pixel Data has 512 bytes, Image Pixel module needs 256",
        "Pixel Data has 512 bytes, Image Pixel module needs 8589672450",
    ]
    assert all(statuses[i].OffendingElement == 0x7FE00010 for i in refused)
    settle(node)
    assert len(stored_uids(node, series_uid)) == 8
    assert "slice(s) appear to be missing" in rejected(node, series_uid)
    assert_logs(info_logs, series_uid)
    assert_echo(node)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(
    ("keyword", "value", "status", "comment"),
    [
        ("SOPInstanceUID", "1.2.840.abc.1", 0xC000, "SOP Instance UID is not digits and dots"),
        ("SOPInstanceUID", "1.2." + "3" * 63, 0xC000,
         "SOP Instance UID is longer than 64 characters"),
        ("SOPInstanceUID", "../../../etc/passwd", 0xC000,
         "SOP Instance UID is not digits and dots"),
        ("SeriesInstanceUID", "1.2.3/../../../../tmp", 0xA900,
         "Series Instance UID is not digits and dots"),
        ("StudyInstanceUID", "..", 0xA900, "Study Instance UID is not digits and dots"),
        ("StudyInstanceUID", "1.2.3\x00x", 0xA900, "Study Instance UID is not digits and dots"),
        ("FrameOfReferenceUID", "../1.2.3", 0xA900, "frame_of_reference_uid is not a valid UID"),
    ],
    ids=["sop-letters", "sop-over-64", "sop-path", "series-path", "study-dotdot", "study-nul",
         "frame-of-reference-path"],
)
def test_invalid_uids_are_refused_and_never_become_paths(
    node: Node, tmp_path: Path, keyword: str, value: str, status: int, comment: str,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    good = corpus.series(2)
    bad = good[0]
    tag = bad.data_element(keyword).tag  # type: ignore[union-attr]
    corpus.set_unchecked(bad, int(tag), value)
    path = corpus.raw_file(tmp_path / "bad.dcm", bad)  # command UIDs stay valid
    before = {p for p in node.settings.data_dir.rglob("*") if p.is_file()}
    statuses = send(node, [path, good[1]])
    assert codes(statuses) == [status, 0]
    assert statuses[0].ErrorComment == comment
    settle(node)
    created = {p for p in node.settings.data_dir.rglob("*") if p.is_file()} - before
    instances = node.settings.instances_dir.resolve()
    assert all(p.resolve().is_relative_to(instances) for p in created if p.suffix == ".dcm")
    assert [p.name for p in created if p.suffix == ".dcm"] == [f"{good[1].SOPInstanceUID}.dcm"]
    assert not list(tmp_path.parent.rglob("passwd"))
    series_uid = str(good[1].SeriesInstanceUID)
    assert stored_uids(node, series_uid) == {str(good[1].SOPInstanceUID)}
    assert rejected(node, series_uid) == f"1 slices < minimum {MIN_SLICES}"
    refusals = [
        r.getMessage() for r in info_logs.records
        if "refused" in r.getMessage() and not r.getMessage().startswith("association")
    ]
    assert refusals and all(value not in message for message in refusals)
    if keyword != "SeriesInstanceUID":
        assert all(series_uid in message for message in refusals)
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_real_series_with_empty_uids_is_refused_with_c000(
    node: Node, shared_data: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    files = sorted((shared_data / EMPTY_UIDS).iterdir())
    assert len(files) == 20
    before = {p for p in node.settings.instances_dir.rglob("*") if p.is_file()}
    statuses = send(node, files)
    assert codes(statuses) == [0xC000] * 20
    assert {s.ErrorComment for s in statuses} == {"SOP Class UID is empty"}
    assert {p for p in node.settings.instances_dir.rglob("*") if p.is_file()} == before
    refusals = [r.getMessage() for r in info_logs.records if "refused instance" in r.getMessage()]
    assert len(refusals) == 20 and all("series <empty>" in m for m in refusals)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert_logs(info_logs, "series <empty>", str(header.PatientName), str(header.PatientID))
    assert_echo(node)


# -- stored, then rejected by the job with a reason ---------------------------------------


def test_declared_matrix_beyond_memory_in_compressed_data_is_rejected_before_decoding(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.huge_encapsulated_series(MIN_SLICES + 2)
    series_uid = str(datasets[0].SeriesInstanceUID)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    statuses = send(node, datasets)
    assert codes(statuses) == [0] * len(datasets)  # valid DICOM: RLE cannot be checked unread
    settle(node)
    reason = rejected(node, series_uid)
    assert "declares 65535x65535 pixels; the limit is 1 to 4096 rows and columns" in reason
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert grown_mib < 256, f"peak RSS grew by {grown_mib:.0f} MiB"
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_different_matrix_sizes_in_one_series_are_rejected(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(10)
    larger = corpus.series(10, rows=32, columns=32)
    for index in (4, 5):
        other = larger[index]
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            setattr(other, keyword, datasets[index].get(keyword))
        datasets[index] = other
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert codes(send(node, datasets)) == [0] * 10
    settle(node)
    assert "have different matrix sizes (16x16, 32x32)" in rejected(node, series_uid)
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_enhanced_ct_multiframe_is_stored_and_rejected_with_a_reason(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    enhanced = corpus.enhanced_ct(frames=12)
    series_uid = str(enhanced.SeriesInstanceUID)
    assert codes(send(node, [enhanced])) == [0]
    settle(node)
    assert rejected(node, series_uid) == (
        "Enhanced CT Image Storage (multi-frame) is not supported; "
        "send the series as CT Image Storage"
    )
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_gantry_tilt_is_rejected_not_resampled(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.gantry_tilted(corpus.series(10), degrees=5.0)
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert codes(send(node, datasets)) == [0] * 10
    settle(node)
    reason = rejected(node, series_uid)
    assert "is not stacked along its slice normal (gantry tilt about 5.0 degrees" in reason
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_missing_slices_are_rejected_not_interpolated(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(12)
    del datasets[5:7]
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert codes(send(node, datasets)) == [0] * 10
    settle(node)
    reason = rejected(node, series_uid)
    assert "gaps from 5.000 to 15.000 mm" in reason
    assert "about 2 slice(s) appear to be missing" in reason
    assert_logs(info_logs, series_uid)
    assert_echo(node)


# -- processed ---------------------------------------------------------------------------


def test_same_sop_instance_uid_with_other_content_replaces_it_and_reprocesses(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(10)
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert codes(send(node, datasets)) == [0] * 10
    settle(node)
    (first,) = jobs(node, series_uid)
    assert first.state is JobState.EXPORTED
    changed = copy.deepcopy(datasets[4])
    changed.PixelData = bytes(len(changed.PixelData))  # other pixels, same SOP Instance UID
    same = copy.deepcopy(datasets[5])
    assert codes(send(node, [changed, same])) == [0, 0]
    settle(node)
    first_after, second = jobs(node, series_uid)
    assert first_after.state is JobState.EXPORTED
    with node.session_factory() as session:
        assert_result_kinds(
            [o.kind for o in results(node, first_after)], result_summary(session, first_after.id)
        )
    assert second.state is JobState.EXPORTED and second.reason == "no destinations configured"
    assert stored_uids(node, series_uid) == {str(ds.SOPInstanceUID) for ds in datasets}
    stored = node.settings.instances_dir.rglob(f"{changed.SOPInstanceUID}.dcm")
    (path,) = list(stored)
    assert pydicom.dcmread(path).PixelData == changed.PixelData
    assert [r.getMessage() for r in info_logs.records if "replaced (content changed)" in
            r.getMessage() and series_uid in r.getMessage()]
    assert [r.getMessage() for r in info_logs.records if "duplicate instance" in r.getMessage()]
    assert_logs(info_logs, series_uid)
    assert_echo(node)


def test_same_sop_instance_uid_in_another_series_moves_to_the_later_series(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    first = corpus.series(MIN_SLICES + 2)
    moved = copy.deepcopy(first[-1])
    other_series = generate_uid()
    moved.SeriesInstanceUID = other_series
    moved.PixelData = bytes(len(moved.PixelData))
    assert codes(send(node, [*first, moved])) == [0] * (len(first) + 1)
    settle(node)
    series_uid = str(first[0].SeriesInstanceUID)
    assert stored_uids(node, series_uid) == {str(ds.SOPInstanceUID) for ds in first[:-1]}
    assert stored_uids(node, other_series) == {str(moved.SOPInstanceUID)}
    (path,) = list(node.settings.instances_dir.rglob(f"{moved.SOPInstanceUID}.dcm"))
    assert path.parent.name == other_series
    seg, *_ = processed(node, series_uid)  # the nine slices left form a regular volume
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(first) - 1
    assert rejected(node, other_series) == f"1 slices < minimum {MIN_SLICES}"
    assert_logs(info_logs, series_uid)
    assert_logs(info_logs, other_series)
    assert_echo(node)


@pytest.mark.parametrize(
    ("charset", "name", "description", "written"),
    [
        ("ISO_IR 192", corpus.UTF8_NAME, "Thorax Übersicht 胸部", "ISO_IR 192"),
        (["", "ISO 2022 IR 87"], corpus.JAPANESE_NAME, "Thorax",
         ["ISO 2022 IR 6", "ISO 2022 IR 87"]),
    ],
    ids=["ISO_IR-192", "ISO-2022-IR-87"],
)
def test_non_ascii_names_in_other_character_sets_are_processed_and_kept(
    node: Node, charset: str | list[str], name: str, description: str, written: object,
    info_logs: pytest.LogCaptureFixture,
) -> None:
    datasets = corpus.series(MIN_SLICES + 2)
    corpus.with_charset(datasets, charset, name)
    for ds in datasets:
        ds.SeriesDescription = description
    series_uid = str(datasets[0].SeriesInstanceUID)
    assert codes(send(node, datasets)) == [0] * len(datasets)
    settle(node)
    for result in processed(node, series_uid):
        assert str(result.PatientName) == name
        assert result.PatientID == datasets[0].PatientID
        assert result.SpecificCharacterSet == written
    assert_logs(info_logs, series_uid, name)
    assert_echo(node)


@pytest.mark.filterwarnings("ignore:Failed to decode byte string")
def test_mislabelled_character_set_is_processed_with_replacement_characters(
    node: Node, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(MIN_SLICES + 2)
    series_uid = str(datasets[0].SeriesInstanceUID)
    paths = []
    for index, ds in enumerate(datasets):
        encoded = corpus.mislabelled_utf8(ds, "Müller^Jörg")  # says UTF-8, is Latin-1
        paths.append(corpus.raw_file(tmp_path / f"{index}.dcm", ds, encoded))
    assert codes(send(node, paths)) == [0] * len(datasets)
    settle(node)
    for result in processed(node, series_uid):
        assert str(result.PatientName).startswith("M") and "\ufffd" in str(result.PatientName)
    assert_logs(info_logs, series_uid, "Müller^Jörg")
    assert_echo(node)


def test_interleaved_series_in_one_association_are_each_processed_once(
    node: Node, info_logs: pytest.LogCaptureFixture
) -> None:
    study = generate_uid()
    groups = [corpus.series(MIN_SLICES + i, study_instance_uid=study) for i in range(3)]
    statuses = send(node, corpus.interleave(*groups))
    assert codes(statuses) == [0] * sum(len(g) for g in groups)
    settle(node)
    for group in groups:
        series_uid = str(group[0].SeriesInstanceUID)
        seg, sr, *_ = processed(node, series_uid)
        assert referenced_series(seg) == {series_uid}
        referenced = {
            str(item.ReferencedSOPInstanceUID)
            for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        }
        assert referenced == {str(ds.SOPInstanceUID) for ds in group}
        assert sr.StudyInstanceUID == study
        assert_logs(info_logs, series_uid)
    assert_echo(node)


@pytest.mark.e2e
@pytest.mark.slow
def test_series_of_2000_slices_is_processed(
    node: Node, tmp_path: Path, info_logs: pytest.LogCaptureFixture
) -> None:
    datasets = corpus.series(2000, rows=64, columns=64, thickness=1.0)
    series_uid = str(datasets[0].SeriesInstanceUID)
    folder = tmp_path / "ct"
    write_datasets(folder, datasets)
    del datasets
    done = run_dcmtk(
        ["storescu", "-v", "-aet", "MODALITY", "-aec", node.settings.ae_title,
         "+sd", "127.0.0.1", str(node.port), str(folder)],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (done.stdout + done.stderr).count("Received Store Response (Success)") == 2000
    settle(node)
    seg, sr, *_ = processed(node, series_uid)
    assert node.session_factory is not None
    with node.session_factory() as session:
        assert get_series(session, series_uid).instance_count == 2000
    assert int(seg.NumberOfFrames) % 2000 == 0
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == 2000
    assert_logs(info_logs, series_uid)
    assert_echo(node)


# -- the node as a process ---------------------------------------------------------------


@pytest.mark.e2e
def test_node_process_survives_the_worst_cases_and_keeps_answering(
    tmp_path: Path, shared_data: Path
) -> None:
    huge = corpus.huge_encapsulated_series(MIN_SLICES)
    truncated = corpus.series(1)[0]
    truncated_file = corpus.raw_file(
        tmp_path / "truncated.dcm", truncated, corpus.truncate(truncated, cut=300)
    )
    empty_uids = sorted((shared_data / EMPTY_UIDS).iterdir())[:3]
    with NodeProcess(
        tmp_path / "node",
        settings={"model_dir": str(tiny_model(tmp_path)), "quiet_time": 0.5},
        tables={"selection": {"min_slices": MIN_SLICES}},
    ) as process:
        statuses = send_to(process.port, process.ae_title, [*huge, truncated_file, *empty_uids])
        assert codes(statuses) == [0] * MIN_SLICES + [0xC210] + [0xC000] * 3
        series_uid = str(huge[0].SeriesInstanceUID)
        (job,) = wait_until(
            lambda: [j for j in process.jobs(series_uid) if j.state is JobState.REJECTED],
            60, "the huge series to be rejected",
        )
        assert "declares 65535x65535 pixels" in str(job.reason)
        assert process.process is not None and process.process.poll() is None
        assert scu.echo(process.destination, "ECHOSCU", timeout=10) == 0
        assert process.jobs(str(truncated.SeriesInstanceUID)) == []
    log = process.log_path.read_text()
    assert series_uid in log and "Data set truncated in element (7FE0,0010)" in log
    assert "Traceback" not in log
    header = pydicom.dcmread(empty_uids[0], stop_before_pixels=True)
    for phi in (*PHI, str(header.PatientName), str(header.PatientID)):
        assert not phi or phi not in log

