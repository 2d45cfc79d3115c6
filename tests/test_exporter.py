"""Exporter: retries with backoff while a destination is down, delivers exactly once after."""
from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.orm import Session, sessionmaker

from config import AssociationTimeouts, Destination, RetryPolicy
from pacs_node.exporter import Exporter
from pacs_node.processing import dataset_bytes
from pacs_node.receiver import StorageReceiver
from storage import (
    ExportRecord,
    ExportStatus,
    InstanceStore,
    JobRecord,
    JobState,
    ResultObjectSpec,
    ResultStore,
    claim_next_job,
    exports_for_job,
    get_job,
    jobs_for_series,
    record_results,
    result_objects_for_job,
    transition_job,
)
from tests.dicom_fixtures import make_basic_text_sr, make_ct_dataset
from tests.node_fixtures import Clock, migrated_database, received_instance
from tests.node_fixtures import storescp_on as storescp
from tests.peers import free_port

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
POLICY = RetryPolicy(initial_backoff=0.5, max_backoff=10.0)
TIMEOUTS = AssociationTimeouts(acse=5, dimse=5, network=5, connection=2)


@pytest.fixture()
def db_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated_database(tmp_path) as factory:
        yield factory


@pytest.fixture()
def result_store(tmp_path: Path) -> ResultStore:
    return ResultStore(tmp_path / "results")


def written_job(
    factory: sessionmaker[Session], tmp_path: Path, store: ResultStore,
    destinations: list[Destination],
) -> JobRecord:
    """A job in ``written`` with two result files ("seg": a CT image, "sr": a text SR)."""
    source = make_ct_dataset()
    StorageReceiver(InstanceStore(tmp_path / "instances"), factory).receive(
        received_instance(source)
    )
    specs = []
    for kind, ds in (("seg", make_ct_dataset(study_instance_uid=source.StudyInstanceUID)),
                     ("sr", make_basic_text_sr(study_instance_uid=source.StudyInstanceUID))):
        stored = store.write(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                             dataset_bytes(ds))
        specs.append(ResultObjectSpec(
            kind, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID),
            str(ds.StudyInstanceUID), store.relative_path(stored.path), stored.sha256, stored.size,
        ))
    with factory.begin() as session:
        job = jobs_for_series(session, str(source.SeriesInstanceUID))[0]
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=T0)
        transition_job(session, job.id, JobState.QUEUED, "test", now=T0)
        assert claim_next_job(session, "test-worker", T0) is not None
        record_results(session, job.id, specs, {"test": True}, destinations, T0)
        return get_job(session, job.id)


def exports(factory: sessionmaker[Session], job_id: int) -> list[ExportRecord]:
    with factory() as session:
        return exports_for_job(session, job_id)


def job_state(factory: sessionmaker[Session], job_id: int) -> JobRecord:
    with factory() as session:
        return get_job(session, job_id)


@pytest.mark.e2e
def test_destination_down_then_up_delivers_each_object_exactly_once(
    tmp_path: Path, db_factory: sessionmaker[Session], result_store: ResultStore
) -> None:
    port = free_port()
    pacs = Destination("pacs", "STORESCP", "127.0.0.1", port)
    job = written_job(db_factory, tmp_path, result_store, [pacs])
    clock = Clock(T0)
    exporter = Exporter(db_factory, result_store, destinations=[pacs], calling_ae="DEEPSC",
                        timeouts=TIMEOUTS, policy=POLICY, clock=clock)

    assert exporter.poll_once() == 2  # attempt 1: nobody listens
    first = exports(db_factory, job.id)
    assert [(e.status, e.attempt_count) for e in first] == [(ExportStatus.PENDING, 1)] * 2
    assert all("cannot connect" in (e.last_error or "") for e in first)
    assert [e.next_attempt_at for e in first] == [T0 + timedelta(seconds=0.5)] * 2
    assert job_state(db_factory, job.id).state is JobState.WRITTEN

    clock.at(0.3)
    assert exporter.poll_once() == 0  # backoff: not due yet
    clock.at(0.5)
    assert exporter.poll_once() == 2  # attempt 2, still down: the delay doubles
    second = exports(db_factory, job.id)
    assert [e.attempt_count for e in second] == [2, 2]
    assert [e.next_attempt_at for e in second] == [T0 + timedelta(seconds=1.5)] * 2
    assert job_state(db_factory, job.id).state is JobState.WRITTEN

    with storescp(tmp_path / "pacs", port) as folder:
        clock.at(1.0)
        assert exporter.poll_once() == 0
        clock.at(1.5)
        assert exporter.poll_once() == 2
        clock.at(60.0)
        assert exporter.poll_once() == 0  # delivered: never sent again
        files = sorted(folder.iterdir())
    assert len(files) == 2
    received = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    with db_factory() as session:
        expected = {o.sop_instance_uid for o in result_objects_for_job(session, job.id)}
    assert received == expected
    final = exports(db_factory, job.id)
    assert [(e.status, e.attempt_count) for e in final] == [(ExportStatus.DELIVERED, 3)] * 2
    assert job_state(db_factory, job.id).state is JobState.EXPORTED


def test_gives_up_after_max_attempts_and_fails_the_job(
    tmp_path: Path, db_factory: sessionmaker[Session], result_store: ResultStore
) -> None:
    pacs = Destination("pacs", "STORESCP", "127.0.0.1", free_port(), objects=("sr",))
    job = written_job(db_factory, tmp_path, result_store, [pacs])
    clock = Clock(T0)
    exporter = Exporter(db_factory, result_store, destinations=[pacs], calling_ae="DEEPSC",
                        timeouts=TIMEOUTS, policy=RetryPolicy(max_attempts=2, initial_backoff=1),
                        clock=clock)
    assert exporter.poll_once() == 1  # only the SR goes to this destination
    clock.at(1.0)
    assert exporter.poll_once() == 1
    (export,) = exports(db_factory, job.id)
    assert (export.status, export.attempt_count, export.next_attempt_at) == (
        ExportStatus.FAILED, 2, None
    )
    done = job_state(db_factory, job.id)
    assert done.state is JobState.FAILED
    assert done.reason == "export failed: sr to pacs after 2 attempt(s)"


@pytest.mark.e2e
def test_changed_result_file_is_not_sent(
    tmp_path: Path, db_factory: sessionmaker[Session], result_store: ResultStore
) -> None:
    port = free_port()
    pacs = Destination("pacs", "STORESCP", "127.0.0.1", port)
    job = written_job(db_factory, tmp_path, result_store, [pacs])
    with db_factory() as session:
        seg = result_objects_for_job(session, job.id)[0]
    (result_store.root / seg.file_path).write_bytes(b"tampered")
    with storescp(tmp_path / "pacs", port) as folder:
        exporter = Exporter(db_factory, result_store, destinations=[pacs], calling_ae="DEEPSC",
                            timeouts=TIMEOUTS, policy=POLICY, clock=Clock(T0))
        assert exporter.poll_once() == 2
        files = sorted(folder.iterdir())
    assert len(files) == 1  # the SR only
    seg_export, sr_export = exports(db_factory, job.id)
    assert seg_export.status is ExportStatus.PENDING
    assert seg_export.last_error == (
        f"result file of {seg.sop_instance_uid} changed since it was recorded"
    )
    assert sr_export.status is ExportStatus.DELIVERED


def test_export_to_a_destination_no_longer_configured_is_retried_not_lost(
    tmp_path: Path, db_factory: sessionmaker[Session], result_store: ResultStore
) -> None:
    old = Destination("old", "OLD", "127.0.0.1", free_port())
    job = written_job(db_factory, tmp_path, result_store, [old])
    exporter = Exporter(db_factory, result_store, destinations=[], calling_ae="DEEPSC",
                        timeouts=TIMEOUTS, policy=POLICY, clock=Clock(T0))
    assert exporter.poll_once() == 2
    records = exports(db_factory, job.id)
    assert [(e.status, e.last_error) for e in records] == [
        (ExportStatus.PENDING, "destination 'old' is not configured")
    ] * 2
    assert job_state(db_factory, job.id).state is JobState.WRITTEN
