"""Repository functions for results and their export to destinations.

A worker that has written the SEG and SR files calls :func:`record_results`
(the job goes ``running -> written`` and one export row per result object
and destination is created). The sender polls :func:`due_exports`, sends
each object, and records every attempt with :func:`record_export_attempt`;
failures are retried with exponential backoff
(``min(max_backoff, initial_backoff * 2 ** (attempts - 1))`` seconds). When
every export of a job is delivered, the job becomes ``exported``; when none
is pending any more and one gave up (``max_attempts``), the job becomes
``failed`` with a reason naming the destination. A job without any export
(no destination configured) becomes ``exported`` at once, with that reason.

As in :mod:`storage.repository`, nothing here commits. The sender should
send outside a transaction and record the attempt in a short one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import ExportStateError, NotFoundError
from storage.models import (
    ExportAttemptRow,
    ExportRow,
    ExportStatus,
    JobRow,
    ResultObjectRow,
    ResultRow,
)
from storage.records import (
    BackoffPolicy,
    DueExport,
    ExportRecord,
    ExportTarget,
    ResultObjectRecord,
    ResultObjectSpec,
)
from storage.states import JobState
from storage.transitions import apply_transition, check_now

LOGGER = logging.getLogger(__name__)

__all__ = [
    "recorded_result_paths",
    "NO_DESTINATIONS_REASON",
    "backoff_delay",
    "due_exports",
    "exports_for_job",
    "record_export_attempt",
    "record_results",
    "result_objects_for_job",
    "result_summary",
    "update_job_export_state",
]

#: Reason of a job that became ``exported`` without any destination.
NO_DESTINATIONS_REASON = "no destinations configured"


def backoff_delay(policy: BackoffPolicy, attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts.

    Raises
    ------
    ValueError
        If `attempts` is smaller than 1.
    """
    if attempts < 1:
        raise ValueError(f'Argument "attempts" should be >= 1, got {attempts}')
    return float(min(policy.max_backoff, policy.initial_backoff * 2.0 ** min(attempts - 1, 60)))


def retry_after_failure(
    policy: BackoffPolicy, attempts: int, finished_at: datetime
) -> datetime | None:
    """When to try again after the failed attempt number `attempts`.

    Shared by the DICOM export and the HL7 outbox (:mod:`storage.hl7`).

    Parameters
    ----------
    policy: BackoffPolicy
        Retry policy (``config.RetryPolicy``).
    attempts: int
        Attempts made so far, the failed one included.
    finished_at: datetime
        When the failed attempt ended.

    Returns
    -------
    datetime | None
        ``finished_at`` plus :func:`backoff_delay`; ``None`` when
        ``policy.max_attempts`` is reached (give up).
    """
    if policy.max_attempts is not None and attempts >= policy.max_attempts:
        return None
    return finished_at + timedelta(seconds=backoff_delay(policy, attempts))


def _locked_job(session: Session, job_id: int) -> JobRow:
    job = session.scalars(
        select(JobRow)
        .where(JobRow.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return job


def _object_record(row: ResultObjectRow) -> ResultObjectRecord:
    return ResultObjectRecord(
        id=row.id,
        job_id=row.job_id,
        kind=row.kind,
        sop_class_uid=row.sop_class_uid,
        sop_instance_uid=row.sop_instance_uid,
        series_instance_uid=row.series_instance_uid,
        study_instance_uid=row.study_instance_uid,
        file_path=row.file_path,
        sha256=row.sha256,
        size=row.size,
    )


def record_results(
    session: Session,
    job_id: int,
    objects: Sequence[ResultObjectSpec],
    summary: Mapping[str, Any],
    destinations: Sequence[ExportTarget],
    now: datetime,
) -> list[ResultObjectRecord]:
    """Record what a running job wrote, plan its exports, and mark it ``written``.

    Parameters
    ----------
    session: Session
        The caller's session (not committed here).
    job_id: int
        The job, in ``running``.
    objects: Sequence[ResultObjectSpec]
        The result files already written to the result store.
    summary: Mapping[str, Any]
        JSON-serialisable summary (class probabilities, lesion volume...).
        No PHI.
    destinations: Sequence[ExportTarget]
        Destinations (``config.Destination``); each gets the objects whose
        kind is in its ``objects``.
    now: datetime
        Time (timezone-aware); exports are due at once.

    Returns
    -------
    list[ResultObjectRecord]
        The recorded objects, in the order given.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    IllegalTransitionError
        If the job is not ``running``.
    ValueError
        If `objects` is empty, `summary` is not JSON-serialisable, or
        destination names repeat.
    """
    check_now(now)
    if not objects:
        raise ValueError('Argument "objects" should contain at least one result object')
    for item in objects:
        if not isinstance(item, ResultObjectSpec):
            raise TypeError(
                f'Argument "objects" should hold ResultObjectSpec, got {type(item).__name__}'
            )
    try:
        summary_data = json.loads(json.dumps(dict(summary), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f'Argument "summary" should be JSON-serialisable: {exc}') from None
    names = [d.name for d in destinations]
    if len(set(names)) != len(names):
        raise ValueError(f'Argument "destinations" should have unique names, got {names}')
    job = _locked_job(session, job_id)
    apply_transition(session, job, JobState.WRITTEN, None, now)
    session.add(ResultRow(job_id=job_id, summary=summary_data, created_at=now))
    rows: list[ResultObjectRow] = []
    export_count = 0
    for item in objects:
        row = ResultObjectRow(
            job_id=job_id,
            kind=item.kind,
            sop_class_uid=item.sop_class_uid,
            sop_instance_uid=item.sop_instance_uid,
            series_instance_uid=item.series_instance_uid,
            study_instance_uid=item.study_instance_uid,
            file_path=item.file_path,
            sha256=item.sha256,
            size=item.size,
            created_at=now,
        )
        session.add(row)
        session.flush()
        rows.append(row)
        for destination in destinations:
            if item.kind in destination.objects:
                session.add(
                    ExportRow(
                        result_object_id=row.id,
                        destination=destination.name,
                        status=ExportStatus.PENDING,
                        attempt_count=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
                export_count += 1
    session.flush()
    if export_count == 0:
        apply_transition(session, job, JobState.EXPORTED, NO_DESTINATIONS_REASON, now)
        session.flush()
    LOGGER.info(
        "job %d: %d result object(s) recorded, %d export(s) planned",
        job_id,
        len(rows),
        export_count,
    )
    return [_object_record(row) for row in rows]


def due_exports(session: Session, now: datetime, limit: int = 100) -> list[DueExport]:
    """Pending exports of ``written`` jobs whose next attempt is due, oldest first."""
    check_now(now)
    rows = session.execute(
        select(ExportRow, ResultObjectRow)
        .join(ResultObjectRow, ExportRow.result_object_id == ResultObjectRow.id)
        .join(JobRow, ResultObjectRow.job_id == JobRow.id)
        .where(
            ExportRow.status == ExportStatus.PENDING,
            ExportRow.next_attempt_at <= now,
            JobRow.state == JobState.WRITTEN,
        )
        .order_by(ExportRow.next_attempt_at, ExportRow.id)
        .limit(limit)
    ).all()
    return [
        DueExport(
            export_id=export.id,
            job_id=obj.job_id,
            destination=export.destination,
            attempt_count=export.attempt_count,
            kind=obj.kind,
            sop_class_uid=obj.sop_class_uid,
            sop_instance_uid=obj.sop_instance_uid,
            file_path=obj.file_path,
            sha256=obj.sha256,
        )
        for export, obj in rows
    ]


def record_export_attempt(
    session: Session,
    export_id: int,
    *,
    started_at: datetime,
    finished_at: datetime,
    success: bool,
    policy: BackoffPolicy,
    status_code: int | None = None,
    error: str | None = None,
) -> ExportRecord:
    """Record one C-STORE attempt and schedule the next or finish the export.

    Parameters
    ----------
    session: Session
        The caller's session.
    export_id: int
        The export, ``pending``.
    started_at, finished_at: datetime
        When the attempt began and ended (timezone-aware).
    success: bool
        Whether the destination acknowledged with a success status
        (delivered; ``next_attempt_at`` cleared).
    policy: BackoffPolicy
        Retry policy (``config.RetryPolicy``).
    status_code: int | None
        The C-STORE response Status (0000,0900), if a response came.
    error: str | None
        What went wrong (connection refused, association rejected...).

    Returns
    -------
    ExportRecord
        The export after the attempt, with its job's state.

    Raises
    ------
    NotFoundError
        If the export does not exist.
    ExportStateError
        If the export is not ``pending``.
    """
    check_now(started_at, "started_at")
    check_now(finished_at, "finished_at")
    export = session.scalars(
        select(ExportRow)
        .where(ExportRow.id == export_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if export is None:
        raise NotFoundError(f"export {export_id} does not exist")
    if ExportStatus(export.status) != ExportStatus.PENDING:
        raise ExportStateError(
            f"export {export_id} is {ExportStatus(export.status).value}, not pending"
        )
    export.attempt_count += 1
    session.add(
        ExportAttemptRow(
            export_id=export.id,
            attempt_number=export.attempt_count,
            started_at=started_at,
            finished_at=finished_at,
            status_code=status_code,
            error=error,
            success=bool(success),
        )
    )
    if success:
        export.status = ExportStatus.DELIVERED
        export.delivered_at = finished_at
        export.next_attempt_at = None
        export.last_error = None
    else:
        text = error or (f"status 0x{status_code:04X}" if status_code is not None else "failed")
        export.last_error = text
        export.next_attempt_at = retry_after_failure(policy, export.attempt_count, finished_at)
        if export.next_attempt_at is None:
            export.status = ExportStatus.FAILED
            LOGGER.warning(
                "export %d to %s gave up after %d attempt(s): %s",
                export.id,
                export.destination,
                export.attempt_count,
                text,
            )
    session.flush()
    job_id = session.scalar(
        select(ResultObjectRow.job_id).where(ResultObjectRow.id == export.result_object_id)
    )
    if job_id is None:  # pragma: no cover - guaranteed by the foreign key
        raise NotFoundError(f"result object {export.result_object_id} does not exist")
    job_state = update_job_export_state(session, job_id, finished_at)
    return _export_record(export, job_id, job_state)


def _export_record(export: ExportRow, job_id: int, job_state: JobState) -> ExportRecord:
    return ExportRecord(
        id=export.id,
        job_id=job_id,
        result_object_id=export.result_object_id,
        destination=export.destination,
        status=ExportStatus(export.status),
        attempt_count=export.attempt_count,
        next_attempt_at=export.next_attempt_at,
        delivered_at=export.delivered_at,
        last_error=export.last_error,
        job_state=job_state,
    )


def update_job_export_state(session: Session, job_id: int, now: datetime) -> JobState:
    """Move a ``written`` job to ``exported`` or ``failed`` when its exports say so.

    ``exported`` when every export is delivered; ``failed`` when none is
    pending and at least one gave up. Other states are left alone.

    Returns
    -------
    JobState
        The job's state afterwards.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    """
    check_now(now)
    job = _locked_job(session, job_id)
    if JobState(job.state) != JobState.WRITTEN:
        return JobState(job.state)
    exports = session.execute(
        select(
            ExportRow.destination, ExportRow.status, ExportRow.attempt_count, ResultObjectRow.kind
        )
        .join(ResultObjectRow, ExportRow.result_object_id == ResultObjectRow.id)
        .where(ResultObjectRow.job_id == job_id)
        .order_by(ExportRow.id)
    ).all()
    statuses = [ExportStatus(row.status) for row in exports]
    if all(status == ExportStatus.DELIVERED for status in statuses):
        reason = None if statuses else NO_DESTINATIONS_REASON
        apply_transition(session, job, JobState.EXPORTED, reason, now)
    elif ExportStatus.PENDING not in statuses:
        failed = [row for row in exports if ExportStatus(row.status) == ExportStatus.FAILED]
        reason = "export failed: " + ", ".join(
            f"{row.kind} to {row.destination} after {row.attempt_count} attempt(s)"
            for row in failed
        )
        apply_transition(session, job, JobState.FAILED, reason, now)
    session.flush()
    return JobState(job.state)


def exports_for_job(session: Session, job_id: int) -> list[ExportRecord]:
    """Every export of a job's result objects."""
    state = session.scalar(select(JobRow.state).where(JobRow.id == job_id))
    if state is None:
        raise NotFoundError(f"job {job_id} does not exist")
    rows = session.scalars(
        select(ExportRow)
        .join(ResultObjectRow, ExportRow.result_object_id == ResultObjectRow.id)
        .where(ResultObjectRow.job_id == job_id)
        .order_by(ExportRow.id)
    ).all()
    return [_export_record(row, job_id, JobState(state)) for row in rows]


def result_objects_for_job(session: Session, job_id: int) -> list[ResultObjectRecord]:
    """The result objects recorded for a job."""
    rows = session.scalars(
        select(ResultObjectRow).where(ResultObjectRow.job_id == job_id).order_by(ResultObjectRow.id)
    ).all()
    return [_object_record(row) for row in rows]


def recorded_result_paths(session: Session) -> set[str]:
    """Relative paths (in the result store) of every recorded result object."""
    return set(session.scalars(select(ResultObjectRow.file_path)))


def result_summary(session: Session, job_id: int) -> dict[str, Any] | None:
    """The JSON summary recorded for a job, or ``None``."""
    summary = session.scalar(select(ResultRow.summary).where(ResultRow.job_id == job_id))
    return None if summary is None else dict(summary)
