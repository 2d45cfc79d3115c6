"""Tests of the repository API (storage.repository, storage.jobs, storage.exports).

Every test runs on SQLite and on PostgreSQL, inside a rolled-back outer
transaction (``db_session``), except the concurrency tests, which need
committed rows seen by several connections (``fresh_engine_factory``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from config import Destination, RetryPolicy
from storage import (
    ExportStateError,
    ExportStatus,
    IllegalTransitionError,
    InstanceAttributes,
    InstanceOutcome,
    InvalidUIDError,
    JobAction,
    JobState,
    NotFoundError,
    ResultObjectSpec,
    claim_next_job,
    due_exports,
    due_jobs,
    exports_for_job,
    get_job,
    get_series,
    heartbeat,
    is_own_output,
    job_events,
    jobs_for_series,
    latest_job_for_series,
    make_session_factory,
    record_export_attempt,
    record_instance,
    record_results,
    recover_after_restart,
    result_objects_for_job,
    result_summary,
    series_instances,
    status_overview,
    transition_job,
    upgrade_database,
)
from storage.exports import NO_DESTINATIONS_REASON, backoff_delay
from storage.jobs import RECOVERED_REASON
from storage.models import ExportAttemptRow, InstanceRow


T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)
STUDY = "1.2.826.0.1.3680043.8.498.10"
SERIES = "1.2.826.0.1.3680043.8.498.10.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def _hash(n: int) -> str:
    return f"{n:064x}"


def _instance(
    number: int,
    series: str = SERIES,
    content: int | None = None,
    study: str = STUDY,
    **extra: object,
) -> InstanceAttributes:
    values: dict[str, object] = {
        "study_instance_uid": study,
        "series_instance_uid": series,
        "sop_instance_uid": f"{series}.{number}",
        "sop_class_uid": CT_CLASS,
        "file_path": f"{study}/{series}/{series}.{number}.dcm",
        "sha256": _hash(number if content is None else content),
        "size": 1000 + number,
        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
        "modality": "CT",
        "series_description": "ThoraxRoutine 8.0 B70f",
        "series_number": 2,
        "instance_number": number,
        "image_type": ("ORIGINAL", "PRIMARY", "AXIAL"),
        "patient_id": "PID-SECRET-4711",
        "patient_name": "Doe^Jane",
        "calling_ae_title": "ORTHANC",
    }
    values.update(extra)
    return InstanceAttributes(**values)  # type: ignore[arg-type]


def _to_running(session: Session, job_id: int, now: datetime = T0) -> None:
    transition_job(session, job_id, JobState.COMPLETE, now=now)
    transition_job(session, job_id, JobState.QUEUED, now=now)
    assert claim_next_job(session, "worker-1", now) is not None


def _objects(job_series: str = "2.25.1001") -> list[ResultObjectSpec]:
    return [
        ResultObjectSpec(
            "seg", SEG_CLASS, f"{job_series}.1", job_series, STUDY, "r/seg.dcm", _hash(1), 10
        ),
        ResultObjectSpec(
            "sr", SR_CLASS, "2.25.2002.1", "2.25.2002", STUDY, "r/sr.dcm", _hash(2), 20
        ),
    ]


@dataclass(frozen=True)
class Policy:
    max_attempts: int | None = 3
    initial_backoff: float = 10.0
    max_backoff: float = 25.0


class TestRecordInstance:
    def test_new_instances_create_one_job(self, db_session: Session) -> None:
        first = record_instance(db_session, _instance(1), T0)
        assert first.outcome == InstanceOutcome.STORED
        assert first.job_action == JobAction.CREATED
        assert first.job.state == JobState.RECEIVED
        assert first.job.series_instance_uid == SERIES
        assert first.job.study_instance_uid == STUDY
        second = record_instance(db_session, _instance(2), T0 + timedelta(seconds=1))
        assert second.outcome == InstanceOutcome.STORED
        assert second.job_action == JobAction.EXTENDED
        assert second.job.id == first.job.id
        assert second.series_instance_count == 2
        series = get_series(db_session, SERIES)
        assert series.instance_count == 2
        assert series.modality == "CT"
        assert series.first_received_at == T0
        assert series.last_received_at == T0 + timedelta(seconds=1)
        assert series.calling_ae_title == "ORTHANC"
        assert [i.sop_instance_uid for i in series_instances(db_session, SERIES)] == [
            f"{SERIES}.1",
            f"{SERIES}.2",
        ]
        assert series_instances(db_session, SERIES)[0].image_type == (
            "ORIGINAL",
            "PRIMARY",
            "AXIAL",
        )
        assert len(jobs_for_series(db_session, SERIES)) == 1

    def test_duplicate_same_hash_is_a_no_op(self, db_session: Session) -> None:
        first = record_instance(db_session, _instance(1), T0)
        again = record_instance(db_session, _instance(1), T0 + timedelta(seconds=30))
        assert again.outcome == InstanceOutcome.DUPLICATE
        assert again.job_action == JobAction.UNCHANGED
        assert again.job.id == first.job.id
        assert again.series_instance_count == 1
        assert get_series(db_session, SERIES).last_received_at == T0  # timer not restarted
        assert len(job_events(db_session, first.job.id)) == 1

    def test_different_hash_replaces(self, db_session: Session) -> None:
        record_instance(db_session, _instance(1), T0)
        replaced = record_instance(
            db_session, _instance(1, content=99, file_path="moved/1.dcm"), T0 + timedelta(seconds=5)
        )
        assert replaced.outcome == InstanceOutcome.REPLACED
        assert replaced.previous_file_path == f"{STUDY}/{SERIES}/{SERIES}.1.dcm"
        assert replaced.series_instance_count == 1
        (row,) = series_instances(db_session, SERIES)
        assert row.sha256 == _hash(99)
        assert row.file_path == "moved/1.dcm"
        assert db_session.scalar(select(func.count()).select_from(InstanceRow)) == 1

    def test_replaced_into_other_series_moves_the_count(self, db_session: Session) -> None:
        record_instance(db_session, _instance(1), T0)
        other = "1.2.826.0.1.3680043.8.498.10.9"
        moved = _instance(1, content=5)
        moved = InstanceAttributes(**{**moved.__dict__, "series_instance_uid": other})
        result = record_instance(db_session, moved, T0)
        assert result.outcome == InstanceOutcome.REPLACED
        assert get_series(db_session, SERIES).instance_count == 0
        assert get_series(db_session, other).instance_count == 1

    @pytest.mark.parametrize("state", [JobState.COMPLETE, JobState.QUEUED])
    def test_new_instance_returns_open_job_to_received(
        self, db_session: Session, state: JobState
    ) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        transition_job(db_session, job.id, JobState.COMPLETE, now=T0)
        if state == JobState.QUEUED:
            transition_job(db_session, job.id, JobState.QUEUED, now=T0)
        result = record_instance(db_session, _instance(2), T0 + timedelta(minutes=1))
        assert result.job_action == JobAction.RESTARTED
        assert result.job.id == job.id
        assert result.job.state == JobState.RECEIVED
        last = job_events(db_session, job.id)[-1]
        assert (last.from_state, last.to_state) == (state, JobState.RECEIVED)
        assert last.reason == "new instance arrived"

    @pytest.mark.parametrize(
        "state",
        [JobState.RUNNING, JobState.WRITTEN, JobState.EXPORTED, JobState.REJECTED, JobState.FAILED],
    )
    def test_late_instance_after_processing_starts_new_job(
        self, db_session: Session, state: JobState
    ) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        if state == JobState.REJECTED:
            transition_job(db_session, job.id, JobState.COMPLETE, now=T0)
            transition_job(db_session, job.id, JobState.REJECTED, "too few slices", now=T0)
        elif state == JobState.FAILED:
            transition_job(db_session, job.id, JobState.FAILED, "disk full", now=T0)
        else:
            _to_running(db_session, job.id)
            if state in (JobState.WRITTEN, JobState.EXPORTED):
                destinations = [Destination("pacs", "PACS", "127.0.0.1", 104)]
                if state == JobState.EXPORTED:
                    destinations = []  # nothing to send: exported at once
                record_results(db_session, job.id, _objects(), {"p": 1}, destinations, T0)
        assert get_job(db_session, job.id).state == state
        late = record_instance(db_session, _instance(2), T0 + timedelta(minutes=5))
        assert late.job_action == JobAction.CREATED
        assert late.job.id != job.id
        assert late.job.state == JobState.RECEIVED
        assert get_job(db_session, job.id).state == state  # earlier job untouched
        assert [j.id for j in jobs_for_series(db_session, SERIES)] == [job.id, late.job.id]
        assert latest_job_for_series(db_session, SERIES) == late.job
        assert "late instances" in (job_events(db_session, late.job.id)[0].reason or "")

    def test_phi_is_never_logged(
        self, db_session: Session, caplog: pytest.LogCaptureFixture
    ) -> None:
        with caplog.at_level(logging.DEBUG):
            record_instance(db_session, _instance(1), T0)
            record_instance(db_session, _instance(1, content=7), T0)
            record_instance(db_session, _instance(1, content=7), T0)
        assert caplog.records, "expected some log output to check"
        for record in caplog.records:
            message = record.getMessage()
            assert "PID-SECRET-4711" not in message and "Doe^Jane" not in message
        assert "Doe^Jane" not in repr(_instance(1))
        assert "PID-SECRET-4711" not in repr(_instance(1))

    def test_long_peer_text_is_clipped_not_fatal(self, db_session: Session) -> None:
        record_instance(db_session, _instance(1, series_description="x" * 100), T0)
        assert get_series(db_session, SERIES).series_description == "x" * 64

    def test_input_validation(self, db_session: Session) -> None:
        with pytest.raises(InvalidUIDError, match="sop_instance_uid"):
            _instance(1, sop_instance_uid="../etc")
        with pytest.raises(ValueError, match='"sha256"'):
            _instance(1, sha256="xyz")
        with pytest.raises(ValueError, match='"now"'):
            record_instance(db_session, _instance(1), datetime(2024, 1, 1))
        with pytest.raises(TypeError, match='"instance"'):
            record_instance(db_session, {"sop": 1}, T0)  # type: ignore[arg-type]
        with pytest.raises(NotFoundError):
            get_series(db_session, "1.2.3.999")


class TestDueJobs:
    def test_quiet_time(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        record_instance(db_session, _instance(2), T0 + timedelta(seconds=20))
        quiet = timedelta(seconds=30)
        assert due_jobs(db_session, T0 + timedelta(seconds=49), quiet) == []
        (due,) = due_jobs(db_session, T0 + timedelta(seconds=50), quiet)
        assert due.id == job.id
        assert due_jobs(db_session, T0 + timedelta(seconds=50), 30.0) == [due]
        # a new instance restarts the timer
        record_instance(db_session, _instance(3), T0 + timedelta(seconds=45))
        assert due_jobs(db_session, T0 + timedelta(seconds=60), quiet) == []
        # jobs in other states are not due
        transition_job(db_session, job.id, JobState.COMPLETE, now=T0 + timedelta(seconds=80))
        assert due_jobs(db_session, T0 + timedelta(hours=1), quiet) == []

    def test_order_and_limit(self, db_session: Session) -> None:
        other = "1.2.826.0.1.3680043.8.498.10.2"
        late = record_instance(db_session, _instance(1), T0 + timedelta(seconds=10)).job
        early = record_instance(db_session, _instance(1, series=other), T0).job
        due = due_jobs(db_session, T0 + timedelta(minutes=5), 30)
        assert [j.id for j in due] == [early.id, late.id]
        assert [j.id for j in due_jobs(db_session, T0 + timedelta(minutes=5), 30, limit=1)] == [
            early.id
        ]


class TestTransitions:
    def test_full_path_with_timestamps_and_audit_trail(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        t = [T0 + timedelta(seconds=s) for s in range(6)]
        transition_job(db_session, job.id, "complete", now=t[1])
        queued = transition_job(db_session, job.id, JobState.QUEUED, "candidate", now=t[2])
        assert queued.queued_at == t[2] and queued.reason == "candidate"
        running = claim_next_job(db_session, "host-a:1:worker-0", t[3])
        assert running is not None and running.id == job.id
        assert running.state == JobState.RUNNING
        assert running.started_at == t[3] and running.worker_id == "host-a:1:worker-0"
        assert running.run_count == 1
        record_results(db_session, job.id, _objects(), {"probabilities": [0.1, 0.2, 0.7]}, [], t[4])
        done = get_job(db_session, job.id)
        assert done.state == JobState.EXPORTED
        assert done.finished_at == t[4]
        events = job_events(db_session, job.id)
        assert [(e.from_state, e.to_state) for e in events] == [
            (None, JobState.RECEIVED),
            (JobState.RECEIVED, JobState.COMPLETE),
            (JobState.COMPLETE, JobState.QUEUED),
            (JobState.QUEUED, JobState.RUNNING),
            (JobState.RUNNING, JobState.WRITTEN),
            (JobState.WRITTEN, JobState.EXPORTED),
        ]
        assert [e.at for e in events] == [T0, t[1], t[2], t[3], t[4], t[4]]
        assert events[-1].reason == NO_DESTINATIONS_REASON

    @pytest.mark.parametrize(
        ("path", "illegal"),
        [
            ([], JobState.RUNNING),
            ([], JobState.WRITTEN),
            ([JobState.COMPLETE], JobState.EXPORTED),
            ([JobState.FAILED], JobState.RECEIVED),
        ],
    )
    def test_illegal_transition(
        self, db_session: Session, path: list[JobState], illegal: JobState
    ) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        for state in path:
            transition_job(db_session, job.id, state, "why", now=T0)
        before = get_job(db_session, job.id)
        with pytest.raises(IllegalTransitionError) as info:
            transition_job(db_session, job.id, illegal, "why", now=T0)
        assert info.value.to_state == illegal.value
        assert get_job(db_session, job.id) == before
        assert len(job_events(db_session, job.id)) == len(path) + 1

    def test_reason_required_for_rejected_and_failed(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        with pytest.raises(ValueError, match='"reason"'):
            transition_job(db_session, job.id, JobState.FAILED, now=T0)
        failed = transition_job(db_session, job.id, JobState.FAILED, "model crashed", now=T0)
        assert failed.reason == "model crashed"
        retried = transition_job(db_session, job.id, JobState.QUEUED, "operator retry", now=T0)
        assert retried.state == JobState.QUEUED

    def test_expected_state_guard(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        with pytest.raises(IllegalTransitionError):
            transition_job(
                db_session, job.id, JobState.COMPLETE, now=T0, expected_state=JobState.QUEUED
            )
        done = transition_job(
            db_session, job.id, JobState.COMPLETE, now=T0, expected_state="received"
        )
        assert done.state == JobState.COMPLETE

    def test_unknown_job_and_state(self, db_session: Session) -> None:
        with pytest.raises(NotFoundError):
            transition_job(db_session, 987654, JobState.COMPLETE, now=T0)
        with pytest.raises(NotFoundError):
            get_job(db_session, 987654)
        with pytest.raises(ValueError):
            transition_job(db_session, 1, "sleeping", now=T0)


class TestClaim:
    def test_claims_oldest_queued_then_none(self, db_session: Session) -> None:
        other = "1.2.826.0.1.3680043.8.498.10.2"
        a = record_instance(db_session, _instance(1), T0).job
        b = record_instance(db_session, _instance(1, series=other), T0).job
        for job, at in ((b, T0), (a, T0 + timedelta(seconds=1))):
            transition_job(db_session, job.id, JobState.COMPLETE, now=at)
            transition_job(db_session, job.id, JobState.QUEUED, now=at)
        first = claim_next_job(db_session, "w1", T0 + timedelta(seconds=2))
        second = claim_next_job(db_session, "w2", T0 + timedelta(seconds=2))
        assert first is not None and second is not None
        assert (first.id, first.worker_id) == (b.id, "w1")
        assert (second.id, second.worker_id) == (a.id, "w2")
        assert claim_next_job(db_session, "w3", T0) is None

    def test_worker_id_checked(self, db_session: Session) -> None:
        with pytest.raises(ValueError, match='"worker_id"'):
            claim_next_job(db_session, "", T0)

    def test_heartbeat(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        _to_running(db_session, job.id)
        assert heartbeat(db_session, job.id, "worker-1", T0 + timedelta(seconds=9)) is True
        assert get_job(db_session, job.id).heartbeat_at == T0 + timedelta(seconds=9)
        assert heartbeat(db_session, job.id, "someone-else", T0) is False
        transition_job(db_session, job.id, JobState.FAILED, "killed", now=T0)
        assert heartbeat(db_session, job.id, "worker-1", T0) is False


def _committed_queued_jobs(engine: Engine, count: int) -> set[int]:
    upgrade_database(engine)
    factory = make_session_factory(engine)
    ids: set[int] = set()
    with factory.begin() as session:
        for n in range(count):
            series = f"1.2.826.0.1.3680043.8.498.20.{n + 1}"
            job = record_instance(session, _instance(1, series=series), T0).job
            transition_job(session, job.id, JobState.COMPLETE, now=T0)
            transition_job(session, job.id, JobState.QUEUED, now=T0)
            ids.add(job.id)
    return ids


def test_concurrent_claims_never_share_a_job(fresh_engine_factory: Callable[[], Engine]) -> None:
    engine = fresh_engine_factory()
    queued = _committed_queued_jobs(engine, 12)
    factory = make_session_factory(engine)
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def worker(name: str) -> None:
        try:
            start.wait()
            while True:
                with factory.begin() as session:
                    job = claim_next_job(session, name, T0)
                if job is None:
                    return
                claimed[name].append(job.id)
        except BaseException as exc:  # reported below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert not set(claimed["a"]) & set(claimed["b"])
    assert sorted(claimed["a"] + claimed["b"]) == sorted(queued)
    with factory() as session:
        for job_id in queued:
            assert get_job(session, job_id).state == JobState.RUNNING


def test_claim_skips_a_job_locked_by_another_transaction(
    fresh_engine_factory: Callable[[], Engine],
) -> None:
    """Two open transactions claim at the same time: each gets a different job.

    PostgreSQL: the second skips the row the first has locked. SQLite: the
    second waits for the first's write lock, then sees the job taken.
    """
    engine = fresh_engine_factory()
    queued = _committed_queued_jobs(engine, 2)
    factory = make_session_factory(engine)
    first_session = factory()
    try:
        first = claim_next_job(first_session, "a", T0)
        assert first is not None
        result: list[int | None] = []

        def other() -> None:
            with factory.begin() as session:
                job = claim_next_job(session, "b", T0)
                result.append(None if job is None else job.id)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(timeout=0.5)
        if engine.dialect.name == "postgresql":
            assert not thread.is_alive(), "SKIP LOCKED should not wait"
        first_session.commit()
        thread.join(timeout=30)
        assert not thread.is_alive()
        assert result and result[0] is not None
        assert {first.id, result[0]} == queued
    finally:
        first_session.close()


class TestRecovery:
    def test_recover_after_restart(self, db_session: Session) -> None:
        series = [f"1.2.826.0.1.3680043.8.498.30.{n}" for n in range(1, 5)]
        jobs = [record_instance(db_session, _instance(1, series=s), T0).job for s in series]
        running, complete, written, received = jobs
        _to_running(db_session, running.id)
        transition_job(db_session, complete.id, JobState.COMPLETE, now=T0)
        _to_running(db_session, written.id)
        record_results(
            db_session,
            written.id,
            _objects(),
            {},
            [Destination("pacs", "PACS", "127.0.0.1", 104)],
            T0,
        )

        later = T0 + timedelta(hours=1)
        summary = recover_after_restart(db_session, later)
        assert summary.requeued == (running.id,)
        assert summary.to_evaluate == (complete.id,)
        assert summary.exporting == (written.id,)
        assert summary.pending_exports == 2
        recovered = get_job(db_session, running.id)
        assert recovered.state == JobState.QUEUED
        assert recovered.reason == RECOVERED_REASON
        assert recovered.queued_at == later
        assert job_events(db_session, running.id)[-1].reason == RECOVERED_REASON
        assert get_job(db_session, received.id).state == JobState.RECEIVED
        assert len(due_exports(db_session, later)) == 2  # pending exports kept
        again = claim_next_job(db_session, "w", later)
        assert again is not None and again.id == running.id and again.run_count == 2

    def test_stale_after_keeps_live_workers(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        _to_running(db_session, job.id)
        heartbeat(db_session, job.id, "worker-1", T0 + timedelta(seconds=50))
        fresh = recover_after_restart(db_session, T0 + timedelta(seconds=60), timedelta(seconds=30))
        assert fresh.requeued == ()
        stale = recover_after_restart(db_session, T0 + timedelta(seconds=90), timedelta(seconds=30))
        assert stale.requeued == (job.id,)


class TestResultsAndExports:
    DESTINATIONS = [
        Destination("pacs", "ORTHANC", "127.0.0.1", 4242),
        Destination("viewer", "VIEWER", "10.0.0.9", 104, objects=("seg",)),
    ]

    def _written_job(self, session: Session) -> int:
        job = record_instance(session, _instance(1), T0).job
        _to_running(session, job.id)
        return job.id

    def test_record_results_plans_exports_per_destination(self, db_session: Session) -> None:
        job_id = self._written_job(db_session)
        summary = {"classes": {"covid19": 0.8, "cap": 0.15, "normal": 0.05}, "lesion_ml": 12.5}
        objects = record_results(db_session, job_id, _objects(), summary, self.DESTINATIONS, T0)
        assert [o.kind for o in objects] == ["seg", "sr"]
        assert get_job(db_session, job_id).state == JobState.WRITTEN
        assert result_summary(db_session, job_id) == summary
        assert result_objects_for_job(db_session, job_id) == objects
        exports = exports_for_job(db_session, job_id)
        assert sorted((e.destination, e.result_object_id) for e in exports) == sorted(
            [("pacs", objects[0].id), ("pacs", objects[1].id), ("viewer", objects[0].id)]
        )
        assert all(e.status == ExportStatus.PENDING and e.next_attempt_at == T0 for e in exports)
        due = due_exports(db_session, T0)
        assert len(due) == 3
        assert {d.sop_instance_uid for d in due} == {"2.25.1001.1", "2.25.2002.1"}
        assert due_exports(db_session, T0 - timedelta(seconds=1)) == []

    def test_record_results_checks(self, db_session: Session) -> None:
        job = record_instance(db_session, _instance(1), T0).job
        with pytest.raises(IllegalTransitionError):
            record_results(db_session, job.id, _objects(), {}, [], T0)  # not running
        _to_running(db_session, job.id)
        with pytest.raises(ValueError, match='"objects"'):
            record_results(db_session, job.id, [], {}, [], T0)
        with pytest.raises(ValueError, match='"summary"'):
            record_results(db_session, job.id, _objects(), {"x": float("nan")}, [], T0)
        with pytest.raises(ValueError, match='"kind"'):
            ResultObjectSpec("SEG!", SEG_CLASS, "2.25.1", "2.25.2", STUDY, "p", _hash(1), 1)

    def test_backoff_then_delivery_makes_job_exported(self, db_session: Session) -> None:
        job_id = self._written_job(db_session)
        record_results(db_session, job_id, _objects(), {}, self.DESTINATIONS[:1], T0)
        policy = Policy(max_attempts=None)
        seg = next(d for d in due_exports(db_session, T0) if d.kind == "seg")
        expected_delays = [10.0, 20.0, 25.0, 25.0]  # initial 10, doubled, capped at 25
        finished = T0
        for attempt, delay in enumerate(expected_delays, start=1):
            record = record_export_attempt(
                db_session,
                seg.export_id,
                started_at=finished,
                finished_at=finished,
                success=False,
                policy=policy,
                error="connection refused",
            )
            assert record.attempt_count == attempt
            assert record.status == ExportStatus.PENDING
            assert record.next_attempt_at == finished + timedelta(seconds=delay)
            assert record.last_error == "connection refused"
            assert record.job_state == JobState.WRITTEN
            assert seg.export_id not in {d.export_id for d in due_exports(db_session, finished)}
            finished = record.next_attempt_at
        assert seg.export_id in {d.export_id for d in due_exports(db_session, finished)}
        ok = record_export_attempt(
            db_session,
            seg.export_id,
            started_at=finished,
            finished_at=finished + timedelta(seconds=1),
            success=True,
            status_code=0x0000,
            policy=policy,
        )
        assert ok.status == ExportStatus.DELIVERED and ok.next_attempt_at is None
        assert ok.job_state == JobState.WRITTEN  # the SR is not delivered yet
        (sr,) = due_exports(db_session, finished)
        last = record_export_attempt(
            db_session,
            sr.export_id,
            started_at=finished,
            finished_at=finished,
            success=True,
            status_code=0,
            policy=policy,
        )
        assert last.job_state == JobState.EXPORTED
        assert get_job(db_session, job_id).state == JobState.EXPORTED
        attempts = db_session.scalars(
            select(ExportAttemptRow)
            .where(ExportAttemptRow.export_id == seg.export_id)
            .order_by(ExportAttemptRow.attempt_number)
        ).all()
        assert [a.attempt_number for a in attempts] == [1, 2, 3, 4, 5]
        assert [a.success for a in attempts] == [False] * 4 + [True]
        assert attempts[-1].status_code == 0
        with pytest.raises(ExportStateError):
            record_export_attempt(
                db_session,
                seg.export_id,
                started_at=T0,
                finished_at=T0,
                success=True,
                policy=policy,
            )

    def test_giving_up_fails_the_job_with_reason(self, db_session: Session) -> None:
        job_id = self._written_job(db_session)
        record_results(db_session, job_id, _objects()[:1], {}, self.DESTINATIONS, T0)
        policy = Policy(max_attempts=2)
        exports = due_exports(db_session, T0)
        pacs = next(e for e in exports if e.destination == "pacs")
        viewer = next(e for e in exports if e.destination == "viewer")
        record_export_attempt(
            db_session, viewer.export_id, started_at=T0, finished_at=T0, success=True, policy=policy
        )
        first = record_export_attempt(
            db_session,
            pacs.export_id,
            started_at=T0,
            finished_at=T0,
            success=False,
            status_code=0xA700,
            policy=policy,
        )
        assert first.status == ExportStatus.PENDING and first.last_error == "status 0xA700"
        second = record_export_attempt(
            db_session,
            pacs.export_id,
            started_at=T0,
            finished_at=T0,
            success=False,
            status_code=0xA700,
            policy=policy,
        )
        assert second.status == ExportStatus.FAILED and second.next_attempt_at is None
        assert second.job_state == JobState.FAILED
        job = get_job(db_session, job_id)
        assert job.state == JobState.FAILED
        assert "pacs" in (job.reason or "") and "2 attempt" in (job.reason or "")

    def test_config_retry_policy_fits(self) -> None:
        policy = RetryPolicy(max_attempts=5, initial_backoff=2.0, max_backoff=30.0)
        assert [backoff_delay(policy, n) for n in (1, 2, 3, 4, 5, 100)] == [2, 4, 8, 16, 30, 30]
        assert [policy.delay(n) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 16, 30]
        with pytest.raises(ValueError, match='"attempts"'):
            backoff_delay(policy, 0)

    def test_own_output(self, db_session: Session) -> None:
        job_id = self._written_job(db_session)
        assert not is_own_output(db_session, sop_instance_uid="2.25.1001.1")
        record_results(db_session, job_id, _objects(), {}, [], T0)
        assert is_own_output(db_session, sop_instance_uid="2.25.1001.1")
        assert is_own_output(db_session, series_instance_uid="2.25.2002")
        assert not is_own_output(db_session, series_instance_uid=SERIES)
        assert not is_own_output(db_session, sop_instance_uid="not a uid")
        with pytest.raises(ValueError):
            is_own_output(db_session)


class TestStatus:
    def test_overview(self, db_session: Session) -> None:
        series = [f"1.2.826.0.1.3680043.8.498.40.{n}" for n in range(1, 4)]
        jobs = [record_instance(db_session, _instance(1, series=s), T0).job for s in series]
        transition_job(
            db_session, jobs[0].id, JobState.FAILED, "model crashed", now=T0 + timedelta(seconds=5)
        )
        transition_job(db_session, jobs[1].id, JobState.COMPLETE, now=T0 + timedelta(seconds=3))
        overview = status_overview(db_session, limit=2)
        assert overview.job_counts[JobState.FAILED] == 1
        assert overview.job_counts[JobState.COMPLETE] == 1
        assert overview.job_counts[JobState.RECEIVED] == 1
        assert overview.job_counts[JobState.EXPORTED] == 0
        assert set(overview.job_counts) == set(JobState)
        assert [j.id for j in overview.recent_jobs] == [jobs[0].id, jobs[1].id]
        assert overview.recent_jobs[0].reason == "model crashed"
        assert overview.recent_jobs[0].series_instance_uid == series[0]
        assert overview.export_counts == {status: 0 for status in ExportStatus}
        with pytest.raises(ValueError, match='"limit"'):
            status_overview(db_session, limit=-1)
