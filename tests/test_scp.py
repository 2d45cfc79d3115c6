"""The node's SCP: C-ECHO, C-STORE statuses, association checks, against real peers.

Peers: a pynetdicom AE in the same process and DCMTK ``echoscu`` /
``storescu`` as subprocesses; the SCP runs on 127.0.0.1 on a free port and
is stopped after each test.
"""
from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from config import CallingAE
from pacs_node.ae import (
    ACCEPTED_TRANSFER_SYNTAXES,
    NodeAE,
    build_ae,
    configure_pynetdicom,
    start_scp,
    stop_scp,
)
from pacs_node.handlers import AssociationPolicy, RejectReasonValues
from pacs_node.receive import (
    DispositionValues,
    ReceivedInstance,
    decode_header,
    ReceiveOutcome,
    sanitize_uid,
    validate_uid,
)
from pacs_node.status import StoreStatus, category, describe
from tests.dicom_fixtures import (
    DirectoryReceiver,
    RaisingReceiver,
    encode_dataset,
    make_ct_dataset,
    write_part10_raw,
)
from tests.peers import free_port, run_dcmtk

NODE_AE = "DEEPSC"
EMPTY_UIDS = "ct/empty-uids-jpeg2000"
REAL_CT = "ct/lung-pet-ct-dx-a0002"


@dataclass
class RunningSCP:
    """An SCP started for a test."""

    ae: NodeAE
    server: ThreadedAssociationServer
    port: int
    receiver: object


@pytest.fixture
def scp_factory(tmp_path: Path) -> Iterator[Callable[..., RunningSCP]]:
    """Start SCPs (stopped at teardown): ``scp_factory(receiver=None, **build_ae_kwargs)``."""
    servers: list[ThreadedAssociationServer] = []

    def start(receiver: object | None = None, **kwargs: object) -> RunningSCP:
        receiver = receiver or DirectoryReceiver(tmp_path / f"store{len(servers)}")
        kwargs.setdefault("acse_timeout", 5)
        kwargs.setdefault("dimse_timeout", 10)
        kwargs.setdefault("network_timeout", 10)
        ae = build_ae(NODE_AE, **kwargs)  # type: ignore[arg-type]
        port = free_port()
        server = start_scp(ae, "127.0.0.1", port, receiver)  # type: ignore[arg-type]
        servers.append(server)
        return RunningSCP(ae, server, port, receiver)

    yield start
    for server in servers:
        stop_scp(server, timeout=2.0)


@pytest.fixture
def scp(scp_factory: Callable[..., RunningSCP]) -> RunningSCP:
    """One SCP with a DirectoryReceiver and no allow-list."""
    return scp_factory()


def associate(port: int, calling_ae: str = "SCU", called_ae: str = NODE_AE) -> Association:
    """A pynetdicom association from a test SCU to 127.0.0.1:`port`."""
    ae = AE(calling_ae)
    ae.acse_timeout = 5
    ae.dimse_timeout = 10
    ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(CTImageStorage, JPEG2000Lossless)
    ae.add_requested_context(CTImageStorage, DeflatedExplicitVRLittleEndian)
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title=called_ae)


def set_unchecked(ds: Dataset, tag: int, value: str) -> None:
    """Set a UI element without pydicom's validation warning (which would log it)."""
    ds[tag] = DataElement(tag, "UI", value, validation_mode=pydicom.config.IGNORE)


@pytest.fixture
def chunked_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """SCU sends files raw, with command UIDs from the file meta (like forwarding PACS)."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


# -- pure units -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok", "reason"),
    [
        ("1.2.840.10008.5.1.4.1.1.2", True, ""),
        ("0.1.0", True, ""),
        ("1." + "2" * 62, True, ""),
        ("1." + "2" * 63, False, "is longer than 64 characters"),
        ("", False, "is empty"),
        (None, False, "is missing"),
        ("1.2.03", False, "has a component with a leading zero"),
        ("1..2", False, "is not digits and dots"),
        ("1.2.", False, "is not digits and dots"),
        ("Doe^John", False, "is not digits and dots"),
        (12, False, "is not text"),
    ],
)
def test_validate_uid(value: object, ok: bool, reason: str) -> None:
    assert validate_uid(value) == (ok, reason)


def test_sanitize_uid_never_passes_text_through() -> None:
    assert sanitize_uid("1.2.3") == "1.2.3"
    assert sanitize_uid("") == "<empty>"
    assert sanitize_uid(None) == "<missing>"
    assert sanitize_uid("Doe^John") == "<invalid>"
    assert sanitize_uid("1.2.03") == "1.2.03 (invalid)"
    assert "Jane" not in sanitize_uid("1.2.3Jane4")


def test_status_categories_and_descriptions() -> None:
    assert category(StoreStatus.SUCCESS) == "Success"
    assert category(0xB000) == category(0xB007) == "Warning"
    assert category(0xA700) == category(0xA9FF) == category(0xC211) == "Failure"
    assert category(0x0122) == "Failure"
    assert describe(0xA700) == "0xA700 Refused: Out of Resources"
    assert describe(0xA7F1) == "0xA7F1 Refused: Out of Resources"
    assert describe(0xC000) == "0xC000 Error: Cannot Understand"
    with pytest.raises(ValueError, match='"status"'):
        category(0x10000)
    with pytest.raises(TypeError, match='"status"'):
        describe("0")  # type: ignore[arg-type]


def test_receive_outcome_validates() -> None:
    outcome = ReceiveOutcome(status=0, disposition="stored")
    assert outcome.disposition is DispositionValues.STORED and outcome.comment == ""
    with pytest.raises(ValueError, match='"disposition"'):
        ReceiveOutcome(status=0, disposition="kept")
    with pytest.raises(ValueError, match='"disposition" .refused. contradicts'):
        ReceiveOutcome(status=0, disposition="refused")
    with pytest.raises(ValueError, match='"disposition" .stored. contradicts'):
        ReceiveOutcome(status=0xA700, disposition="stored")
    with pytest.raises(ValueError, match='"comment" should be at most 64'):
        ReceiveOutcome(status=0xA700, disposition="refused", comment="x" * 65)
    with pytest.raises(ValueError, match='"status"'):
        ReceiveOutcome(status=-1, disposition="refused")
    with pytest.raises(TypeError, match='"status"'):
        ReceiveOutcome(status="0", disposition="stored")  # type: ignore[arg-type]


def test_received_instance_rejects_invalid_uids() -> None:
    good = dict(
        sop_class_uid=CTImageStorage,
        sop_instance_uid="1.2.3",
        study_instance_uid="1.2.4",
        series_instance_uid="1.2.5",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae_title="SCU",
        peer_address="127.0.0.1",
        dataset=Dataset(),
        encoded=b"\0" * 128 + b"DICM",
    )
    assert ReceivedInstance(**good).sop_instance_uid == "1.2.3"  # type: ignore[arg-type]
    message = '"series_instance_uid" should be a valid UID; it is empty'
    with pytest.raises(ValueError, match=message):
        ReceivedInstance(**{**good, "series_instance_uid": ""})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"encoded"'):
        ReceivedInstance(**{**good, "encoded": b"not dicom"})  # type: ignore[arg-type]


def test_decode_header_stops_before_pixel_data() -> None:
    ds = make_ct_dataset()
    header = decode_header(encode_dataset(ds), ExplicitVRLittleEndian)
    assert header.SOPInstanceUID == ds.SOPInstanceUID
    assert header.Rows == 16
    assert "PixelData" not in header
    implicit = decode_header(encode_dataset(ds, ImplicitVRLittleEndian), ImplicitVRLittleEndian)
    assert implicit.SeriesInstanceUID == ds.SeriesInstanceUID


def test_association_policy() -> None:
    policy = AssociationPolicy(NODE_AE, (CallingAE("ORTHANC"), CallingAE("MODALITY", "10.0.0.7")))
    assert policy.check(NODE_AE, "ORTHANC", "127.0.0.1") == (None, "")
    assert policy.check(NODE_AE, "MODALITY", "10.0.0.7") == (None, "")
    assert policy.check(NODE_AE, "MODALITY", "10.0.0.8")[0] is (
        RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED
    )
    assert policy.check(NODE_AE, "OTHER", "127.0.0.1")[0] is (
        RejectReasonValues.CALLING_AE_TITLE_NOT_RECOGNIZED
    )
    assert policy.check("ANY", "ORTHANC", "127.0.0.1")[0] is (
        RejectReasonValues.CALLED_AE_TITLE_NOT_RECOGNIZED
    )
    assert AssociationPolicy(NODE_AE, require_called_ae=False).check("X", "Y", "z") == (None, "")
    with pytest.raises(ValueError, match='"ae_title"'):
        AssociationPolicy("")
    with pytest.raises(ValueError, match='"allowed_calling_aes"'):
        AssociationPolicy(NODE_AE, ("A" * 17,))  # type: ignore[arg-type]


def test_build_ae_supported_contexts() -> None:
    ae = build_ae(NODE_AE)
    contexts = {cx.abstract_syntax: cx for cx in ae.supported_contexts}
    assert Verification in contexts
    for sop_class in (CTImageStorage, EnhancedCTImageStorage):
        assert list(contexts[sop_class].transfer_syntax) == list(ACCEPTED_TRANSFER_SYNTAXES)
    assert len(ACCEPTED_TRANSFER_SYNTAXES) == 13
    assert len(contexts) > 128  # an acceptor is not limited to 128 contexts
    assert ae.maximum_pdu_size == 262144
    with pytest.raises(ValueError, match='"maximum_pdu_size"'):
        build_ae(NODE_AE, maximum_pdu_size=100)
    with pytest.raises(ValueError, match='"acse_timeout"'):
        build_ae(NODE_AE, acse_timeout=0)


def test_start_scp_checks_arguments() -> None:
    with pytest.raises(TypeError, match='"receiver"'):
        start_scp(build_ae(NODE_AE), "127.0.0.1", free_port(), object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='"port"'):
        start_scp(build_ae(NODE_AE), "127.0.0.1", 70000, RaisingReceiver(OSError()))


def test_configure_pynetdicom(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", "standard")
    configure_pynetdicom()
    assert _config.LOG_HANDLER_LEVEL == "none"
    with pytest.raises(ValueError, match='"log_handler_level"'):
        configure_pynetdicom(log_handler_level="debug")


# -- C-ECHO ---------------------------------------------------------------------


def test_echo_from_pynetdicom(scp: RunningSCP) -> None:
    assoc = associate(scp.port)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()


@pytest.mark.e2e
def test_echo_from_dcmtk(scp: RunningSCP) -> None:
    proc = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, "127.0.0.1", str(scp.port)])
    assert proc.returncode == 0, proc.stderr


# -- C-STORE: success ---------------------------------------------------------------


def test_store_from_pynetdicom_writes_the_instance(scp: RunningSCP) -> None:
    ds = make_ct_dataset()
    assoc = associate(scp.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000
    assert "ErrorComment" not in status
    receiver = scp.receiver
    assert isinstance(receiver, DirectoryReceiver)
    (instance,) = receiver.instances
    assert instance.sop_instance_uid == ds.SOPInstanceUID
    assert instance.series_instance_uid == ds.SeriesInstanceUID
    assert instance.calling_ae_title == "SCU" and instance.peer_address == "127.0.0.1"
    assert "PixelData" not in instance.dataset  # header only
    stored = pydicom.dcmread(receiver.path_for(instance))
    assert stored == ds
    assert stored.PixelData == ds.PixelData
    assert stored.file_meta.SendingApplicationEntityTitle == "SCU"
    assert stored.file_meta.ReceivingApplicationEntityTitle == NODE_AE
    assert stored.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_store_same_instance_twice_is_a_duplicate(scp: RunningSCP) -> None:
    ds = make_ct_dataset()
    assoc = associate(scp.port)
    assert assoc.send_c_store(ds).Status == 0x0000
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    receiver = scp.receiver
    assert isinstance(receiver, DirectoryReceiver)
    assert len(receiver.stored_files()) == 1
    assert len(receiver.instances) == 2


@pytest.mark.e2e
def test_store_real_ct_series_from_dcmtk(scp: RunningSCP, shared_data: Path) -> None:
    files = sorted((shared_data / REAL_CT).glob("*.dcm"))
    assert len(files) == 30
    proc = run_dcmtk(
        ["storescu", "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", str(scp.port)]
        + [str(f) for f in files]
    )
    assert proc.returncode == 0, proc.stderr
    receiver = scp.receiver
    assert isinstance(receiver, DirectoryReceiver)
    assert len(receiver.stored_files()) == 30
    for path in files[:3]:
        sent = pydicom.dcmread(path)
        stored = receiver.read(sent.SOPInstanceUID)
        assert stored == sent
        assert stored.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


# -- C-STORE: refusals ------------------------------------------------------------


@pytest.mark.usefixtures("chunked_send")
def test_empty_uids_are_refused_and_the_association_stays_usable(
    scp: RunningSCP, shared_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = sorted((shared_data / EMPTY_UIDS).iterdir())
    assert len(files) == 20
    good = make_ct_dataset()
    assoc = associate(scp.port)
    with caplog.at_level(logging.WARNING, logger="pacs_node"):
        statuses = [assoc.send_c_store(path) for path in files[:5]]
        good_status = assoc.send_c_store(good)
        echo_status = assoc.send_c_echo()
    assoc.release()
    for status in statuses:
        assert status.Status == StoreStatus.ERROR_CANNOT_UNDERSTAND == 0xC000
        assert status.ErrorComment == "SOP Class UID is empty"
        assert status.OffendingElement == 0x00080016
    assert good_status.Status == 0x0000
    assert echo_status.Status == 0x0000
    receiver = scp.receiver
    assert isinstance(receiver, DirectoryReceiver)
    assert [i.sop_instance_uid for i in receiver.instances] == [good.SOPInstanceUID]
    refusals = [r.getMessage() for r in caplog.records if "refused instance" in r.getMessage()]
    assert len(refusals) == 5
    command_uid = pydicom.dcmread(files[0], stop_before_pixels=True).file_meta
    assert "AE 'SCU'" in refusals[0] and "series <empty>" in refusals[0]
    assert f"<empty> (request: {command_uid.MediaStorageSOPInstanceUID})" in refusals[0]


@pytest.mark.usefixtures("chunked_send")
def test_mismatched_uids_are_refused_with_a900(scp: RunningSCP, tmp_path: Path) -> None:
    ds = make_ct_dataset()
    other_instance = write_part10_raw(
        tmp_path / "instance.dcm",
        encode_dataset(ds),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=generate_uid(),
        transfer_syntax=ExplicitVRLittleEndian,
    )
    other_class = write_part10_raw(
        tmp_path / "class.dcm",
        encode_dataset(ds),
        sop_class_uid=MRImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=ExplicitVRLittleEndian,
    )
    assoc = associate(scp.port)
    by_instance = assoc.send_c_store(other_instance)
    by_class = assoc.send_c_store(other_class)
    assoc.release()
    assert by_instance.Status == StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert by_instance.ErrorComment == "SOP Instance UID differs from Affected SOP Instance UID"
    assert by_class.Status == 0xA900
    assert by_class.ErrorComment == "SOP Class UID differs from Affected SOP Class UID"
    receiver = scp.receiver
    assert isinstance(receiver, DirectoryReceiver)
    assert receiver.instances == []


@pytest.mark.parametrize(
    ("keyword", "value", "comment", "tag"),
    [
        ("StudyInstanceUID", None, "Study Instance UID is missing", 0x0020000D),
        ("SeriesInstanceUID", "", "Series Instance UID is empty", 0x0020000E),
        ("SeriesInstanceUID", "1.2.03", "Series Instance UID has a component with a leading zero",
         0x0020000E),
        ("StudyInstanceUID", "1.2." + "3" * 64, "Study Instance UID is longer than 64 characters",
         0x0020000D),
    ],
)
def test_missing_or_invalid_study_series_uids_are_refused_with_a900(
    scp: RunningSCP, keyword: str, value: str | None, comment: str, tag: int
) -> None:
    ds = make_ct_dataset()
    if value is None:
        delattr(ds, keyword)
    else:
        set_unchecked(ds, tag, value)
    assoc = associate(scp.port)
    status = assoc.send_c_store(ds)
    follow_up = assoc.send_c_store(make_ct_dataset())
    assoc.release()
    assert status.Status == 0xA900
    assert status.ErrorComment == comment
    assert status.OffendingElement == tag
    assert follow_up.Status == 0x0000


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # pydicom decoding the command
def test_invalid_sop_instance_uid_is_refused_with_c000(scp: RunningSCP) -> None:
    ds = make_ct_dataset()
    set_unchecked(ds, 0x00080018, "1.2.0004")
    set_unchecked(ds.file_meta, 0x00020003, "1.2.0004")
    assoc = associate(scp.port)
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == StoreStatus.ERROR_CANNOT_UNDERSTAND
    assert status.ErrorComment == "SOP Instance UID has a component with a leading zero"


@pytest.mark.usefixtures("chunked_send")
def test_undecodable_data_set_is_refused_with_c210(scp: RunningSCP, tmp_path: Path) -> None:
    ds = make_ct_dataset()
    # Claims Deflated Explicit VR Little Endian but is not deflated.
    path = write_part10_raw(
        tmp_path / "bad-deflate.dcm",
        b"\xff" * 64 + encode_dataset(ds),
        sop_class_uid=CTImageStorage,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=DeflatedExplicitVRLittleEndian,
    )
    assoc = associate(scp.port)
    status = assoc.send_c_store(path)
    echo = assoc.send_c_echo()
    assoc.release()
    assert status.Status == StoreStatus.ERROR_CANNOT_DECODE == 0xC210
    assert status.ErrorComment == "Cannot decode the data set"
    assert echo.Status == 0x0000


def test_disk_full_answers_a700(
    scp_factory: Callable[..., RunningSCP], caplog: pytest.LogCaptureFixture
) -> None:
    receiver = RaisingReceiver(OSError(errno.ENOSPC, "No space left on device"))
    running = scp_factory(receiver)
    assoc = associate(running.port)
    with caplog.at_level(logging.ERROR, logger="pacs_node"):
        status = assoc.send_c_store(make_ct_dataset())
    assoc.release()
    assert receiver.calls == 1
    assert status.Status == StoreStatus.REFUSED_OUT_OF_RESOURCES == 0xA700
    assert status.ErrorComment == "Cannot store: No space left on device"
    (record,) = [r for r in caplog.records if r.name == "pacs_node.handlers"]
    assert record.levelno == logging.ERROR and record.exc_info is not None


def test_unexpected_receiver_error_answers_c211_and_scp_keeps_serving(
    scp_factory: Callable[..., RunningSCP], caplog: pytest.LogCaptureFixture
) -> None:
    running = scp_factory(RaisingReceiver(KeyError("bug in the receiver")))
    assoc = associate(running.port)
    with caplog.at_level(logging.ERROR, logger="pacs_node"):
        statuses = [assoc.send_c_store(make_ct_dataset()) for _ in range(2)]
        echo = assoc.send_c_echo()
    assoc.release()
    for status in statuses:
        assert status.Status == StoreStatus.ERROR_UNHANDLED_EXCEPTION == 0xC211
        assert status.ErrorComment == "Internal error while storing"
        assert "KeyError" not in status.ErrorComment
    assert echo.Status == 0x0000
    fresh = associate(running.port)
    assert fresh.is_established and fresh.send_c_echo().Status == 0x0000
    fresh.release()
    assert any(r.exc_info and r.exc_info[0] is KeyError for r in caplog.records)


class _FixedReceiver:
    """Answers every instance with one outcome."""

    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    def receive(self, instance: ReceivedInstance) -> object:
        return self.outcome


def test_receiver_outcome_status_and_comment_reach_the_peer(
    scp_factory: Callable[..., RunningSCP],
) -> None:
    refusing = scp_factory(
        _FixedReceiver(
            ReceiveOutcome(status=0xA701, disposition="refused", comment="Database unavailable")
        )
    )
    warning = scp_factory(
        _FixedReceiver(ReceiveOutcome(status=0xB000, disposition="stored", comment="coerced"))
    )
    broken = scp_factory(_FixedReceiver("not an outcome"))
    results = []
    for running in (refusing, warning, broken):
        assoc = associate(running.port)
        results.append(assoc.send_c_store(make_ct_dataset()))
        assoc.release()
    assert (results[0].Status, results[0].ErrorComment) == (0xA701, "Database unavailable")
    assert (results[1].Status, results[1].ErrorComment) == (0xB000, "coerced")
    assert results[2].Status == 0xC211


def test_no_phi_in_logs(scp: RunningSCP, caplog: pytest.LogCaptureFixture) -> None:
    good = make_ct_dataset()
    bad = make_ct_dataset()
    set_unchecked(bad, 0x0020000E, "Synthetic^Patient")  # the test SCU must not log it either
    with caplog.at_level(logging.DEBUG, logger="pacs_node"):
        assoc = associate(scp.port)
        assert assoc.send_c_store(good).Status == 0
        assert assoc.send_c_store(bad).Status == 0xA900
        assoc.release()
        time.sleep(0.3)  # the SCP logs the release in its own thread
    text = "\n".join(r.getMessage() for r in caplog.records)  # every logger, pydicom too
    assert good.SOPInstanceUID in text  # UIDs are logged...
    assert "Synthetic" not in text and "SYNTH-0001" not in text  # ...names and IDs never


# -- associations -----------------------------------------------------------------


def test_unknown_calling_ae_is_rejected_when_allow_list_set(
    scp_factory: Callable[..., RunningSCP], caplog: pytest.LogCaptureFixture
) -> None:
    running = scp_factory(allowed_calling_aes=["ORTHANC", "SCU@127.0.0.1"])
    with caplog.at_level(logging.INFO, logger="pacs_node"):
        rejected = associate(running.port, calling_ae="INTRUDER")
        allowed = associate(running.port, calling_ae="ORTHANC")
        allowed_host = associate(running.port, calling_ae="SCU")
    assert rejected.is_rejected and not rejected.is_established
    primitive = rejected.acceptor.primitive
    assert primitive is not None
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x01, 0x01, 0x03)
    for assoc in (allowed, allowed_host):
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        "AE 'INTRUDER' at 127.0.0.1" in m and "rejected" in m and "not in the allow-list" in m
        for m in messages
    )
    assert any("AE 'ORTHANC' at 127.0.0.1" in m and "accepted" in m for m in messages)


def test_calling_ae_from_another_host_is_rejected(
    scp_factory: Callable[..., RunningSCP],
) -> None:
    running = scp_factory(allowed_calling_aes=[CallingAE("SCU", "10.11.12.13")])
    assoc = associate(running.port, calling_ae="SCU")
    assert assoc.is_rejected
    assert assoc.acceptor.primitive is not None
    assert assoc.acceptor.primitive.diagnostic == 0x03


def test_wrong_called_ae_is_rejected(scp: RunningSCP) -> None:
    assoc = associate(scp.port, called_ae="SOMEONE_ELSE")
    assert assoc.is_rejected
    primitive = assoc.acceptor.primitive
    assert primitive is not None
    assert (primitive.result, primitive.result_source, primitive.diagnostic) == (0x01, 0x01, 0x07)


def test_called_ae_not_checked_when_not_required(
    scp_factory: Callable[..., RunningSCP],
) -> None:
    running = scp_factory(require_called_ae=False)
    assoc = associate(running.port, called_ae="ANYTHING")
    assert assoc.is_established
    assoc.release()


@pytest.mark.e2e
def test_dcmtk_rejections(scp_factory: Callable[..., RunningSCP]) -> None:
    running = scp_factory(allowed_calling_aes=["ECHOSCU"])
    host_port = ["127.0.0.1", str(running.port)]
    ok = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", NODE_AE, *host_port])
    calling = run_dcmtk(["echoscu", "-aet", "STRANGER", "-aec", NODE_AE, *host_port])
    called = run_dcmtk(["echoscu", "-aet", "ECHOSCU", "-aec", "NOT_US", *host_port])
    assert ok.returncode == 0, ok.stderr
    assert calling.returncode != 0
    assert "Calling AE Title Not Recognized" in calling.stderr
    assert called.returncode != 0
    assert "Called AE Title Not Recognized" in called.stderr


def test_stop_scp_aborts_associations_that_do_not_end(tmp_path: Path) -> None:
    ae = build_ae(NODE_AE, acse_timeout=5, dimse_timeout=5, network_timeout=30)
    port = free_port()
    server = start_scp(ae, "127.0.0.1", port, DirectoryReceiver(tmp_path))
    assoc = associate(port)
    assert assoc.is_established
    started = time.monotonic()
    assert stop_scp(server, timeout=0.3) == 1
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert assoc.is_aborted
    refused = associate(port)
    assert not refused.is_established
