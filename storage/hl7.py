"""The HL7 outbox: ORU^R01 messages waiting to be sent to RIS/worklist endpoints.

The worker builds the message and calls :func:`enqueue_hl7_message` in the
transaction that records the job's triage, so a message is never lost when
the node stops before sending it. The sender (:mod:`pacs_node.hl7.sender`)
polls :func:`due_hl7_messages`, sends each over MLLP outside a transaction
and records the outcome with :func:`record_hl7_attempt`: an accepted ACK marks
it ``sent``; anything else is retried with the DICOM export's backoff
(:func:`storage.exports.retry_after_failure`) until the policy's ``max_attempts``,
then ``failed``. :func:`hl7_study_context` reads what the message needs from
the stored study. Nothing here commits. Message texts hold PHI: never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import ExportStateError, NotFoundError
from storage.exports import retry_after_failure
from storage.models import HL7MessageRow, HL7MessageState, JobRow, SeriesRow, StudyRow
from storage.records import BackoffPolicy
from storage.transitions import check_now

LOGGER = logging.getLogger(__name__)

__all__ = [
    "HL7MessageRecord",
    "HL7StudyContext",
    "due_hl7_messages",
    "enqueue_hl7_message",
    "hl7_message_counts",
    "hl7_messages_for_job",
    "hl7_study_context",
    "job_study_uids",
    "record_hl7_attempt",
]


@dataclass(frozen=True)
class HL7MessageRecord:
    """One message of the outbox (a row of ``hl7_messages``)."""

    id: int
    job_id: int
    destination: str
    control_id: str
    message: str
    """ER7 text (PHI: never log it)."""
    state: HL7MessageState
    attempt_count: int
    next_attempt_at: datetime | None
    last_error: str | None
    ack_code: str | None
    created_at: datetime
    sent_at: datetime | None

    @classmethod
    def from_row(cls, row: HL7MessageRow) -> HL7MessageRecord:
        """Convert an ORM row."""
        return cls(
            id=row.id,
            job_id=row.job_id,
            destination=row.destination,
            control_id=row.control_id,
            message=row.message,
            state=HL7MessageState(row.state),
            attempt_count=row.attempt_count,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            ack_code=row.ack_code,
            created_at=row.created_at,
            sent_at=row.sent_at,
        )


@dataclass(frozen=True)
class HL7StudyContext:
    """What an ORU^R01 message needs from the stored study and series of a job.

    Patient ID and name are PHI: never logged.
    """

    job_id: int
    study_instance_uid: str
    series_instance_uid: str
    accession_number: str | None
    patient_id: str | None
    patient_name: str | None
    study_date: str | None
    study_description: str | None
    modality: str | None


def hl7_study_context(session: Session, job_id: int) -> HL7StudyContext:
    """The study and series attributes of a job, for its HL7 message.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    """
    found = session.execute(
        select(SeriesRow, StudyRow)
        .join(JobRow, JobRow.series_id == SeriesRow.id)
        .join(StudyRow, SeriesRow.study_id == StudyRow.id)
        .where(JobRow.id == job_id)
    ).one_or_none()
    if found is None:
        raise NotFoundError(f"job {job_id} does not exist")
    series, study = found
    return HL7StudyContext(
        job_id=job_id,
        study_instance_uid=study.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        accession_number=study.accession_number,
        patient_id=study.patient_id,
        patient_name=study.patient_name,
        study_date=study.study_date,
        study_description=study.study_description,
        modality=series.modality,
    )


def job_study_uids(session: Session, job_ids: set[int] | list[int]) -> dict[int, str]:
    """The Study Instance UID of each job, in one query.

    Only the UID is read (for log lines), none of the patient attributes that
    :func:`hl7_study_context` loads for building a message. Jobs that do not
    exist are left out of the result.
    """
    if not job_ids:
        return {}
    rows = session.execute(
        select(JobRow.id, StudyRow.study_instance_uid)
        .join(SeriesRow, JobRow.series_id == SeriesRow.id)
        .join(StudyRow, SeriesRow.study_id == StudyRow.id)
        .where(JobRow.id.in_(sorted(set(job_ids))))
    ).all()
    return {int(job_id): str(uid) for job_id, uid in rows}


def enqueue_hl7_message(
    session: Session,
    job_id: int,
    *,
    destination: str,
    control_id: str,
    message: str,
    now: datetime,
) -> HL7MessageRecord:
    """Put a message in the outbox, due at once.

    Older messages of the same job to the same destination that are still
    pending (a job retried after ``failed``) are superseded: they become
    ``failed`` with ``last_error`` naming the new message, so the receiver
    never gets a stale triage after the new one.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        The caller's session: the transaction that records the triage (not
        committed here).
    job_id: int
        The job the message reports.
    destination: str
        HL7 destination name (settings).
    control_id: str
        MSH-10 of the message (unique, at most 20 characters).
    message: str
        The ER7-encoded message.
    now: datetime.datetime
        Time (timezone-aware).

    Returns
    -------
    HL7MessageRecord
        The pending message.

    Raises
    ------
    ValueError
        If `control_id` is empty or longer than 20 characters, or `message`
        is empty.
    """
    check_now(now)
    if not control_id or len(control_id) > 20:
        raise ValueError(
            f'Argument "control_id" should have 1 to 20 characters, got {control_id!r}'
        )
    if not message:
        raise ValueError('Argument "message" should not be empty')
    older = session.scalars(
        select(HL7MessageRow)
        .where(
            HL7MessageRow.job_id == job_id,
            HL7MessageRow.destination == destination,
            HL7MessageRow.state == HL7MessageState.PENDING,
        )
        .with_for_update()
    ).all()
    for row in older:
        row.state = HL7MessageState.FAILED
        row.next_attempt_at = None
        row.last_error = f"superseded by message {control_id}"
    row = HL7MessageRow(
        job_id=job_id,
        destination=destination,
        control_id=control_id,
        message=message,
        state=HL7MessageState.PENDING,
        attempt_count=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    session.flush()
    return HL7MessageRecord.from_row(row)


def due_hl7_messages(session: Session, now: datetime, limit: int = 100) -> list[HL7MessageRecord]:
    """Pending messages whose next attempt is due, oldest first."""
    check_now(now)
    rows = session.scalars(
        select(HL7MessageRow)
        .where(
            HL7MessageRow.state == HL7MessageState.PENDING,
            HL7MessageRow.next_attempt_at <= now,
        )
        .order_by(HL7MessageRow.next_attempt_at, HL7MessageRow.id)
        .limit(max(0, int(limit)))
    ).all()
    return [HL7MessageRecord.from_row(row) for row in rows]


def record_hl7_attempt(
    session: Session,
    message_id: int,
    *,
    finished_at: datetime,
    success: bool,
    policy: BackoffPolicy,
    ack_code: str | None = None,
    error: str | None = None,
) -> HL7MessageRecord:
    """Record one send attempt and schedule the next or finish the message.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        The caller's session.
    message_id: int
        The message, ``pending``.
    finished_at: datetime.datetime
        When the attempt ended (timezone-aware).
    success: bool
        Whether the receiver accepted it (MSA-1 ``AA`` or ``CA``).
    policy: BackoffPolicy
        Retry policy (``config.RetryPolicy``, the DICOM export's).
    ack_code: str | None
        MSA-1 of the ACK, if one came.
    error: str | None
        What went wrong (connection refused, AE with its text...).

    Returns
    -------
    HL7MessageRecord
        The message after the attempt.

    Raises
    ------
    NotFoundError
        If the message does not exist.
    ExportStateError
        If it is not ``pending``.
    """
    check_now(finished_at, "finished_at")
    row = session.scalars(
        select(HL7MessageRow)
        .where(HL7MessageRow.id == message_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if row is None:
        raise NotFoundError(f"HL7 message {message_id} does not exist")
    if HL7MessageState(row.state) != HL7MessageState.PENDING:
        raise ExportStateError(
            f"HL7 message {message_id} is {HL7MessageState(row.state).value}, not pending"
        )
    row.attempt_count += 1
    row.ack_code = None if ack_code is None else ack_code[:2]
    if success:
        row.state = HL7MessageState.SENT
        row.sent_at = finished_at
        row.next_attempt_at = None
        row.last_error = None
    else:
        row.last_error = error or (f"ACK {ack_code}" if ack_code else "failed")
        row.next_attempt_at = retry_after_failure(policy, row.attempt_count, finished_at)
        if row.next_attempt_at is None:
            row.state = HL7MessageState.FAILED
            LOGGER.warning(
                "HL7 message %s (job %d) to %s gave up after %d attempt(s): %s",
                row.control_id,
                row.job_id,
                row.destination,
                row.attempt_count,
                row.last_error,
            )
    session.flush()
    return HL7MessageRecord.from_row(row)


def hl7_messages_for_job(session: Session, job_id: int) -> list[HL7MessageRecord]:
    """The outbox messages of a job, oldest first."""
    rows = session.scalars(
        select(HL7MessageRow).where(HL7MessageRow.job_id == job_id).order_by(HL7MessageRow.id)
    ).all()
    return [HL7MessageRecord.from_row(row) for row in rows]


def hl7_message_counts(session: Session) -> dict[HL7MessageState, int]:
    """Messages of the outbox by state (every state, zeros included)."""
    counts = dict.fromkeys(HL7MessageState, 0)
    rows = session.execute(
        select(HL7MessageRow.state, func.count()).group_by(HL7MessageRow.state)
    ).all()
    for state, count in rows:
        counts[HL7MessageState(state)] = int(count)
    return counts
