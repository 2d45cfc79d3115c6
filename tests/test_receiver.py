"""StorageReceiver: durable file and committed row before Success; duplicates, failures."""
from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from config import Destination
from pacs_node import scu
from pacs_node.ae import build_ae, start_scp, stop_scp
from pacs_node.receive import DispositionValues, ReceivedInstance
from pacs_node.receiver import CANNOT_STORE_COMMENT, StorageReceiver
from pacs_node.status import StoreStatus
from storage import (
    InstanceStore,
    JobState,
    NotFoundError,
    StoredFile,
    create_database_engine,
    get_series,
    job_events,
    jobs_for_series,
    make_session_factory,
    series_instances,
    transition_job,
)
from tests.dicom_fixtures import make_ct_dataset, write_dataset
from tests.node_fixtures import migrated_database
from tests.node_fixtures import received_instance as received

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture()
def factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated_database(tmp_path) as session_factory:
        yield session_factory


@pytest.fixture()
def store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances")


def test_stores_file_and_records_instance_and_job(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(store, factory, clock=lambda: NOW)
    ds = make_ct_dataset()
    instance = received(ds)
    outcome = receiver.receive(instance)
    assert outcome.status == StoreStatus.SUCCESS
    assert outcome.disposition is DispositionValues.STORED
    path = store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert path.read_bytes() == instance.encoded
    assert not list(store.temporary_files())
    with factory() as session:
        rows = series_instances(session, ds.SeriesInstanceUID)
        series = get_series(session, ds.SeriesInstanceUID)
        jobs = jobs_for_series(session, ds.SeriesInstanceUID)
    assert [row.sop_instance_uid for row in rows] == [ds.SOPInstanceUID]
    assert store.root / rows[0].file_path == path
    assert rows[0].size == len(instance.encoded)
    assert series.modality == "CT" and series.calling_ae_title == "MODALITY"
    assert [(job.state, job.created_at) for job in jobs] == [(JobState.RECEIVED, NOW)]


def test_duplicate_same_content_is_a_logged_no_op(
    store: InstanceStore, factory: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    times = iter([NOW, NOW + timedelta(seconds=10)])
    receiver = StorageReceiver(store, factory, clock=lambda: next(times))
    ds = make_ct_dataset()
    instance = received(ds)
    receiver.receive(instance)
    with caplog.at_level(logging.INFO, logger="pacs_node"):
        outcome = receiver.receive(instance)
    assert outcome.status == StoreStatus.SUCCESS
    assert outcome.disposition is DispositionValues.DUPLICATE
    assert any(
        "duplicate" in r.getMessage() and ds.SOPInstanceUID in r.getMessage()
        for r in caplog.records
    )
    with factory() as session:
        series = get_series(session, ds.SeriesInstanceUID)
        jobs = jobs_for_series(session, ds.SeriesInstanceUID)
        events = job_events(session, jobs[0].id)
    assert series.instance_count == 1
    assert series.last_received_at == NOW  # the quiet timer did not restart
    assert len(jobs) == 1 and len(events) == 1


def test_same_data_set_from_another_sender_is_a_duplicate(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(store, factory, clock=lambda: NOW)
    ds = make_ct_dataset()
    first = received(ds)
    ds.file_meta.SourceApplicationEntityTitle = "OTHERPACS"
    second = received(ds, calling_ae="OTHERPACS")
    assert first.encoded != second.encoded  # only the file meta differs
    assert receiver.receive(first).disposition is DispositionValues.STORED
    assert receiver.receive(second).disposition is DispositionValues.DUPLICATE
    ds.PatientWeight = 71.5  # the data set itself changes
    assert receiver.receive(received(ds)).disposition is DispositionValues.REPLACED
    with factory() as session:
        assert len(jobs_for_series(session, ds.SeriesInstanceUID)) == 1


def test_replaced_content_requeues_the_series(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(store, factory, clock=lambda: NOW)
    ds = make_ct_dataset()
    receiver.receive(received(ds))
    with factory.begin() as session:
        job = jobs_for_series(session, ds.SeriesInstanceUID)[0]
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=NOW)
        transition_job(session, job.id, JobState.QUEUED, "CT axial", now=NOW)
    changed = make_ct_dataset(
        sop_instance_uid=ds.SOPInstanceUID,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        frame_of_reference_uid=ds.FrameOfReferenceUID,
        seed=99,
    )
    replacement = received(changed)
    outcome = receiver.receive(replacement)
    assert outcome.disposition is DispositionValues.REPLACED
    assert outcome.status == StoreStatus.SUCCESS
    path = store.path_for(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert path.read_bytes() == replacement.encoded
    with factory() as session:
        jobs = jobs_for_series(session, ds.SeriesInstanceUID)
        events = job_events(session, jobs[0].id)
        rows = series_instances(session, ds.SeriesInstanceUID)
    assert [j.state for j in jobs] == [JobState.RECEIVED]
    assert (events[-1].from_state, events[-1].to_state) == (JobState.QUEUED, JobState.RECEIVED)
    assert events[-1].reason == "new instance arrived"
    assert len(rows) == 1 and rows[0].size == len(replacement.encoded)


def test_replaced_content_after_a_decision_starts_a_new_job(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(store, factory, clock=lambda: NOW)
    ds = make_ct_dataset()
    receiver.receive(received(ds))
    with factory.begin() as session:
        job = jobs_for_series(session, ds.SeriesInstanceUID)[0]
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=NOW)
        transition_job(session, job.id, JobState.REJECTED, "1 slices < minimum 20", now=NOW)
    ds.PixelData = bytes(len(ds.PixelData))
    assert receiver.receive(received(ds)).disposition is DispositionValues.REPLACED
    with factory() as session:
        states = [j.state for j in jobs_for_series(session, ds.SeriesInstanceUID)]
    assert states == [JobState.REJECTED, JobState.RECEIVED]


class FullDiskStore(InstanceStore):
    """A store whose disk is full (ENOSPC cannot be produced on this machine's disk)."""

    def write(self, *args: object, **kwargs: object) -> StoredFile:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_answers_out_of_resources_and_records_nothing(
    tmp_path: Path, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(FullDiskStore(tmp_path / "instances"), factory)
    ds = make_ct_dataset()
    outcome = receiver.receive(received(ds))
    assert outcome.status == StoreStatus.REFUSED_OUT_OF_RESOURCES == 0xA700
    assert outcome.comment == CANNOT_STORE_COMMENT
    assert outcome.disposition is DispositionValues.REFUSED
    with factory() as session, pytest.raises(NotFoundError):
        get_series(session, ds.SeriesInstanceUID)
    assert not (tmp_path / "instances").exists() or not any((tmp_path / "instances").rglob("*.dcm"))


def test_database_failure_answers_out_of_resources(tmp_path: Path, store: InstanceStore) -> None:
    unmigrated = create_database_engine(f"sqlite:///{tmp_path / 'empty.sqlite3'}")
    try:
        receiver = StorageReceiver(store, make_session_factory(unmigrated))
        outcome = receiver.receive(received(make_ct_dataset()))
    finally:
        unmigrated.dispose()
    assert outcome.status == 0xA700
    assert outcome.comment == CANNOT_STORE_COMMENT


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_unrecordable_attribute_is_refused_without_writing(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    ds = make_ct_dataset()
    ds.FrameOfReferenceUID = "1.2.03.4"
    outcome = StorageReceiver(store, factory).receive(received(ds))
    assert outcome.status == StoreStatus.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    assert "frame_of_reference_uid" in outcome.comment
    assert not store.exists(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)


def test_concurrent_deliveries_of_one_series_make_one_job(
    store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    receiver = StorageReceiver(store, factory)
    study, series = generate_uid(), generate_uid()
    instances = [
        received(make_ct_dataset(instance_number=n, study_instance_uid=study,
                                 series_instance_uid=series))
        for n in range(1, 13)
    ]
    outcomes: list[int] = []
    lock = threading.Lock()

    def deliver(part: list[ReceivedInstance]) -> None:
        for item in part:
            status = receiver.receive(item).status
            with lock:
                outcomes.append(status)

    threads = [threading.Thread(target=deliver, args=(instances[i::3],)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert outcomes == [0] * 12
    with factory() as session:
        assert len(jobs_for_series(session, series)) == 1
        assert get_series(session, series).instance_count == 12


def test_statuses_over_a_real_association(
    tmp_path: Path, store: InstanceStore, factory: sessionmaker[Session]
) -> None:
    good = [
        write_dataset(make_ct_dataset(instance_number=n), tmp_path / "in" / f"{n}.dcm")
        for n in (1, 2)
    ]
    server = start_scp(build_ae("DEEPSC"), "127.0.0.1", 0, StorageReceiver(store, factory))
    full = start_scp(
        build_ae("DEEPSC"), "127.0.0.1", 0, StorageReceiver(FullDiskStore(tmp_path / "x"), factory)
    )
    try:
        report = scu.send(
            Destination("node", "DEEPSC", "127.0.0.1", server.server_address[1]),
            good, calling_ae="TESTSCU",
        )
        refused = scu.send(
            Destination("full", "DEEPSC", "127.0.0.1", full.server_address[1]),
            good[:1], calling_ae="TESTSCU",
        )
    finally:
        stop_scp(server)
        stop_scp(full)
    assert [item.status for item in report.per_item] == [0x0000, 0x0000]
    assert [item.status for item in refused.per_item] == [0xA700]
    assert CANNOT_STORE_COMMENT in refused.per_item[0].error
    with factory() as session:
        for path in good:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            rows = series_instances(session, header.SeriesInstanceUID)
            assert [r.sop_instance_uid for r in rows] == [header.SOPInstanceUID]
            assert rows[0].transfer_syntax_uid is not None
