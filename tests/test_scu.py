"""The node's SCU: ``send`` and ``echo`` against DCMTK storescp and pynetdicom peers."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    BasicTextSRStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.transport import ThreadedAssociationServer

from config import AssociationTimeouts, Destination
from pacs_node.ae import STORAGE_SOP_CLASSES, build_ae, start_scp, stop_scp
from pacs_node.receive import ReceivedInstance, ReceiveOutcome
from pacs_node.scu import (
    MAX_PRESENTATION_CONTEXTS,
    AssociationFailedError,
    ItemOutcome,
    echo,
    parse_destination,
    resolve_destination,
    send,
)
from tests.dicom_fixtures import (
    DirectoryReceiver,
    dcmtk_storescp,
    make_basic_text_sr,
    make_ct_dataset,
    write_ct_series,
)
from tests.peers import free_port

CALLING_AE = "DEEPSC"
FAST = AssociationTimeouts(acse=5, dimse=10, network=10, connection=5)


def j2k_dataset() -> Dataset:
    """A 64x64 CT slice compressed as JPEG 2000 Lossless (pylibjpeg-openjpeg)."""
    ds = make_ct_dataset(rows=64, columns=64)
    ds.compress(JPEG2000Lossless)
    return ds


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """DCMTK storescp (all transfer syntaxes) writing to ``tmp_path/received``."""
    folder = tmp_path / "received"
    with dcmtk_storescp(folder) as port:
        yield folder, port


@pytest.fixture
def node_scp(tmp_path: Path) -> Iterator[Callable[..., tuple[int, object]]]:
    """Start the node's own SCP with a receiver: ``node_scp(receiver=None, **build_ae_kwargs)``."""
    servers: list[ThreadedAssociationServer] = []

    def start(receiver: object | None = None, **kwargs: object) -> tuple[int, object]:
        receiver = receiver or DirectoryReceiver(tmp_path / f"node{len(servers)}")
        port = free_port()
        ae = build_ae("NODE", **kwargs)  # type: ignore[arg-type]
        servers.append(start_scp(ae, "127.0.0.1", port, receiver))  # type: ignore[arg-type]
        return port, receiver

    yield start
    for server in servers:
        stop_scp(server, timeout=2.0)


def destination(port: int, ae_title: str = "STORESCP") -> Destination:
    return Destination("test", ae_title, "127.0.0.1", port)


# -- parsing ------------------------------------------------------------------


def test_parse_destination() -> None:
    peer = parse_destination("ORTHANC@127.0.0.1:4242")
    assert (peer.ae_title, peer.host, peer.port) == ("ORTHANC", "127.0.0.1", 4242)
    assert peer.name == "ORTHANC"
    assert parse_destination("PACS@[::1]:104").host == "::1"
    assert parse_destination("MY AE@pacs.example.org:11112", name="pacs").name == "pacs"
    with pytest.raises(ValueError, match="AE@host:port"):
        parse_destination("ORTHANC:4242")
    with pytest.raises(ValueError, match="AE@host:port"):
        parse_destination("ORTHANC@host")
    with pytest.raises(ValueError, match="the port"):
        parse_destination("ORTHANC@host:70000")
    with pytest.raises(ValueError, match="the AE title"):
        parse_destination("A_TITLE_LONGER_THAN_16@host:104")


def test_resolve_destination() -> None:
    configured = (Destination("pacs", "ORTHANC", "10.0.0.5", 4242),)
    assert resolve_destination("pacs", configured) is configured[0]
    assert resolve_destination("X@127.0.0.1:5", configured).ae_title == "X"
    assert resolve_destination("other=X@127.0.0.1:5", configured).name == "other"
    message = r"neither AE@host:port nor a configured destination \(pacs\)"
    with pytest.raises(ValueError, match=message):
        resolve_destination("nope", configured)


# -- send to DCMTK storescp ---------------------------------------------------------


@pytest.mark.e2e
def test_send_files_and_datasets_to_storescp(storescp: tuple[Path, int], tmp_path: Path) -> None:
    folder, port = storescp
    files = write_ct_series(tmp_path / "series", 3)
    sr = make_basic_text_sr()
    compressed = j2k_dataset()
    progress: list[ItemOutcome] = []
    report = send(
        destination(port), [*files, sr, compressed], calling_ae=CALLING_AE, timeouts=FAST,
        progress=progress.append,
    )
    assert report.association_error is None
    assert report.ok and report.delivered == 5 and report.failed == 0
    assert [item.status for item in report.per_item] == [0, 0, 0, 0, 0]
    assert progress == report.per_item
    sent_uids = [pydicom.dcmread(f).SOPInstanceUID for f in files]
    assert [item.sop_instance_uid for item in report.per_item] == [
        *sent_uids, sr.SOPInstanceUID, compressed.SOPInstanceUID
    ]
    arrived = {p.name for p in folder.iterdir()}
    assert {f"CT.{uid}" for uid in sent_uids} <= arrived
    assert f"SRt.{sr.SOPInstanceUID}" in arrived
    received = pydicom.dcmread(folder / f"CT.{compressed.SOPInstanceUID}")
    assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless  # sent as-is
    assert received.PixelData == compressed.PixelData
    assert pydicom.dcmread(folder / f"CT.{sent_uids[0]}") == pydicom.dcmread(files[0])


@pytest.mark.e2e
def test_item_whose_context_is_rejected_gets_a_clear_error(tmp_path: Path) -> None:
    with dcmtk_storescp(tmp_path / "plain", accept_all=False) as port:  # uncompressed only
        files = write_ct_series(tmp_path / "series", 1)
        report = send(
            destination(port), [files[0], j2k_dataset()], calling_ae=CALLING_AE, timeouts=FAST
        )
    assert report.association_error is None
    plain, compressed = report.per_item
    assert plain.delivered and plain.status == 0
    assert not compressed.delivered and compressed.status is None
    assert compressed.error == (
        "peer did not accept CT Image Storage with JPEG 2000 Image Compression (Lossless Only) "
        "(transfer syntaxes not supported)"
    )
    assert not report.ok


def test_send_to_dead_port_reports_without_raising(tmp_path: Path) -> None:
    files = write_ct_series(tmp_path / "series", 2)
    report = send(destination(free_port()), files, calling_ae=CALLING_AE, timeouts=FAST)
    assert report.association_error is not None
    assert "cannot connect to STORESCP@127.0.0.1" in report.association_error
    assert [item.status for item in report.per_item] == [None, None]
    assert all(item.error.startswith("not sent: cannot connect") for item in report.per_item)
    assert report.failed == 2 and not report.ok


def test_unreadable_items_are_reported_and_the_rest_sent(
    node_scp: Callable[..., tuple[int, object]], tmp_path: Path
) -> None:
    port, receiver = node_scp()
    text = tmp_path / "notes.txt"
    text.write_text("not DICOM")
    no_uid = make_ct_dataset()
    del no_uid.SOPInstanceUID
    good = make_ct_dataset()
    items: list = [text, no_uid, good, 42]  # the int is wrong on purpose
    report = send(destination(port, "NODE"), items, calling_ae=CALLING_AE, timeouts=FAST)
    reading, missing, sent, wrong = report.per_item
    assert reading.error.startswith("cannot read file") and reading.source == str(text)
    assert missing.error == "no SOP Class UID or SOP Instance UID"
    assert sent.delivered and sent.sop_instance_uid == good.SOPInstanceUID
    assert wrong.error == "not a path or pydicom Dataset: int"
    assert report.association_error is None and report.failed == 3
    assert isinstance(receiver, DirectoryReceiver)
    assert [i.sop_instance_uid for i in receiver.instances] == [good.SOPInstanceUID]


def test_nothing_readable_means_no_association(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"nope")
    report = send(destination(free_port()), [bad], calling_ae=CALLING_AE, timeouts=FAST)
    assert report.association_error is None  # no association was needed
    assert report.per_item[0].error.startswith("cannot read file")


def test_send_checks_arguments() -> None:
    with pytest.raises(ValueError, match='"calling_ae"'):
        send(destination(1), [], calling_ae="")
    with pytest.raises(TypeError, match='"destination"'):
        send("STORESCP@127.0.0.1:1", [], calling_ae=CALLING_AE)  # type: ignore[arg-type]


# -- presentation contexts, statuses ----------------------------------------------


def test_proposes_exactly_the_needed_contexts(tmp_path: Path) -> None:
    proposed: list[tuple[str, tuple[str, ...]]] = []

    def on_requested(event: Event) -> None:
        primitive = event.assoc.requestor.primitive
        assert primitive is not None
        for cx in primitive.presentation_context_definition_list:
            proposed.append((str(cx.abstract_syntax), tuple(cx.transfer_syntax)))

    peer = AE("PEER")
    for sop_class in STORAGE_SOP_CLASSES:
        peer.add_supported_context(
            sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless]
        )
    port = free_port()
    server = peer.start_server(
        ("127.0.0.1", port), block=False,
        evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda event: 0x0000)],
    )
    try:
        implicit = make_ct_dataset()
        implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        items = [make_ct_dataset(), implicit, make_basic_text_sr(), j2k_dataset(), j2k_dataset()]
        report = send(destination(port, "PEER"), items, calling_ae=CALLING_AE, timeouts=FAST)
    finally:
        assert server is not None
        server.shutdown()
    assert report.ok, report
    uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert sorted(proposed) == sorted(
        [
            (CTImageStorage, uncompressed),
            (BasicTextSRStorage, uncompressed),
            (CTImageStorage, (JPEG2000Lossless,)),
        ]
    )


def test_sr_goes_in_an_sr_context(node_scp: Callable[..., tuple[int, object]]) -> None:
    port, receiver = node_scp()
    sr = make_basic_text_sr()
    report = send(destination(port, "NODE"), [sr], calling_ae=CALLING_AE, timeouts=FAST)
    assert report.ok
    assert isinstance(receiver, DirectoryReceiver)
    (instance,) = receiver.instances
    assert instance.sop_class_uid == BasicTextSRStorage
    assert instance.transfer_syntax_uid in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    stored = receiver.read(sr.SOPInstanceUID)
    assert stored.ContentSequence[0].TextValue == sr.ContentSequence[0].TextValue


class _OutcomeReceiver:
    def __init__(self, *outcomes: ReceiveOutcome) -> None:
        self.outcomes = list(outcomes)

    def receive(self, instance: ReceivedInstance) -> ReceiveOutcome:
        return self.outcomes.pop(0)


def test_warnings_count_as_delivered_failures_do_not(
    node_scp: Callable[..., tuple[int, object]],
) -> None:
    port, _ = node_scp(
        _OutcomeReceiver(
            ReceiveOutcome(status=0xB000, disposition="stored", comment="Coerced PatientID"),
            ReceiveOutcome(status=0xA700, disposition="refused", comment="Disk full"),
            ReceiveOutcome(status=0x0000, disposition="duplicate"),
        )
    )
    report = send(
        destination(port, "NODE"), [make_ct_dataset() for _ in range(3)], calling_ae=CALLING_AE,
        timeouts=FAST,
    )
    warned, refused, ok = report.per_item
    assert warned.delivered and warned.warning and warned.status == 0xB000
    assert warned.error == "0xB000 Warning: Coercion of Data Elements: Coerced PatientID"
    assert not refused.delivered and refused.status == 0xA700
    assert refused.error == "0xA700 Refused: Out of Resources: Disk full"
    assert ok.delivered and not ok.warning and ok.error == ""
    assert (report.delivered, report.warnings, report.failed) == (2, 1, 1)
    assert report.association_error is None and not report.ok


def test_rejected_association_is_reported(node_scp: Callable[..., tuple[int, object]]) -> None:
    port, _ = node_scp(allowed_calling_aes=["ONLY_THIS"])
    report = send(
        destination(port, "NODE"), [make_ct_dataset()], calling_ae=CALLING_AE, timeouts=FAST
    )
    assert report.association_error is not None
    assert "association rejected by NODE@127.0.0.1" in report.association_error
    assert "calling ae title not recogni" in report.association_error.lower()
    assert report.per_item[0].status is None
    with pytest.raises(AssociationFailedError, match="rejected"):
        echo(destination(port, "NODE"), CALLING_AE, timeout=5)


def test_more_than_128_contexts_are_not_sent(node_scp: Callable[..., tuple[int, object]]) -> None:
    port, receiver = node_scp()
    sop_classes = STORAGE_SOP_CLASSES[: MAX_PRESENTATION_CONTEXTS + 1]
    items = []
    for sop_class in sop_classes:
        ds = make_ct_dataset(rows=2, columns=2)
        ds.SOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        items.append(ds)
    report = send(destination(port, "NODE"), items, calling_ae=CALLING_AE, timeouts=FAST)
    assert report.delivered == MAX_PRESENTATION_CONTEXTS
    last = report.per_item[-1]
    assert last.status is None
    assert last.error.startswith("needs more than 128 presentation contexts")
    assert isinstance(receiver, DirectoryReceiver)
    assert len(receiver.instances) == MAX_PRESENTATION_CONTEXTS


def test_peer_abort_mid_send_is_reported() -> None:
    calls: list[int] = []

    def on_store(event: Event) -> int:
        calls.append(1)
        if len(calls) == 2:
            event.assoc.abort()
        return 0x0000

    peer = AE("PEER")
    peer.add_supported_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = free_port()
    server = peer.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        report = send(
            destination(port, "PEER"), [make_ct_dataset() for _ in range(4)], calling_ae=CALLING_AE,
            timeouts=FAST,
        )
    finally:
        assert server is not None
        server.shutdown()
    first, second, third, fourth = report.per_item
    assert first.delivered
    assert second.status is None and not second.delivered
    assert third.error.startswith("not sent:") and fourth.error.startswith("not sent:")
    assert report.association_error is not None and not report.ok
    assert report.association_error.startswith("no response (association aborted")


# -- echo --------------------------------------------------------------------------


@pytest.mark.e2e
def test_echo_storescp(storescp: tuple[Path, int]) -> None:
    _, port = storescp
    started = time.monotonic()
    assert echo(destination(port), CALLING_AE, timeout=5) == 0x0000
    assert time.monotonic() - started < 5


def test_echo_dead_port_raises() -> None:
    with pytest.raises(AssociationFailedError, match="cannot connect"):
        echo(destination(free_port()), CALLING_AE, timeout=2)
    with pytest.raises(ValueError, match='"timeout"'):
        echo(destination(1), CALLING_AE, timeout=0)


def test_echo_node_scp(node_scp: Callable[..., tuple[int, object]]) -> None:
    port, _ = node_scp()
    assert echo(destination(port, "NODE"), CALLING_AE, timeout=5) == 0x0000


def test_dataset_without_file_meta_is_sent_uncompressed(
    node_scp: Callable[..., tuple[int, object]],
) -> None:
    port, receiver = node_scp()
    ds = make_ct_dataset()
    del ds.file_meta
    ds.SOPInstanceUID = generate_uid()
    report = send(destination(port, "NODE"), [ds], calling_ae=CALLING_AE, timeouts=FAST)
    assert report.ok, report
    # The caller's dataset is left as it was.
    assert not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta
    assert isinstance(receiver, DirectoryReceiver)
    assert receiver.instances[0].sop_instance_uid == ds.SOPInstanceUID
    uncompressed = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
    assert receiver.instances[0].transfer_syntax_uid in uncompressed
