"""SeriesWatcher: quiet timer per series, then selection -> queued or rejected with a reason."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy.orm import Session, sessionmaker

from config import DEFAULT_UID_ROOT, SelectionRules
from pacs_node.loops import poll_interval_for
from pacs_node.receiver import StorageReceiver
from pacs_node.watcher import SeriesWatcher
from storage import (
    InstanceStore,
    JobRecord,
    JobState,
    ResultObjectSpec,
    claim_next_job,
    get_job,
    job_events,
    jobs_for_series,
    record_results,
    transition_job,
)
from tests.dicom_fixtures import make_basic_text_sr
from tests.node_fixtures import Clock, ct_series, migrated_database
from tests.node_fixtures import received_instance as received

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture()
def db_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated_database(tmp_path) as factory:
        yield factory


@pytest.fixture()
def instance_store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances")


def deliver(receiver: StorageReceiver, datasets: list[Dataset]) -> str:
    for ds in datasets:
        assert receiver.receive(received(ds)).status == 0
    return str(datasets[0].SeriesInstanceUID)


def only_job(factory: sessionmaker[Session], series_uid: str) -> JobRecord:
    with factory() as session:
        jobs = jobs_for_series(session, series_uid)
    assert len(jobs) == 1
    return jobs[0]


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture()
def receiver(
    instance_store: InstanceStore, db_factory: sessionmaker[Session], clock: Clock
) -> StorageReceiver:
    return StorageReceiver(instance_store, db_factory, clock=clock)


@pytest.fixture()
def watcher(
    instance_store: InstanceStore, db_factory: sessionmaker[Session], clock: Clock
) -> SeriesWatcher:
    return SeriesWatcher(
        db_factory, instance_store, quiet_time=1.0, rules=SelectionRules(),
        uid_root=DEFAULT_UID_ROOT, clock=clock,
    )


def test_quiet_timer_then_queued_with_reason(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    series = deliver(receiver, ct_series(24))
    clock.advance(0.5)
    assert watcher.poll_once() == 0
    assert only_job(db_factory, series).state is JobState.RECEIVED
    clock.advance(0.5)
    assert watcher.poll_once() == 1
    job = only_job(db_factory, series)
    assert job.state is JobState.QUEUED
    assert job.reason == "CT axial 24 slices 2.5 mm"
    with db_factory() as session:
        events = job_events(session, job.id)
    assert [(e.to_state, e.reason) for e in events] == [
        (JobState.RECEIVED, "instances received"),
        (JobState.COMPLETE, "quiet for 1 s, 24 instance(s)"),
        (JobState.QUEUED, "CT axial 24 slices 2.5 mm"),
    ]
    assert watcher.poll_once() == 0


def test_new_instance_restarts_the_quiet_timer(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    datasets = ct_series(21)
    series = deliver(receiver, datasets[:20])
    clock.advance(0.9)
    deliver(receiver, datasets[20:])
    clock.advance(0.9)
    assert watcher.poll_once() == 0
    clock.advance(0.1)
    assert watcher.poll_once() == 1
    assert only_job(db_factory, series).reason == "CT axial 21 slices 2.5 mm"


def test_three_slices_are_rejected(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    series = deliver(receiver, ct_series(3))
    clock.advance(1.0)
    watcher.poll_once()
    job = only_job(db_factory, series)
    assert (job.state, job.reason) == (JobState.REJECTED, "3 slices < minimum 20")


def test_non_ct_series_is_stored_but_rejected(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    series = deliver(receiver, [make_basic_text_sr()])
    clock.advance(1.0)
    watcher.poll_once()
    job = only_job(db_factory, series)
    assert (job.state, job.reason) == (JobState.REJECTED, "modality SR is not one of CT")


def test_own_result_series_recorded_in_the_database_is_rejected(
    receiver: StorageReceiver, instance_store: InstanceStore, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    # A series whose UID the node recorded as one of its results (the UID
    # root check is switched off to exercise the database check alone).
    source = deliver(receiver, ct_series(1))
    result_series = generate_uid()
    with db_factory.begin() as session:
        job = only_job(db_factory, source)
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=T0)
        transition_job(session, job.id, JobState.QUEUED, "test", now=T0)
        assert claim_next_job(session, "test-worker", T0) is not None
        record_results(
            session, job.id,
            [ResultObjectSpec("seg", "1.2.840.10008.5.1.4.1.1.66.4", generate_uid(),
                              result_series, generate_uid(), "x.dcm", "0" * 64, 1)],
            {}, [], T0,
        )
    echo = ct_series(24)
    for ds in echo:
        ds.SeriesInstanceUID = result_series
    deliver(receiver, echo)
    watcher = SeriesWatcher(db_factory, instance_store, quiet_time=1.0, rules=SelectionRules(),
                            uid_root="9.9.9.", clock=clock)
    clock.advance(1.0)
    watcher.poll_once()
    job = only_job(db_factory, result_series)
    assert (job.state, job.reason) == (
        JobState.REJECTED, "own output: a result series this node wrote"
    )


def test_series_under_the_uid_root_is_own_output(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    datasets = ct_series(24)
    for ds in datasets:
        ds.SeriesInstanceUID = generate_uid(prefix=DEFAULT_UID_ROOT) if ds is datasets[0] else \
            datasets[0].SeriesInstanceUID
    series = deliver(receiver, datasets)
    clock.advance(1.0)
    watcher.poll_once()
    job = only_job(db_factory, series)
    assert (job.state, job.reason) == (
        JobState.REJECTED, "own output: UIDs under the node's UID root"
    )


def test_instance_arriving_during_selection_sends_the_job_back(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    datasets = ct_series(25)
    series = deliver(receiver, datasets[:24])
    job = only_job(db_factory, series)
    with db_factory.begin() as session:
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=T0)
    deliver(receiver, datasets[24:])  # back to received before the decision
    assert watcher.evaluate(job.id) is None
    assert only_job(db_factory, series).state is JobState.RECEIVED
    clock.advance(1.0)
    watcher.poll_once()
    assert only_job(db_factory, series).reason == "CT axial 25 slices 2.5 mm"


def test_complete_job_left_by_a_restart_is_evaluated(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
) -> None:
    series = deliver(receiver, ct_series(24))
    job = only_job(db_factory, series)
    with db_factory.begin() as session:
        transition_job(session, job.id, JobState.COMPLETE, "quiet", now=T0)
    decided = watcher.evaluate(job.id)
    assert decided is not None and decided.state is JobState.QUEUED
    with db_factory() as session:
        assert get_job(session, job.id).state is JobState.QUEUED


def test_missing_file_rejects_with_the_file_name(
    receiver: StorageReceiver, watcher: SeriesWatcher, instance_store: InstanceStore,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    datasets = ct_series(24)
    series = deliver(receiver, datasets)
    gone = instance_store.path_for(datasets[3].StudyInstanceUID, series,
                                   datasets[3].SOPInstanceUID)
    gone.unlink()
    clock.advance(1.0)
    watcher.poll_once()
    job = only_job(db_factory, series)
    assert job.state is JobState.REJECTED
    assert job.reason == f"cannot read DICOM file {gone.name}: FileNotFoundError"


def test_thread_completes_series_and_wakes_the_workers(
    instance_store: InstanceStore, db_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    queued = threading.Event()
    receiver = StorageReceiver(instance_store, db_factory)
    watcher = SeriesWatcher(db_factory, instance_store, quiet_time=0.3, rules=SelectionRules(),
                            uid_root=DEFAULT_UID_ROOT, on_queued=queued.set)
    assert watcher.interval == pytest.approx(0.1)
    watcher.start()
    try:
        series = deliver(receiver, ct_series(20))
        assert queued.wait(10.0)
        assert only_job(db_factory, series).state is JobState.QUEUED
    finally:
        assert watcher.stop(5.0)
    assert not watcher.running


def test_poll_interval() -> None:
    assert poll_interval_for(30.0) == 0.5
    assert poll_interval_for(1.0) == 0.25
    assert poll_interval_for(0.1) == 0.1


def test_quiet_time_must_be_positive(
    instance_store: InstanceStore, db_factory: sessionmaker[Session]
) -> None:
    with pytest.raises(ValueError, match='"quiet_time"'):
        SeriesWatcher(db_factory, instance_store, quiet_time=0, rules=SelectionRules(),
                      uid_root=DEFAULT_UID_ROOT)


def test_series_left_received_by_a_crash_gets_a_whole_quiet_time_after_the_start(
    receiver: StorageReceiver, watcher: SeriesWatcher, db_factory: sessionmaker[Session],
    clock: Clock,
) -> None:
    # A transfer cut off by a crash: the series looks quiet for an hour when
    # the node comes back, but its sender could not send while it was down.
    series = deliver(receiver, ct_series(24))
    clock.advance(3600.0)
    watcher.start()  # sets the hold; the thread itself is not needed here
    assert watcher.stop(5.0)
    assert watcher.poll_once() == 0
    clock.advance(0.9)
    assert watcher.poll_once() == 0
    assert only_job(db_factory, series).state is JobState.RECEIVED
    clock.advance(0.1)
    assert watcher.poll_once() == 1
    assert only_job(db_factory, series).state is JobState.QUEUED
