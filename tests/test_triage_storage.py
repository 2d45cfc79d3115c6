"""Storage of triage flags and of the HL7 outbox (migration 0003, triage and hl7 modules).

Run on SQLite and on the local PostgreSQL (``tests.storage_fixtures``).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from pydicom.uid import CTImageStorage
from sqlalchemy import Engine, delete, inspect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage import (
    ExportStateError,
    HL7MessageState,
    InstanceAttributes,
    NotFoundError,
    TriageRecord,
    current_revision,
    downgrade_database,
    due_hl7_messages,
    enqueue_hl7_message,
    get_triage,
    hl7_messages_for_job,
    hl7_study_context,
    record_hl7_attempt,
    record_instance,
    record_triage,
    triage_for_jobs,
    upgrade_database,
)
from storage.models import JobRow, TriageRow

T0 = datetime(2026, 11, 26, 23, 0, tzinfo=timezone.utc)
STUDY = "1.2.826.0.1.3680043.8.498.91"


class Policy:
    """The DICOM export's retry policy, small."""

    max_attempts = 3
    initial_backoff = 2.0
    max_backoff = 5.0


def _job(session: Session, n: int, accession: str | None = "ACC123") -> int:
    series = f"{STUDY}.{n}"
    return record_instance(session, InstanceAttributes(
        study_instance_uid=STUDY, series_instance_uid=series, sop_instance_uid=f"{series}.1",
        sop_class_uid=str(CTImageStorage), file_path=f"a/{n}.dcm", sha256="0" * 64, size=10,
        patient_id="PAT-7", patient_name="Doe^Jane", accession_number=accession,
        modality="CT",
    ), T0).job.id


def test_migration_0003_upgrades_and_downgrades(
    fresh_engine_factory: Callable[[], Engine],
) -> None:
    engine = fresh_engine_factory()
    upgrade_database(engine, "0002")
    assert "triage" not in inspect(engine).get_table_names()
    upgrade_database(engine)
    assert current_revision(engine) == "0003"
    inspector = inspect(engine)
    assert {c["name"] for c in inspector.get_columns("triage")} == {
        "id", "job_id", "flag", "priority", "rank", "rule", "text", "created_at"}
    assert {"id", "job_id", "destination", "control_id", "message", "state", "attempt_count",
            "next_attempt_at", "last_error", "ack_code", "created_at", "sent_at"} == {
        c["name"] for c in inspector.get_columns("hl7_messages")}
    downgrade_database(engine, "0002")
    assert not {"triage", "hl7_messages"} & set(inspect(engine).get_table_names())
    assert current_revision(engine) == "0002"


def test_record_get_and_replace_triage(db_session: Session) -> None:
    first, second, third = (_job(db_session, n) for n in (1, 2, 3))
    record = record_triage(db_session, first, flag="COVID-19 pattern", priority="urgent",
                           rule="covid", text="COVID-19 pattern (p=0.91)\nlesions 12 mL", now=T0)
    assert isinstance(record, TriageRecord)
    assert (record.rank, record.text, record.created_at) == (
        1, "COVID-19 pattern (p=0.91) lesions 12 mL", T0)
    record_triage(db_session, second, flag="no pneumonia detected", priority="routine",
                  rule="normal", text="no pneumonia detected", now=T0)
    assert get_triage(db_session, first) == record
    assert get_triage(db_session, third) is None
    found = triage_for_jobs(db_session, [first, second, third, 10**8])
    assert sorted(found) == [first, second]
    assert (found[second].priority, found[second].rank) == ("routine", 3)
    assert triage_for_jobs(db_session, []) == {}
    # A retried job is triaged again: the row is replaced, not duplicated.
    later = T0 + timedelta(minutes=5)
    replaced = record_triage(db_session, first, flag="not analysed: model crashed",
                             priority="low", rule="not-analysed", text="not analysed", now=later)
    assert (replaced.rank, replaced.created_at) == (4, later)
    assert get_triage(db_session, first) == replaced


def test_triage_validation(db_session: Session) -> None:
    job = _job(db_session, 4)
    with pytest.raises(ValueError, match='"priority"'):
        record_triage(db_session, job, flag="x", priority="stat", rule="r", text="t", now=T0)
    with pytest.raises(ValueError, match='"text"'):
        record_triage(db_session, job, flag="x", priority="low", rule="r", text=" ", now=T0)
    with pytest.raises(ValueError, match='"now"'):
        record_triage(db_session, job, flag="x", priority="low", rule="r", text="t",
                      now=datetime(2026, 1, 1))
    with pytest.raises(NotFoundError):
        record_triage(db_session, 10**8, flag="x", priority="low", rule="r", text="t", now=T0)
    long = record_triage(db_session, job, flag="f" * 300, priority="low", rule="r", text="t",
                         now=T0)
    assert len(long.flag) == 128


def test_triage_unique_per_job_and_deleted_with_the_job(db_session: Session) -> None:
    job = _job(db_session, 5)
    record_triage(db_session, job, flag="x", priority="high", rule="r", text="t", now=T0)
    with pytest.raises(IntegrityError):
        with db_session.begin_nested():
            db_session.add(TriageRow(job_id=job, flag="y", priority="low", rank=4, rule="r",
                                     text="t", created_at=T0))
            db_session.flush()
    db_session.execute(delete(JobRow).where(JobRow.id == job))
    db_session.expire_all()
    assert get_triage(db_session, job) is None


def test_study_context_for_the_message(db_session: Session) -> None:
    job = _job(db_session, 6)
    context = hl7_study_context(db_session, job)
    assert (context.study_instance_uid, context.series_instance_uid, context.accession_number,
            context.patient_id, context.patient_name, context.modality) == (
        STUDY, f"{STUDY}.6", "ACC123", "PAT-7", "Doe^Jane", "CT")
    with pytest.raises(NotFoundError):
        hl7_study_context(db_session, 10**8)


def test_outbox_retries_with_backoff_then_sends(db_session: Session) -> None:
    job = _job(db_session, 7)
    message = enqueue_hl7_message(db_session, job, destination="ris", control_id="DSC0000001",
                                  message="MSH|^~\\&|...", now=T0)
    assert message.state == HL7MessageState.PENDING and message.next_attempt_at == T0
    assert [m.id for m in due_hl7_messages(db_session, T0)] == [message.id]
    failed = record_hl7_attempt(db_session, message.id, finished_at=T0, success=False,
                                policy=Policy(), ack_code="AE", error="AE: busy")
    assert (failed.state, failed.attempt_count, failed.ack_code, failed.last_error) == (
        HL7MessageState.PENDING, 1, "AE", "AE: busy")
    assert failed.next_attempt_at == T0 + timedelta(seconds=2)
    assert due_hl7_messages(db_session, T0 + timedelta(seconds=1)) == []
    second = record_hl7_attempt(db_session, message.id, finished_at=T0 + timedelta(seconds=2),
                                success=False, policy=Policy(), error="connection refused")
    assert second.next_attempt_at == T0 + timedelta(seconds=6)  # 2 s * 2
    assert (second.ack_code, second.last_error) == (None, "connection refused")
    sent_at = T0 + timedelta(seconds=6)
    sent = record_hl7_attempt(db_session, message.id, finished_at=sent_at, success=True,
                              policy=Policy(), ack_code="AA")
    assert (sent.state, sent.sent_at, sent.next_attempt_at, sent.last_error) == (
        HL7MessageState.SENT, sent_at, None, None)
    assert due_hl7_messages(db_session, sent_at + timedelta(hours=1)) == []
    with pytest.raises(ExportStateError):
        record_hl7_attempt(db_session, message.id, finished_at=sent_at, success=True,
                           policy=Policy())
    assert hl7_messages_for_job(db_session, job) == [sent]


def test_outbox_gives_up_after_max_attempts(db_session: Session) -> None:
    job = _job(db_session, 8)
    message = enqueue_hl7_message(db_session, job, destination="ris", control_id="DSC0000002",
                                  message="MSH|^~\\&|...", now=T0)
    for attempt in range(3):
        record = record_hl7_attempt(db_session, message.id, finished_at=T0, success=False,
                                    policy=Policy(), ack_code="AR")
    assert (record.state, record.attempt_count, record.next_attempt_at, record.last_error) == (
        HL7MessageState.FAILED, 3, None, "ACK AR")
    with pytest.raises(NotFoundError):
        record_hl7_attempt(db_session, 10**8, finished_at=T0, success=True, policy=Policy())
    with pytest.raises(ValueError, match='"control_id"'):
        enqueue_hl7_message(db_session, job, destination="ris", control_id="X" * 21,
                            message="MSH", now=T0)
    with pytest.raises(IntegrityError):  # control ids are unique
        with db_session.begin_nested():
            enqueue_hl7_message(db_session, job, destination="ris", control_id="DSC0000002",
                                message="MSH", now=T0)


def test_a_new_message_for_the_same_job_and_destination_supersedes_a_pending_one(
    db_session: Session,
) -> None:
    job = _job(db_session, 9)
    first = enqueue_hl7_message(db_session, job, destination="ris", control_id="DSC0000003",
                                message="MSH|1", now=T0)
    other = enqueue_hl7_message(db_session, job, destination="other", control_id="DSC0000004",
                                message="MSH|1", now=T0)
    second = enqueue_hl7_message(db_session, job, destination="ris", control_id="DSC0000005",
                                 message="MSH|2", now=T0)
    by_id = {m.id: m for m in hl7_messages_for_job(db_session, job)}
    assert (by_id[first.id].state, by_id[first.id].last_error) == (
        HL7MessageState.FAILED, "superseded by message DSC0000005")
    assert by_id[other.id].state is HL7MessageState.PENDING
    assert by_id[second.id].state is HL7MessageState.PENDING
    assert [m.id for m in due_hl7_messages(db_session, T0)] == [other.id, second.id]
