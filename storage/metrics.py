"""Aggregates for the Prometheus metrics, read from the database at scrape time.

:func:`metrics_snapshot` runs a handful of ``COUNT``/``SUM`` queries (no row
is loaded); :mod:`pacs_node.api.metrics` turns the snapshot into metric
families. Nothing here writes or commits. Latencies come from the timings
each result recorded in its summary (``timings_s``, seconds per stage), so
no other module needs a hook and the numbers survive restarts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, case, cast, func, literal, select
from sqlalchemy.orm import Session

from storage.models import (
    ExportAttemptRow,
    ExportStatus,
    InstanceRow,
    JobRow,
    ResultRow,
    SeriesRow,
    StudyRow,
    TriageRow,
)
from storage.jobs import export_status_counts, job_state_counts
from storage.states import JobState

LOGGER = logging.getLogger(__name__)

__all__ = [
    "INFERENCE_STAGE",
    "PROCESSING_STAGES",
    "HistogramData",
    "MetricsSnapshot",
    "metrics_snapshot",
]

#: Key of the model stage in a result's ``timings_s``.
INFERENCE_STAGE = "inference"
#: Keys of ``timings_s`` whose sum is the processing time of a series
#: (read the files, build the volume, run the model, analyse, encode).
PROCESSING_STAGES: tuple[str, ...] = (
    "read",
    "volume",
    "preprocess",
    "inference",
    "postprocess",
    "analysis",
    "encode",
)


@dataclass(frozen=True)
class HistogramData:
    """Cumulative bucket counts (``le`` upper bounds, ascending), count and sum."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    total: float


@dataclass(frozen=True)
class MetricsSnapshot:
    """What the database says at one moment.

    Parameters
    ----------
    instances_received, series_received, studies_received: int
        Rows of instances, series and studies (received since the database
        was created).
    jobs_by_state: dict[JobState, int]
        Every state present.
    results_by_class: dict[str, int]
        Results per predicted class.
    triage_by_priority: dict[str, int]
        Triage decisions per priority.
    exports_by_status: dict[ExportStatus, int]
        Every status present.
    export_attempts_succeeded, export_attempts_failed: int
        Finished C-STORE attempts of result objects.
    inference_seconds, processing_seconds: HistogramData
        The model stage, and the whole processing of a series, per result.
    oldest_queued_at: datetime | None
        When the longest-waiting ``queued`` job was queued.
    """

    instances_received: int
    series_received: int
    studies_received: int
    jobs_by_state: dict[JobState, int]
    results_by_class: dict[str, int]
    triage_by_priority: dict[str, int]
    exports_by_status: dict[ExportStatus, int]
    export_attempts_succeeded: int
    export_attempts_failed: int
    inference_seconds: HistogramData
    processing_seconds: HistogramData
    oldest_queued_at: datetime | None


def _timing(stage: str) -> ColumnElement[Any]:
    return ResultRow.summary[("timings_s", stage)].as_float()


def _histogram(
    session: Session, value: ColumnElement[Any], bounds: Sequence[float]
) -> HistogramData:
    columns = [func.count(value), func.coalesce(func.sum(value), literal(0.0))]
    columns += [func.coalesce(func.sum(case((value <= bound, 1), else_=0)), 0) for bound in bounds]
    row = session.execute(select(*columns).select_from(ResultRow)).one()
    return HistogramData(
        buckets=tuple((float(b), int(n)) for b, n in zip(bounds, row[2:])),
        count=int(row[0]),
        total=float(row[1]),
    )


def metrics_snapshot(session: Session, bounds: Sequence[float]) -> MetricsSnapshot:
    """Read every aggregate the metrics need.

    Parameters
    ----------
    session: Session
        The caller's session (read only).
    bounds: Sequence[float]
        Upper bounds of the latency histogram buckets, ascending, in seconds.

    Returns
    -------
    MetricsSnapshot

    Raises
    ------
    ValueError
        If `bounds` is empty or not strictly ascending.
    sqlalchemy.exc.SQLAlchemyError
        If the database cannot be read.
    """
    bounds = [float(b) for b in bounds]
    if not bounds or any(b >= c for b, c in zip(bounds, bounds[1:])):
        raise ValueError(f'Argument "bounds" should be strictly ascending, got {bounds}')

    def count(model: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)

    jobs = job_state_counts(session)
    exports = export_status_counts(session)
    attempts = dict(
        session.execute(
            select(ExportAttemptRow.success, func.count())
            .where(ExportAttemptRow.success.is_not(None))
            .group_by(ExportAttemptRow.success)
        ).all()
    )
    predicted = ResultRow.summary["predicted_class"].as_string()
    classes = {
        str(name): int(n)
        for name, n in session.execute(select(predicted, func.count()).group_by(predicted))
        if name is not None
    }
    priorities = {
        str(name): int(n)
        for name, n in session.execute(
            select(TriageRow.priority, func.count()).group_by(TriageRow.priority)
        )
    }
    processing = sum(
        (func.coalesce(_timing(stage), cast(literal(0.0), Float)) for stage in PROCESSING_STAGES),
        start=cast(literal(0.0), Float),
    )
    return MetricsSnapshot(
        instances_received=count(InstanceRow),
        series_received=count(SeriesRow),
        studies_received=count(StudyRow),
        jobs_by_state=jobs,
        results_by_class=classes,
        triage_by_priority=priorities,
        exports_by_status=exports,
        export_attempts_succeeded=int(attempts.get(True, 0)),
        export_attempts_failed=int(attempts.get(False, 0)),
        inference_seconds=_histogram(session, _timing(INFERENCE_STAGE), bounds),
        processing_seconds=_histogram(session, processing, bounds),
        oldest_queued_at=session.scalar(
            select(func.min(JobRow.queued_at)).where(JobRow.state == JobState.QUEUED)
        ),
    )
