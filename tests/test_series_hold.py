"""A series is not completed while an association that delivered it is still open.

Clock-driven unit tests of :class:`pacs_node.holds.SeriesHolds` with the
:class:`pacs_node.watcher.SeriesWatcher`, then network tests: an in-process
node and a real pynetdicom SCU that stalls in the middle of a series with its
association open.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from config import DEFAULT_UID_ROOT, SelectionRules, load_settings
from pacs_node.holds import SeriesHolds, association_label
from pacs_node.node import Node
from pacs_node.receiver import StorageReceiver
from pacs_node.watcher import SeriesWatcher
from storage import (
    InstanceStore,
    JobRecord,
    JobState,
    job_events,
    jobs_for_series,
    result_objects_for_job,
    result_summary,
)
from tests.node_fixtures import (
    Clock,
    assert_result_kinds,
    chest_datasets,
    ct_series,
    migrated_database,
    node_settings,
    tiny_model,
    wait_until,
)
from tests.node_fixtures import received_instance as received
from tests.peers import free_port

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
PACS = association_label("PACS", "10.0.0.7", 40112)


class FakeAssociation:
    """Stands in for a pynetdicom Association: hashable, alive until told otherwise."""

    def __init__(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive


@pytest.fixture()
def db_factory(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    with migrated_database(tmp_path) as factory:
        yield factory


@pytest.fixture()
def instance_store(tmp_path: Path) -> InstanceStore:
    return InstanceStore(tmp_path / "instances")


@pytest.fixture()
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture()
def holds(clock: Clock) -> SeriesHolds:
    return SeriesHolds(clock=clock)


@pytest.fixture()
def receiver(
    instance_store: InstanceStore, db_factory: sessionmaker[Session], clock: Clock
) -> StorageReceiver:
    return StorageReceiver(instance_store, db_factory, clock=clock)


def make_watcher(
    db_factory: sessionmaker[Session], instance_store: InstanceStore, clock: Clock,
    holds: SeriesHolds, max_series_hold: float = 600.0,
) -> SeriesWatcher:
    return SeriesWatcher(
        db_factory, instance_store, quiet_time=1.0, rules=SelectionRules(),
        uid_root=DEFAULT_UID_ROOT, clock=clock, holds=holds, max_series_hold=max_series_hold,
    )


@pytest.fixture()
def watcher(
    db_factory: sessionmaker[Session], instance_store: InstanceStore, clock: Clock,
    holds: SeriesHolds,
) -> SeriesWatcher:
    return make_watcher(db_factory, instance_store, clock, holds)


def deliver(
    receiver: StorageReceiver, holds: SeriesHolds, assoc: object, datasets: list[Dataset],
    label: str = PACS,
) -> str:
    """What the C-STORE handler does: store each instance, then note its association."""
    for ds in datasets:
        assert receiver.receive(received(ds)).status == 0
        holds.delivered(assoc, str(ds.SeriesInstanceUID), label)
    return str(datasets[0].SeriesInstanceUID)


def the_job(factory: sessionmaker[Session], series_uid: str) -> JobRecord:
    with factory() as session:
        jobs = jobs_for_series(session, series_uid)
    assert len(jobs) == 1
    return jobs[0]


def complete_reason(factory: sessionmaker[Session], job_id: int) -> str | None:
    with factory() as session:
        events = job_events(session, job_id)
    (reason,) = [e.reason for e in events if e.to_state is JobState.COMPLETE]
    return reason


# -- clock-driven: SeriesHolds + SeriesWatcher ---------------------------------


def test_stalled_open_association_holds_the_series_until_its_release(
    receiver: StorageReceiver, holds: SeriesHolds, watcher: SeriesWatcher,
    db_factory: sessionmaker[Session], clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    datasets = ct_series(24)
    assoc = FakeAssociation()
    series = deliver(receiver, holds, assoc, datasets[:12])
    caplog.set_level(logging.INFO, logger="pacs_node.watcher")
    clock.advance(5.0)  # stalled for 5 quiet times, association open
    assert watcher.poll_once() == 0
    assert watcher.poll_once() == 0
    assert the_job(db_factory, series).state is JobState.RECEIVED
    held = [r.getMessage() for r in caplog.records if "still open" in r.getMessage()]
    assert len(held) == 1  # logged once, not at every poll
    assert series in held[0] and PACS in held[0]
    deliver(receiver, holds, assoc, datasets[12:])
    clock.advance(3.0)  # the rest arrived; still open
    assert watcher.poll_once() == 0
    holds.ended(assoc)  # released now, 3 s after the last instance
    assert holds.open_count() == 0
    clock.advance(0.9)  # the quiet timer runs from the release
    assert watcher.poll_once() == 0
    clock.advance(0.1)
    assert watcher.poll_once() == 1
    job = the_job(db_factory, series)
    assert (job.state, job.reason) == (JobState.QUEUED, "CT axial 24 slices 2.5 mm")
    assert complete_reason(db_factory, job.id) == "quiet for 1 s, 24 instance(s)"


def test_release_right_after_the_last_instance_completes_one_quiet_time_later(
    receiver: StorageReceiver, holds: SeriesHolds, watcher: SeriesWatcher,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    assoc = FakeAssociation()
    series = deliver(receiver, holds, assoc, ct_series(24))
    holds.ended(assoc)
    clock.advance(0.99)
    assert watcher.poll_once() == 0
    clock.advance(0.01)
    assert watcher.poll_once() == 1
    assert the_job(db_factory, series).state is JobState.QUEUED


def test_series_continued_in_a_second_association_after_a_release_is_one_job(
    receiver: StorageReceiver, holds: SeriesHolds, watcher: SeriesWatcher,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    # DICOM allows a series over several associations: the first one stalls,
    # then releases; a new one brings the rest within the quiet time.
    datasets = ct_series(24)
    first, second = FakeAssociation(), FakeAssociation()
    series = deliver(receiver, holds, first, datasets[:12])
    clock.advance(10.0)
    assert watcher.poll_once() == 0
    holds.ended(first)
    clock.advance(0.5)
    assert watcher.poll_once() == 0  # quiet for 10.5 s, but released only 0.5 s ago
    deliver(receiver, holds, second, datasets[12:], association_label("PACS", "10.0.0.7", 40113))
    holds.ended(second)
    clock.advance(1.0)
    assert watcher.poll_once() == 1
    job = the_job(db_factory, series)
    assert complete_reason(db_factory, job.id) == "quiet for 1 s, 24 instance(s)"


def test_hold_ends_at_max_series_hold_with_a_warning_naming_series_and_association(
    receiver: StorageReceiver, holds: SeriesHolds, instance_store: InstanceStore,
    db_factory: sessionmaker[Session], clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    watcher = make_watcher(db_factory, instance_store, clock, holds, max_series_hold=10.0)
    series = deliver(receiver, holds, FakeAssociation(), ct_series(24))
    caplog.set_level(logging.WARNING, logger="pacs_node.watcher")
    clock.advance(9.9)
    assert watcher.poll_once() == 0
    assert not caplog.records
    clock.advance(0.1)
    assert watcher.poll_once() == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert series in warning.getMessage() and PACS in warning.getMessage()
    assert "max_series_hold 10 s" in warning.getMessage()
    job = the_job(db_factory, series)
    assert job.state is JobState.QUEUED
    assert complete_reason(db_factory, job.id) == (
        "quiet for 1 s, 24 instance(s); association still open after max_series_hold 10 s"
    )


def test_late_instance_on_the_open_association_after_the_cap_is_held_again(
    receiver: StorageReceiver, holds: SeriesHolds, instance_store: InstanceStore,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    watcher = make_watcher(db_factory, instance_store, clock, holds, max_series_hold=10.0)
    datasets = ct_series(24)
    assoc = FakeAssociation()
    series = deliver(receiver, holds, assoc, datasets[:23])
    clock.advance(10.0)
    assert watcher.poll_once() == 1  # capped: the quiet timer decided
    deliver(receiver, holds, assoc, datasets[23:])  # the job is queued: back to received
    assert the_job(db_factory, series).state is JobState.RECEIVED
    clock.advance(5.0)
    assert watcher.poll_once() == 0  # held again: the new quiet period is under the cap
    holds.ended(assoc)
    clock.advance(1.0)
    assert watcher.poll_once() == 1
    assert the_job(db_factory, series).reason == "CT axial 24 slices 2.5 mm"


def test_max_series_hold_zero_leaves_the_quiet_timer_alone(
    receiver: StorageReceiver, holds: SeriesHolds, instance_store: InstanceStore,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    watcher = make_watcher(db_factory, instance_store, clock, holds, max_series_hold=0.0)
    series = deliver(receiver, holds, FakeAssociation(), ct_series(24))
    clock.advance(1.0)
    assert watcher.poll_once() == 1
    assert the_job(db_factory, series).state is JobState.QUEUED


def test_association_that_delivered_another_series_does_not_hold_this_one(
    receiver: StorageReceiver, holds: SeriesHolds, watcher: SeriesWatcher,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    sender = FakeAssociation()
    held = deliver(receiver, holds, FakeAssociation(), ct_series(24))
    other = deliver(receiver, holds, sender, ct_series(20))
    holds.ended(sender)  # the other sender released
    clock.advance(1.0)
    assert watcher.poll_once() == 1
    assert the_job(db_factory, held).state is JobState.RECEIVED
    assert the_job(db_factory, other).state is JobState.QUEUED


def test_association_whose_thread_died_without_an_end_event_ends_when_found(
    receiver: StorageReceiver, holds: SeriesHolds, watcher: SeriesWatcher,
    db_factory: sessionmaker[Session], clock: Clock,
) -> None:
    assoc = FakeAssociation()
    series = deliver(receiver, holds, assoc, ct_series(24))
    clock.advance(5.0)
    assert watcher.poll_once() == 0
    assoc.alive = False  # e.g. pynetdicom's DUL thread died on malformed input
    assert watcher.poll_once() == 0  # found dead now: one quiet time from now
    assert holds.open_count() == 0
    clock.advance(1.0)
    assert watcher.poll_once() == 1
    assert the_job(db_factory, series).state is JobState.QUEUED


def test_holds_bookkeeping(holds: SeriesHolds, clock: Clock) -> None:
    assoc = FakeAssociation()
    holds.delivered(assoc, "1.2.3", PACS)
    holds.delivered(assoc, "1.2.3", PACS)
    holds.delivered(assoc, "1.2.4", PACS)
    assert holds.hold("1.2.3").open_associations == (PACS,)
    assert holds.hold("9.9").open_associations == () and holds.hold("9.9").ended_at is None
    holds.ended(assoc)
    holds.ended(assoc)  # idempotent: the end time stays the first one
    clock.advance(5.0)
    holds.ended(assoc)
    assert holds.hold("1.2.4").ended_at == T0 and not holds.hold("1.2.4").is_open
    holds.prune(clock() - timedelta(seconds=1))
    assert holds.hold("1.2.4").ended_at is None
    events = [event for event, _ in holds.handlers()]
    assert events == [evt.EVT_RELEASED, evt.EVT_ABORTED, evt.EVT_CONN_CLOSE]


def test_negative_max_series_hold_is_refused(
    db_factory: sessionmaker[Session], instance_store: InstanceStore
) -> None:
    with pytest.raises(ValueError, match='"max_series_hold"'):
        SeriesWatcher(db_factory, instance_store, quiet_time=1.0, rules=SelectionRules(),
                      uid_root=DEFAULT_UID_ROOT, max_series_hold=-1.0)


def test_max_series_hold_setting() -> None:
    assert load_settings(environ={}).max_series_hold == 600.0
    assert load_settings(environ={"DEEPSC_MAX_SERIES_HOLD": "0"}).max_series_hold == 0.0
    with pytest.raises(Exception, match="max_series_hold"):
        load_settings(environ={"DEEPSC_MAX_SERIES_HOLD": "-5"})


# -- network: a real pynetdicom SCU that stalls with its association open ------

QUIET = 1.0
STALL = 3.0  # three quiet times


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


def node_jobs(node: Node, series_uid: str) -> list[JobRecord]:
    assert node.session_factory is not None
    with node.session_factory() as session:
        return jobs_for_series(session, series_uid)


def open_association(node: Node):  # type: ignore[no-untyped-def]
    ae = AE("MODALITY")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title=node.settings.ae_title)
    assert assoc.is_established
    return assoc


def send(assoc, datasets: list[Dataset]) -> None:  # type: ignore[no-untyped-def]
    for ds in datasets:
        status = assoc.send_c_store(ds)
        assert status is not None and status.Status == 0


def stall_with_the_association_open(node: Node, series: str) -> None:
    """Wait STALL seconds; the series' job must stay ``received`` all along."""
    deadline = time.monotonic() + STALL
    while time.monotonic() < deadline:
        assert [job.state for job in node_jobs(node, series)] == [JobState.RECEIVED]
        time.sleep(0.2)


def test_scu_stalling_mid_series_with_the_association_open_gives_one_job(
    tmp_path: Path, model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pacs_node.watcher")
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port(), quiet_time=QUIET)
    datasets = chest_datasets(slices=24)
    series = str(datasets[0].SeriesInstanceUID)
    with Node(settings, intra_op_threads=1) as node:
        assoc = open_association(node)
        try:
            send(assoc, datasets[:12])
            assert node.holds.hold(series).is_open
            stall_with_the_association_open(node, series)
            send(assoc, datasets[12:])
        finally:
            assoc.release()
        wait_until(lambda: node.holds.open_count() == 0, 10, "the release to end the hold")
        assert node.wait_idle(60)
        jobs = node_jobs(node, series)
        assert [(j.state, j.run_count) for j in jobs] == [(JobState.EXPORTED, 1)]
        assert node.session_factory is not None
        with node.session_factory() as session:
            reasons = [(e.to_state, e.reason) for e in job_events(session, jobs[0].id)]
            objects = result_objects_for_job(session, jobs[0].id)
            summary = result_summary(session, jobs[0].id)
    assert (JobState.COMPLETE, f"quiet for {QUIET:g} s, 24 instance(s)") in reasons
    kinds = [o.kind for o in objects]
    assert_result_kinds(kinds, summary)
    seg = pydicom.dcmread(settings.results_dir / objects[0].file_path)
    referenced = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert {str(item.ReferencedSOPInstanceUID) for item in referenced} == {
        str(ds.SOPInstanceUID) for ds in datasets
    }
    assert len(list(settings.results_dir.rglob("*.dcm"))) == len(objects)
    assert [r for r in caplog.records if "still open" in r.getMessage()
            and series in r.getMessage() and "'MODALITY'" in r.getMessage()]


def test_without_the_hold_the_same_stall_splits_the_series(
    tmp_path: Path, model_dir: Path
) -> None:
    # Control: the scenario above really stalls past the quiet time.
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port(), quiet_time=QUIET,
                             max_series_hold=0.0)
    datasets = chest_datasets(slices=24)
    series = str(datasets[0].SeriesInstanceUID)
    with Node(settings, intra_op_threads=1) as node:
        assoc = open_association(node)
        try:
            send(assoc, datasets[:12])
            wait_until(lambda: node_jobs(node, series)[0].state is not JobState.RECEIVED,
                       STALL + 10, "the quiet timer to complete the first half")
            send(assoc, datasets[12:])
        finally:
            assoc.release()
        assert node.wait_idle(60)
        jobs = node_jobs(node, series)
    assert len(jobs) == 2
    assert (jobs[0].state, jobs[0].reason) == (JobState.REJECTED, "12 slices < minimum 20")


def test_abort_ends_the_hold(tmp_path: Path, model_dir: Path) -> None:
    settings = node_settings(tmp_path, model_dir=model_dir, port=free_port(), quiet_time=QUIET)
    datasets = chest_datasets(slices=12)
    series = str(datasets[0].SeriesInstanceUID)
    with Node(settings, intra_op_threads=1) as node:
        assoc = open_association(node)
        send(assoc, datasets)
        stall_with_the_association_open(node, series)
        aborted = time.monotonic()
        assoc.abort()
        wait_until(lambda: node_jobs(node, series)[0].state is JobState.REJECTED, 30,
                   "the aborted series to be decided")
        waited = time.monotonic() - aborted
        (job,) = node_jobs(node, series)
    assert job.reason == "12 slices < minimum 20"
    assert QUIET * 0.9 <= waited < QUIET + 10  # a quiet time after the abort, not 600 s
