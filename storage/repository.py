"""The repository API of the node: instances, series, jobs, own output.

Every function takes a :class:`~sqlalchemy.orm.Session`, uses ``select()``
/ ``update()``, flushes when it needs ids, and never commits: the caller owns
the transaction (``with factory.begin() as session: ...``). Results are
frozen records (:mod:`storage.records`). Times are timezone-aware and passed
in (``now``) so that tests control them. The job functions live in
:mod:`storage.jobs` and results/exports in :mod:`storage.exports`; the job
functions are re-exported here.

Series and jobs
    Each instance updates its series' ``last_received_at`` and instance
    count. If the series' latest job is ``received``, it stays there (its
    quiet timer restarts); if it is ``complete`` or ``queued``, it returns
    to ``received``; if there is none, or it is ``running``, ``written``,
    ``exported``, ``rejected`` or ``failed``, a NEW job in ``received`` is
    created: late instances after processing start a new job for the
    series; results of the earlier job stay. A duplicate instance (same SOP
    Instance UID, same SHA-256) changes nothing.
Concurrency
    ``record_instance`` locks the series row (``FOR UPDATE`` on PostgreSQL;
    SQLite serialises writers) so that two associations delivering the same
    series never create two jobs.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select
from sqlalchemy.orm import Session

from storage.errors import NotFoundError
from storage.jobs import (
    RECOVERED_REASON,
    _job_select,
    _to_job_record,
    claim_next_job,
    due_jobs,
    get_job,
    heartbeat,
    job_events,
    recover_after_restart,
    status_overview,
    transition_job,
)
from storage.models import InstanceRow, JobEventRow, JobRow, ResultObjectRow, SeriesRow, StudyRow
from storage.records import (
    InstanceAttributes,
    InstanceOutcome,
    InstanceRecord,
    JobAction,
    JobRecord,
    RecordedInstance,
    SeriesRecord,
)
from storage.states import JobState
from storage.text import clip_text
from storage.transitions import apply_transition, check_now
from storage.uids import validate_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "RECOVERED_REASON",
    "claim_next_job",
    "due_jobs",
    "get_job",
    "get_series",
    "heartbeat",
    "is_own_output",
    "job_events",
    "jobs_for_series",
    "latest_job_for_series",
    "record_instance",
    "recover_after_restart",
    "series_instances",
    "status_overview",
    "transition_job",
]

#: Job states in which new instances keep or put the job back in ``received``.
_OPEN_STATES = frozenset({JobState.RECEIVED, JobState.COMPLETE, JobState.QUEUED})


def _insert_ignore(session: Session, model: type[Any], values: dict[str, Any], key: str) -> None:
    """INSERT a row unless one with the same unique `key` exists (race-free)."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        session.execute(
            pg_insert(model).values(values).on_conflict_do_nothing(index_elements=[key])
        )
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        session.execute(
            sqlite_insert(model).values(values).on_conflict_do_nothing(index_elements=[key])
        )
    else:  # pragma: no cover - only SQLite and PostgreSQL are supported
        column = getattr(model, key)
        if session.scalar(select(model.id).where(column == values[key])) is None:
            session.execute(insert(model).values(values))


def _insert_study(
    session: Session, instance: InstanceAttributes, now: datetime, query: Any
) -> StudyRow:
    """INSERT the study row of `instance` (race-free) and return it."""
    _insert_ignore(
        session,
        StudyRow,
        {
            "study_instance_uid": instance.study_instance_uid,
            "patient_id": clip_text(instance.patient_id, 64),
            "patient_name": clip_text(instance.patient_name, 324),
            "study_date": clip_text(instance.study_date, 8),
            "accession_number": clip_text(instance.accession_number, 16),
            "study_description": clip_text(instance.study_description, 64),
            "created_at": now,
            "updated_at": now,
        },
        "study_instance_uid",
    )
    row: StudyRow = session.scalars(query).one()
    return row


def _insert_series(
    session: Session, instance: InstanceAttributes, now: datetime, study: StudyRow, query: Any
) -> SeriesRow:
    """INSERT the series row of `instance` (race-free) and return it, locked."""
    _insert_ignore(
        session,
        SeriesRow,
        {
            "study_id": study.id,
            "series_instance_uid": instance.series_instance_uid,
            "modality": clip_text(instance.modality, 16),
            "series_description": clip_text(instance.series_description, 64),
            "series_number": instance.series_number,
            "frame_of_reference_uid": instance.frame_of_reference_uid,
            "instance_count": 0,
            "first_received_at": now,
            "last_received_at": now,
            "calling_ae_title": clip_text(instance.calling_ae_title, 16),
        },
        "series_instance_uid",
    )
    row: SeriesRow = session.scalars(query).one()
    return row


def _new_job(session: Session, series: SeriesRow, now: datetime, reason: str) -> JobRow:
    job = JobRow(
        series_id=series.id,
        state=JobState.RECEIVED,
        reason=None,
        created_at=now,
        updated_at=now,
        run_count=0,
    )
    session.add(job)
    session.flush()
    session.add(
        JobEventRow(
            job_id=job.id, from_state=None, to_state=JobState.RECEIVED, reason=reason, at=now
        )
    )
    return job


def record_instance(
    session: Session, instance: InstanceAttributes, now: datetime
) -> RecordedInstance:
    """Record an instance the file store has written, and update its series' job.

    Parameters
    ----------
    session: Session
        The caller's session (not committed here).
    instance: InstanceAttributes
        The instance's attributes, file path, hash and size.
    now: datetime
        Reception time (timezone-aware).

    Returns
    -------
    RecordedInstance
        ``stored`` / ``duplicate`` (same SOP Instance UID and hash: no-op) /
        ``replaced`` (same UID, other hash), and the series' job after the
        call with what happened to it (see the module docstring).

    Raises
    ------
    TypeError
        If `instance` is not an :class:`InstanceAttributes`.
    ValueError
        If `now` is naive.
    """
    if not isinstance(instance, InstanceAttributes):
        raise TypeError(
            f'Argument "instance" should be InstanceAttributes, got {type(instance).__name__}'
        )
    check_now(now)
    # Study and series rows exist for every instance but a series' first:
    # look them up first and INSERT only when missing (each INSERT ... ON
    # CONFLICT DO NOTHING cost about 1 ms of SQLAlchemy per instance; issue 6).
    study_query = select(StudyRow).where(
        StudyRow.study_instance_uid == instance.study_instance_uid
    )
    series_query = (
        select(SeriesRow)
        .where(SeriesRow.series_instance_uid == instance.series_instance_uid)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    study = session.scalars(study_query).one_or_none()
    if study is None:
        study = _insert_study(session, instance, now, study_query)
    # Lock the series: instances of one series are recorded one at a time.
    series = session.scalars(series_query).one_or_none()
    if series is None:
        series = _insert_series(session, instance, now, study, series_query)
    if series.study_id != study.id:
        LOGGER.warning(
            "series %s already belongs to another study than %s; keeping the first",
            instance.series_instance_uid,
            instance.study_instance_uid,
        )
    latest = _latest_job_row(session, series.id)

    existing = session.scalars(
        select(InstanceRow).where(InstanceRow.sop_instance_uid == instance.sop_instance_uid)
    ).one_or_none()
    previous_file_path: str | None = None
    if existing is not None and existing.sha256 == instance.sha256:
        LOGGER.debug("duplicate instance %s ignored", instance.sop_instance_uid)
        job = latest if latest is not None else _new_job(session, series, now, "instances received")
        session.flush()
        return RecordedInstance(
            outcome=InstanceOutcome.DUPLICATE,
            job_action=JobAction.UNCHANGED if latest is not None else JobAction.CREATED,
            job=get_job(session, job.id),
            series_instance_count=series.instance_count,
        )
    values = {
        "sop_class_uid": instance.sop_class_uid,
        "transfer_syntax_uid": instance.transfer_syntax_uid,
        "image_type": clip_text("\\".join(instance.image_type), 256) or None,
        "instance_number": instance.instance_number,
        "file_path": instance.file_path,
        "sha256": instance.sha256,
        "size": instance.size,
        "received_at": now,
        "calling_ae_title": clip_text(instance.calling_ae_title, 16),
    }
    if existing is None:
        outcome = InstanceOutcome.STORED
        session.add(
            InstanceRow(series_id=series.id, sop_instance_uid=instance.sop_instance_uid, **values)
        )
        series.instance_count += 1
    else:
        outcome = InstanceOutcome.REPLACED
        if existing.file_path != instance.file_path:
            previous_file_path = existing.file_path
        if existing.series_id != series.id:
            old_series = session.get(SeriesRow, existing.series_id)
            if old_series is not None:
                old_series.instance_count -= 1
            series.instance_count += 1
            existing.series_id = series.id
        for name, value in values.items():
            setattr(existing, name, value)
        LOGGER.info("instance %s replaced (content changed)", instance.sop_instance_uid)

    series.last_received_at = max(series.last_received_at, now)
    series.calling_ae_title = clip_text(instance.calling_ae_title, 16)
    for name, length in (("modality", 16), ("series_description", 64)):
        if getattr(series, name) is None and getattr(instance, name) is not None:
            setattr(series, name, clip_text(getattr(instance, name), length))

    if latest is None:
        job, action = _new_job(session, series, now, "instances received"), JobAction.CREATED
    elif latest.state == JobState.RECEIVED:
        job, action = latest, JobAction.EXTENDED
    elif latest.state in _OPEN_STATES:
        apply_transition(session, latest, JobState.RECEIVED, "new instance arrived", now)
        job, action = latest, JobAction.RESTARTED
    else:
        reason = f"late instances after job {latest.id} ({latest.state.value}) started a new job"
        job, action = _new_job(session, series, now, reason), JobAction.CREATED
        LOGGER.info("series %s: %s", instance.series_instance_uid, reason)
    session.flush()
    return RecordedInstance(
        outcome=outcome,
        job_action=action,
        job=get_job(session, job.id),
        series_instance_count=series.instance_count,
        previous_file_path=previous_file_path,
    )


def _latest_job_row(session: Session, series_id: int) -> JobRow | None:
    return session.scalars(
        select(JobRow)
        .where(JobRow.series_id == series_id)
        .order_by(JobRow.id.desc())
        .limit(1)
        .execution_options(populate_existing=True)
    ).first()


def get_series(session: Session, series_instance_uid: str) -> SeriesRecord:
    """Bookkeeping and attributes of a series.

    Raises
    ------
    InvalidUIDError
        If the UID is invalid.
    NotFoundError
        If the series is unknown.
    """
    uid = validate_uid(series_instance_uid, "series_instance_uid")
    found = session.execute(
        select(SeriesRow, StudyRow.study_instance_uid)
        .join(StudyRow, SeriesRow.study_id == StudyRow.id)
        .where(SeriesRow.series_instance_uid == uid)
    ).first()
    if found is None:
        raise NotFoundError(f"series {uid} is unknown")
    row, study_uid = found
    return SeriesRecord(
        id=row.id,
        series_instance_uid=row.series_instance_uid,
        study_instance_uid=study_uid,
        modality=row.modality,
        series_description=row.series_description,
        series_number=row.series_number,
        frame_of_reference_uid=row.frame_of_reference_uid,
        instance_count=row.instance_count,
        first_received_at=row.first_received_at,
        last_received_at=row.last_received_at,
        calling_ae_title=row.calling_ae_title,
    )


def series_instances(session: Session, series_instance_uid: str) -> list[InstanceRecord]:
    """The recorded instances of a series (by Instance Number, then UID).

    Raises
    ------
    InvalidUIDError
        If the UID is invalid.
    """
    uid = validate_uid(series_instance_uid, "series_instance_uid")
    rows = session.scalars(
        select(InstanceRow)
        .join(SeriesRow, InstanceRow.series_id == SeriesRow.id)
        .where(SeriesRow.series_instance_uid == uid)
        .order_by(InstanceRow.instance_number, InstanceRow.sop_instance_uid)
    ).all()
    return [
        InstanceRecord(
            sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax_uid=row.transfer_syntax_uid,
            image_type=tuple(row.image_type.split("\\")) if row.image_type else (),
            instance_number=row.instance_number,
            file_path=row.file_path,
            sha256=row.sha256,
            size=row.size,
            received_at=row.received_at,
        )
        for row in rows
    ]


def jobs_for_series(session: Session, series_instance_uid: str) -> list[JobRecord]:
    """Every job of a series, oldest first."""
    uid = validate_uid(series_instance_uid, "series_instance_uid")
    rows = session.execute(
        _job_select().where(SeriesRow.series_instance_uid == uid).order_by(JobRow.id)
    ).all()
    return [_to_job_record(row) for row in rows]


def latest_job_for_series(session: Session, series_instance_uid: str) -> JobRecord | None:
    """The newest job of a series, or ``None``."""
    jobs = jobs_for_series(session, series_instance_uid)
    return jobs[-1] if jobs else None


def is_own_output(
    session: Session,
    *,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> bool:
    """Whether a SOP instance or series is one the node wrote (never process it).

    The node also checks the UID root prefix (``Settings.uid_root``); this
    looks up the UIDs recorded with the results. Invalid UIDs are not ours.

    Raises
    ------
    ValueError
        If neither UID is given.
    """
    if sop_instance_uid is None and series_instance_uid is None:
        raise ValueError('Give "sop_instance_uid" or "series_instance_uid"')
    conditions = []
    if sop_instance_uid is not None:
        conditions.append(ResultObjectRow.sop_instance_uid == str(sop_instance_uid))
    if series_instance_uid is not None:
        conditions.append(ResultObjectRow.series_instance_uid == str(series_instance_uid))
    found = session.scalar(select(ResultObjectRow.id).where(or_(*conditions)).limit(1))
    return found is not None
