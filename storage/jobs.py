"""Repository functions for jobs: states, due series, claiming, recovery, status.

Every function takes a :class:`~sqlalchemy.orm.Session`, never commits, and
returns frozen records (:mod:`storage.records`); times are timezone-aware
and passed in. :func:`claim_next_job` hands a queued job to exactly one
worker: PostgreSQL skips rows other transactions have locked
(``SELECT ... FOR UPDATE SKIP LOCKED``), and on every back end the change
is a conditional ``UPDATE ... WHERE id = ? AND state = 'queued'`` whose row
count proves the claim (SQLite also serialises writers with
``BEGIN IMMEDIATE``, see :mod:`storage.db`).
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Row, Select, func, select, update
from sqlalchemy.orm import Session

from storage.errors import IllegalTransitionError, NotFoundError
from storage.models import ExportRow, ExportStatus, JobEventRow, JobRow, SeriesRow, StudyRow
from storage.records import JobEventRecord, JobRecord, RecoverySummary, StatusOverview
from storage.states import JobState
from storage.transitions import apply_transition, check_now

_E = TypeVar("_E", bound=enum.Enum)

LOGGER = logging.getLogger(__name__)

__all__ = [
    "RECOVERED_REASON",
    "claim_next_job",
    "due_jobs",
    "export_status_counts",
    "get_job",
    "heartbeat",
    "job_events",
    "job_state_counts",
    "recover_after_restart",
    "status_overview",
    "transition_job",
]

#: Reason recorded when a ``running`` job is re-queued at start-up.
RECOVERED_REASON = "recovered after restart"
#: Job states that need a reason.
_STATES_WITH_REASON = frozenset({JobState.REJECTED, JobState.FAILED})


def _job_select() -> Select[JobRow, str, str]:
    return (
        select(JobRow, SeriesRow.series_instance_uid, StudyRow.study_instance_uid)
        .join(SeriesRow, JobRow.series_id == SeriesRow.id)
        .join(StudyRow, SeriesRow.study_id == StudyRow.id)
    )


def _to_job_record(found: Row[JobRow, str, str]) -> JobRecord:
    row, series_uid, study_uid = found
    return JobRecord(
        id=row.id,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        state=JobState(row.state),
        reason=row.reason,
        created_at=row.created_at,
        updated_at=row.updated_at,
        queued_at=row.queued_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        worker_id=row.worker_id,
        heartbeat_at=row.heartbeat_at,
        run_count=row.run_count,
    )


def get_job(session: Session, job_id: int) -> JobRecord:
    """The job `job_id`.

    Raises
    ------
    NotFoundError
        If there is no such job.
    """
    found = session.execute(
        _job_select().where(JobRow.id == job_id).execution_options(populate_existing=True)
    ).first()
    if found is None:
        raise NotFoundError(f"job {job_id} does not exist")
    return _to_job_record(found)


def due_jobs(
    session: Session, now: datetime, quiet_time: float | timedelta, limit: int | None = None
) -> list[JobRecord]:
    """Jobs in ``received`` whose series has been quiet for at least `quiet_time`.

    Parameters
    ----------
    session: Session
        The caller's session.
    now: datetime
        Current time (timezone-aware).
    quiet_time: float | timedelta
        Seconds (or a timedelta) without a new instance.
    limit: int | None
        At most this many, oldest quiet first.

    Returns
    -------
    list[JobRecord]
        Candidates for ``received -> complete``.
    """
    check_now(now)
    quiet = quiet_time if isinstance(quiet_time, timedelta) else timedelta(seconds=quiet_time)
    if quiet < timedelta(0):
        raise ValueError(f'Argument "quiet_time" should be >= 0, got {quiet_time!r}')
    statement = (
        _job_select()
        .where(JobRow.state == JobState.RECEIVED, SeriesRow.last_received_at <= now - quiet)
        .order_by(SeriesRow.last_received_at, JobRow.id)
    )
    if limit is not None:
        statement = statement.limit(limit)
    return [_to_job_record(row) for row in session.execute(statement).all()]


def transition_job(
    session: Session,
    job_id: int,
    to_state: JobState | str,
    reason: str | None = None,
    *,
    now: datetime,
    expected_state: JobState | str | None = None,
) -> JobRecord:
    """Move a job to another state and record the event.

    Parameters
    ----------
    session: Session
        The caller's session.
    job_id: int
        The job.
    to_state: JobState | str
        Target state; must be allowed by
        :data:`storage.states.ALLOWED_TRANSITIONS` from the current one.
    reason: str | None
        Why (required for ``rejected`` and ``failed``); stored on the job
        (replacing the previous reason) and in ``job_events``. No PHI.
    now: datetime
        Time of the change (timezone-aware).
    expected_state: JobState | str | None
        If given, the job must be in this state (guards against a change
        made by another process since the caller looked).

    Returns
    -------
    JobRecord
        The job after the change.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    IllegalTransitionError
        If the transition is not allowed or the job is not in `expected_state`.
    ValueError
        If `to_state` is unknown, a reason is missing, or `now` is naive.
    """
    to_state = JobState(to_state)
    check_now(now)
    if to_state in _STATES_WITH_REASON and not reason:
        raise ValueError(f'Argument "reason" is required for a job going to {to_state.value}')
    job = session.scalars(
        select(JobRow)
        .where(JobRow.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise NotFoundError(f"job {job_id} does not exist")
    if expected_state is not None and JobState(job.state) != JobState(expected_state):
        raise IllegalTransitionError(job_id, JobState(job.state).value, to_state.value)
    apply_transition(session, job, to_state, reason, now)
    session.flush()
    LOGGER.debug("job %d -> %s", job_id, to_state.value)
    return get_job(session, job_id)


def job_events(session: Session, job_id: int) -> list[JobEventRecord]:
    """The audit trail of a job, oldest first."""
    rows = session.scalars(
        select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)
    ).all()
    return [
        JobEventRecord(
            job_id=row.job_id,
            from_state=None if row.from_state is None else JobState(row.from_state),
            to_state=JobState(row.to_state),
            reason=row.reason,
            at=row.at,
        )
        for row in rows
    ]


def claim_next_job(session: Session, worker_id: str, now: datetime) -> JobRecord | None:
    """Hand the oldest queued job to `worker_id` (``queued -> running``).

    Safe with several workers: PostgreSQL skips rows other transactions have
    locked (``FOR UPDATE SKIP LOCKED``); on every back end the change is a
    conditional ``UPDATE ... WHERE id = ? AND state = 'queued'`` whose row
    count proves this worker won. Commit right after the call: the row lock
    (PostgreSQL) or the write lock (SQLite) is held until then.

    Parameters
    ----------
    session: Session
        The caller's session.
    worker_id: str
        Identifies the worker (host, process, thread), 1-128 characters.
    now: datetime
        Claim time (timezone-aware), stored as ``started_at`` and ``heartbeat_at``.

    Returns
    -------
    JobRecord | None
        The claimed job in ``running``, or ``None`` if none is queued.

    Raises
    ------
    ValueError
        If `worker_id` is empty or too long, or `now` is naive.
    """
    if not isinstance(worker_id, str) or not 1 <= len(worker_id) <= 128:
        raise ValueError(f'Argument "worker_id" should be 1-128 characters, got {worker_id!r}')
    check_now(now)
    skip_locked = session.get_bind().dialect.name == "postgresql"
    for _ in range(16):
        candidate = select(JobRow.id).where(JobRow.state == JobState.QUEUED)
        candidate = candidate.order_by(JobRow.queued_at, JobRow.id).limit(1)
        if skip_locked:
            candidate = candidate.with_for_update(skip_locked=True)
        job_id = session.scalar(candidate)
        if job_id is None:
            return None
        result = session.execute(
            update(JobRow)
            .where(JobRow.id == job_id, JobRow.state == JobState.QUEUED)
            .values(
                state=JobState.RUNNING,
                reason=None,
                updated_at=now,
                started_at=now,
                heartbeat_at=now,
                worker_id=worker_id,
                run_count=JobRow.run_count + 1,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            session.add(
                JobEventRow(
                    job_id=job_id,
                    from_state=JobState.QUEUED,
                    to_state=JobState.RUNNING,
                    reason=f"claimed by {worker_id}",
                    at=now,
                )
            )
            session.flush()
            LOGGER.debug("job %d claimed by %s", job_id, worker_id)
            return get_job(session, job_id)
    return None  # pragma: no cover - lost 16 races in a row


def heartbeat(session: Session, job_id: int, worker_id: str, now: datetime) -> bool:
    """Record that `worker_id` still works on `job_id`.

    Returns
    -------
    bool
        ``False`` if the job is no longer ``running`` for this worker (it was
        recovered or failed meanwhile): the worker should stop.
    """
    check_now(now)
    result = session.execute(
        update(JobRow)
        .where(JobRow.id == job_id, JobRow.state == JobState.RUNNING, JobRow.worker_id == worker_id)
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def recover_after_restart(
    session: Session, now: datetime, stale_after: timedelta | None = None
) -> RecoverySummary:
    """Resume from the database after a (re)start.

    ``running`` jobs go back to ``queued`` with reason "recovered after
    restart" (with `stale_after`, only those whose heartbeat is older, for
    deployments where other nodes' workers may still be running). ``complete``
    jobs are returned for the caller to apply the selection rules again;
    ``written`` jobs and their pending exports are kept and continue.

    Parameters
    ----------
    session: Session
        The caller's session.
    now: datetime
        Current time (timezone-aware).
    stale_after: timedelta | None
        Only recover running jobs without a heartbeat for this long.

    Returns
    -------
    RecoverySummary
        What was found and done.
    """
    check_now(now)
    running = select(JobRow).where(JobRow.state == JobState.RUNNING).order_by(JobRow.id)
    if stale_after is not None:
        running = running.where(
            (JobRow.heartbeat_at.is_(None)) | (JobRow.heartbeat_at <= now - stale_after)
        )
    requeued: list[int] = []
    for job in session.scalars(running.with_for_update()).all():
        apply_transition(session, job, JobState.QUEUED, RECOVERED_REASON, now)
        requeued.append(job.id)
    session.flush()
    to_evaluate = session.scalars(
        select(JobRow.id).where(JobRow.state == JobState.COMPLETE).order_by(JobRow.id)
    ).all()
    exporting = session.scalars(
        select(JobRow.id).where(JobRow.state == JobState.WRITTEN).order_by(JobRow.id)
    ).all()
    pending = session.scalar(
        select(func.count()).select_from(ExportRow).where(ExportRow.status == ExportStatus.PENDING)
    )
    if requeued:
        LOGGER.info("re-queued %d job(s) that were running: %s", len(requeued), requeued)
    return RecoverySummary(
        requeued=tuple(requeued),
        to_evaluate=tuple(to_evaluate),
        exporting=tuple(exporting),
        pending_exports=int(pending or 0),
    )


def _counts_by(session: Session, column: Any, kinds: type[_E]) -> dict[_E, int]:
    """Rows per value of ``column``, every member of ``kinds`` present (0 where none)."""
    counts = {kind: 0 for kind in kinds}
    for value, count in session.execute(select(column, func.count()).group_by(column)).all():
        counts[kinds(value)] = int(count)
    return counts


def job_state_counts(session: Session) -> dict[JobState, int]:
    """Jobs per state, every state present (0 where none)."""
    return _counts_by(session, JobRow.state, JobState)


def export_status_counts(session: Session) -> dict[ExportStatus, int]:
    """Exports per status, every status present (0 where none)."""
    return _counts_by(session, ExportRow.status, ExportStatus)


def status_overview(session: Session, limit: int = 20) -> StatusOverview:
    """Counts per job state and export status, and the most recently changed jobs.

    Raises
    ------
    ValueError
        If `limit` is negative.
    """
    if limit < 0:
        raise ValueError(f'Argument "limit" should be >= 0, got {limit}')
    recent = session.execute(
        _job_select().order_by(JobRow.updated_at.desc(), JobRow.id.desc()).limit(limit)
    ).all()
    return StatusOverview(
        job_counts=job_state_counts(session),
        recent_jobs=tuple(_to_job_record(row) for row in recent),
        export_counts=export_status_counts(session),
    )
