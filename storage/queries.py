"""Read-only queries for the HTTP API: the worklist, studies and jobs with their triage.

Nothing here writes or commits. Every function takes the caller's
:class:`~sqlalchemy.orm.Session` and returns frozen records.

The worklist (:func:`worklist`) holds one entry per study, ordered like a
radiologist's reading list: by the triage rank of the study's key job
(1 urgent, 2 high, 3 routine, 4 low; studies without a triage decision yet
come last), then by the time the study arrived, oldest first (the one
waiting longest is read first). The key job of a study is its job with the
best triage rank, or its latest job while none is triaged.

Patient name and ID are returned (the API serves them only behind its
token) but are PHI: callers never log them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from storage.errors import NotFoundError
from storage.models import (
    JobRow,
    ResultObjectRow,
    ResultRow,
    SeriesRow,
    StudyRow,
)
from storage.states import JobState
from storage.triage import TriageRecord, triage_for_jobs

LOGGER = logging.getLogger(__name__)

__all__ = [
    "KEY_IMAGE_KIND",
    "MEASUREMENT_KEYS",
    "UNTRIAGED_RANK",
    "JobOverview",
    "StudyOverview",
    "get_study_overview",
    "job_overview",
    "key_image_object",
    "list_job_overviews",
    "measurements_from_summary",
    "worklist",
]

#: Result object kind of the "AI summary" Secondary Capture series; its first
#: instance is the key image (the slice with the most lesion).
KEY_IMAGE_KIND = "sc"
#: Sort rank of a study whose jobs have no triage decision yet (after "low").
UNTRIAGED_RANK = 5
#: Keys of the recorded result summary returned as measurements.
MEASUREMENT_KEYS: tuple[str, ...] = (
    "predicted_class",
    "class_probabilities",
    "total_lesion_volume_ml",
    "involvement",
    "lesions",
    "image_count",
)


@dataclass(frozen=True)
class JobOverview:
    """A job with its series, triage decision and measurements.

    Parameters
    ----------
    id: int
        The job.
    state: JobState
    reason: str | None
        Why it was rejected or failed (no PHI).
    study_instance_uid, series_instance_uid: str
    modality, series_description: str | None
    instance_count: int
        Instances received for the series.
    created_at, updated_at: datetime
        Job created / last state change.
    finished_at: datetime | None
        Entered a terminal state.
    triage: TriageRecord | None
        Flag and priority, once recorded.
    measurements: dict[str, Any] | None
        From the recorded result summary (:data:`MEASUREMENT_KEYS`), once
        the job has written its results.
    model: dict[str, Any] | None
        Model name and version of the result.
    timings_s: dict[str, float] | None
        Seconds per processing stage of the result.
    objects: tuple[dict[str, Any], ...]
        Result objects: kind, SOP class, SOP instance, series UIDs.
    has_key_image: bool
        Whether a key image (SC) was recorded.
    """

    id: int
    state: JobState
    reason: str | None
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_description: str | None
    instance_count: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    triage: TriageRecord | None
    measurements: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    timings_s: dict[str, float] | None = None
    objects: tuple[dict[str, Any], ...] = ()
    has_key_image: bool = False

    @property
    def rank(self) -> int:
        """Triage rank, :data:`UNTRIAGED_RANK` when not triaged."""
        return self.triage.rank if self.triage is not None else UNTRIAGED_RANK


@dataclass(frozen=True)
class StudyOverview:
    """A study on the worklist.

    Parameters
    ----------
    study_instance_uid: str
    accession_number, study_date, study_description: str | None
    patient_id, patient_name: str | None
        PHI: served only behind the API token, never logged.
    received_at: datetime
        First instance of the study received.
    updated_at: datetime
        Last change of the study or of one of its jobs.
    key_job: JobOverview | None
        The job that decides the study's place (best triage rank, else the
        latest job); ``None`` for a study without jobs.
    jobs: tuple[JobOverview, ...]
        Every job of the study, latest first.
    """

    study_instance_uid: str
    accession_number: str | None
    study_date: str | None
    study_description: str | None
    patient_id: str | None
    patient_name: str | None
    received_at: datetime
    updated_at: datetime
    key_job: JobOverview | None
    jobs: tuple[JobOverview, ...]

    @property
    def rank(self) -> int:
        """Triage rank of the key job (:data:`UNTRIAGED_RANK` when none)."""
        return self.key_job.rank if self.key_job is not None else UNTRIAGED_RANK


def measurements_from_summary(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """The measurement part of a recorded result summary (``None`` stays ``None``)."""
    if summary is None:
        return None
    return {key: summary[key] for key in MEASUREMENT_KEYS if key in summary}


def _job_rows(session: Session, where: Sequence[Any], limit: int | None = None,
              offset: int = 0) -> list[Any]:
    statement = (
        select(
            JobRow,
            SeriesRow.series_instance_uid,
            SeriesRow.modality,
            SeriesRow.series_description,
            SeriesRow.instance_count,
            StudyRow.study_instance_uid,
        )
        .join(SeriesRow, JobRow.series_id == SeriesRow.id)
        .join(StudyRow, SeriesRow.study_id == StudyRow.id)
        .where(*where)
        .order_by(JobRow.id.desc())
        .offset(offset)
    )
    if limit is not None:
        statement = statement.limit(limit)
    return list(session.execute(statement).all())


def _overviews(session: Session, rows: Sequence[Any], *, details: bool) -> list[JobOverview]:
    ids = [row[0].id for row in rows]
    if not ids:
        return []
    triage = triage_for_jobs(session, ids)
    with_key_image = set(
        session.scalars(
            select(ResultObjectRow.job_id)
            .where(ResultObjectRow.job_id.in_(ids), ResultObjectRow.kind == KEY_IMAGE_KIND)
            .distinct()
        )
    )
    summaries: dict[int, dict[str, Any]] = {}
    objects: dict[int, list[dict[str, Any]]] = {job_id: [] for job_id in ids}
    if details:
        summaries = {
            job_id: dict(summary)
            for job_id, summary in session.execute(
                select(ResultRow.job_id, ResultRow.summary).where(ResultRow.job_id.in_(ids))
            ).all()
        }
        for item in session.scalars(
            select(ResultObjectRow)
            .where(ResultObjectRow.job_id.in_(ids))
            .order_by(ResultObjectRow.id)
        ):
            objects[item.job_id].append(
                {
                    "kind": item.kind,
                    "sop_class_uid": item.sop_class_uid,
                    "sop_instance_uid": item.sop_instance_uid,
                    "series_instance_uid": item.series_instance_uid,
                }
            )
    else:
        summaries = {
            job_id: {"predicted_class": predicted, "total_lesion_volume_ml": volume}
            for job_id, predicted, volume in session.execute(
                select(
                    ResultRow.job_id,
                    ResultRow.summary["predicted_class"].as_string(),
                    ResultRow.summary["total_lesion_volume_ml"].as_float(),
                ).where(ResultRow.job_id.in_(ids))
            ).all()
        }
    result: list[JobOverview] = []
    for job, series_uid, modality, description, count, study_uid in rows:
        summary = summaries.get(job.id)
        result.append(
            JobOverview(
                id=job.id,
                state=JobState(job.state),
                reason=job.reason,
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                modality=modality,
                series_description=description,
                instance_count=int(count),
                created_at=job.created_at,
                updated_at=job.updated_at,
                finished_at=job.finished_at,
                triage=triage.get(job.id),
                measurements=measurements_from_summary(summary),
                model=summary.get("model") if summary and details else None,
                timings_s=summary.get("timings_s") if summary and details else None,
                objects=tuple(objects.get(job.id, ())),
                has_key_image=job.id in with_key_image,
            )
        )
    return result


def job_overview(session: Session, job_id: int) -> JobOverview:
    """One job with triage, measurements, timings and result objects.

    Raises
    ------
    NotFoundError
        If there is no such job.
    """
    rows = _job_rows(session, [JobRow.id == job_id])
    if not rows:
        raise NotFoundError(f"job {job_id} does not exist")
    return _overviews(session, rows, details=True)[0]


def list_job_overviews(
    session: Session,
    state: JobState | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[JobOverview]:
    """Jobs, latest first, optionally only those in `state`, with triage and measurements.

    Raises
    ------
    ValueError
        If `limit` is not 1-1000 or `offset` is negative.
    """
    if not 1 <= limit <= 1000:
        raise ValueError(f'Argument "limit" should be 1-1000, got {limit}')
    if offset < 0:
        raise ValueError(f'Argument "offset" should be >= 0, got {offset}')
    where = [] if state is None else [JobRow.state == JobState(state)]
    return _overviews(session, _job_rows(session, where, limit, offset), details=True)


def _study_overviews(
    session: Session, studies: Sequence[StudyRow], *, details: bool = False
) -> list[StudyOverview]:
    if not studies:
        return []
    rows = _job_rows(session, [SeriesRow.study_id.in_([s.id for s in studies])])
    jobs = _overviews(session, rows, details=details)
    by_study: dict[str, list[JobOverview]] = {}
    for job in jobs:  # latest first
        by_study.setdefault(job.study_instance_uid, []).append(job)
    received = dict(
        session.execute(
            select(SeriesRow.study_id, func.min(SeriesRow.first_received_at))
            .where(SeriesRow.study_id.in_([s.id for s in studies]))
            .group_by(SeriesRow.study_id)
        ).all()
    )
    result: list[StudyOverview] = []
    for study in studies:
        study_jobs = by_study.get(study.study_instance_uid, [])
        key_job = min(study_jobs, key=lambda j: j.rank, default=None)  # stable: latest wins ties
        updated = max([study.updated_at, *(j.updated_at for j in study_jobs)])
        result.append(
            StudyOverview(
                study_instance_uid=study.study_instance_uid,
                accession_number=study.accession_number,
                study_date=study.study_date,
                study_description=study.study_description,
                patient_id=study.patient_id,
                patient_name=study.patient_name,
                received_at=received.get(study.id) or study.created_at,
                updated_at=updated,
                key_job=key_job,
                jobs=tuple(study_jobs),
            )
        )
    return result


def worklist(session: Session, limit: int = 100, window: int = 1000) -> list[StudyOverview]:
    """Studies in reading order: triage rank, then arrival time (oldest first).

    Parameters
    ----------
    session: Session
        The caller's session.
    limit: int
        At most this many studies (1-1000).
    window: int
        Only the `window` most recently updated studies are considered
        (bounds the work per refresh on a node that has seen many studies).

    Raises
    ------
    ValueError
        If `limit` or `window` is out of range.
    """
    if not 1 <= limit <= 1000:
        raise ValueError(f'Argument "limit" should be 1-1000, got {limit}')
    if window < limit:
        raise ValueError(f'Argument "window" should be >= limit ({limit}), got {window}')
    studies = session.scalars(
        select(StudyRow).order_by(StudyRow.updated_at.desc(), StudyRow.id.desc()).limit(window)
    ).all()
    overviews = _study_overviews(session, studies)
    overviews.sort(key=lambda s: (s.rank, s.received_at, s.study_instance_uid))
    return overviews[:limit]


def get_study_overview(session: Session, study_instance_uid: str) -> StudyOverview:
    """One study with all its jobs, each with the details of :func:`job_overview`
    (model, timings, exports), in one set of queries.

    Raises
    ------
    NotFoundError
        If the study is unknown.
    """
    study = session.scalars(
        select(StudyRow).where(StudyRow.study_instance_uid == study_instance_uid)
    ).one_or_none()
    if study is None:
        raise NotFoundError(f"study {study_instance_uid} does not exist")
    return _study_overviews(session, [study], details=True)[0]


def key_image_object(session: Session, job_id: int) -> ResultObjectRow | None:
    """The first recorded SC result object of a job (its key image), or ``None``.

    The row is detached-safe: callers read ``file_path`` and the UIDs only.
    """
    return session.scalars(
        select(ResultObjectRow)
        .where(ResultObjectRow.job_id == job_id, ResultObjectRow.kind == KEY_IMAGE_KIND)
        .order_by(ResultObjectRow.id)
        .limit(1)
    ).one_or_none()

