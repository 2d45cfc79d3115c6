"""Triage of jobs: the flag and priority the triage rules gave a job's result.

One ``triage`` row per job (:class:`storage.models.TriageRow`), written by the
worker (or the watcher, for rejected series) in the same transaction as the
job's state change; the worklist (HTTP API) reads it with
:func:`get_triage` / :func:`triage_for_jobs` and sorts by ``rank``. The rules
themselves live in :mod:`pacs_node.triage`; this module only stores their
outcome. Nothing here commits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import NotFoundError
from storage.models import JobRow, TriageRow
from storage.transitions import check_now

LOGGER = logging.getLogger(__name__)

__all__ = [
    "PRIORITY_RANKS",
    "TriageRecord",
    "get_triage",
    "priority_rank",
    "record_triage",
    "triage_for_jobs",
]

#: Priorities and their rank (sort ascending: most urgent first).
PRIORITY_RANKS: dict[str, int] = {"urgent": 1, "high": 2, "routine": 3, "low": 4}

_FLAG_LENGTH = 128
_RULE_LENGTH = 64


def priority_rank(priority: str) -> int:
    """Rank of a priority (1 urgent, 2 high, 3 routine, 4 low).

    Raises
    ------
    ValueError
        If `priority` is not one of ``PRIORITY_RANKS``.
    """
    try:
        return PRIORITY_RANKS[priority]
    except (KeyError, TypeError):
        raise ValueError(
            f'Argument "priority" should be one of {", ".join(PRIORITY_RANKS)}, got {priority!r}'
        ) from None


@dataclass(frozen=True)
class TriageRecord:
    """The triage of one job (a row of ``triage``)."""

    job_id: int
    flag: str
    """e.g. ``"COVID-19 pattern"`` or ``"not analysed: <reason>"``."""
    priority: str
    """``"urgent"``, ``"high"``, ``"routine"`` or ``"low"``."""
    rank: int
    """1 urgent, 2 high, 3 routine, 4 low: sort ascending."""
    rule: str
    """Name of the rule that matched."""
    text: str
    """One human-readable line."""
    created_at: datetime

    @classmethod
    def from_row(cls, row: TriageRow) -> TriageRecord:
        """Convert an ORM row."""
        return cls(
            job_id=row.job_id,
            flag=row.flag,
            priority=row.priority,
            rank=row.rank,
            rule=row.rule,
            text=row.text,
            created_at=row.created_at,
        )


def record_triage(
    session: Session,
    job_id: int,
    *,
    flag: str,
    priority: str,
    rule: str,
    text: str,
    now: datetime,
) -> TriageRecord:
    """Record (or replace) the triage of a job.

    Call it in the transaction that changes the job's state, so the flag and
    the state are committed together. A job retried after ``failed`` gets its
    triage replaced when it ends again.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        The caller's session (not committed here).
    job_id: int
        The job.
    flag: str
        Short flag, at most 128 characters (longer ones are clipped).
    priority: str
        ``"urgent"``, ``"high"``, ``"routine"`` or ``"low"``.
    rule: str
        Name of the rule that matched (at most 64 characters).
    text: str
        One human-readable line (no line breaks).
    now: datetime.datetime
        Time (timezone-aware).

    Returns
    -------
    TriageRecord
        The stored triage.

    Raises
    ------
    NotFoundError
        If the job does not exist.
    ValueError
        If `priority` is unknown, `flag`, `rule` or `text` is empty, `rule`
        is too long, or `now` is naive.
    """
    check_now(now)
    rank = priority_rank(priority)
    for name, value in (("flag", flag), ("rule", rule), ("text", text)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f'Argument "{name}" should be a non-empty string, got {value!r}')
    if len(rule) > _RULE_LENGTH:
        raise ValueError(f'Argument "rule" should have at most {_RULE_LENGTH} characters')
    line = " ".join(text.split())
    if session.get(JobRow, job_id) is None:
        raise NotFoundError(f"job {job_id} does not exist")
    row = session.scalars(select(TriageRow).where(TriageRow.job_id == job_id)).one_or_none()
    if row is None:
        row = TriageRow(job_id=job_id)
        session.add(row)
    row.flag = flag[:_FLAG_LENGTH]
    row.priority = priority
    row.rank = rank
    row.rule = rule
    row.text = line
    row.created_at = now
    session.flush()
    LOGGER.info("job %d: triage %s (%s, rule %s)", job_id, row.flag, priority, rule)
    return TriageRecord.from_row(row)


def get_triage(session: Session, job_id: int) -> TriageRecord | None:
    """The triage of a job, or ``None`` when none was recorded."""
    row = session.scalars(select(TriageRow).where(TriageRow.job_id == job_id)).one_or_none()
    return None if row is None else TriageRecord.from_row(row)


def triage_for_jobs(session: Session, job_ids: Iterable[int]) -> dict[int, TriageRecord]:
    """The triage of several jobs, by job id (jobs without triage are left out)."""
    ids = sorted({int(job_id) for job_id in job_ids})
    if not ids:
        return {}
    rows = session.scalars(select(TriageRow).where(TriageRow.job_id.in_(ids))).all()
    return {row.job_id: TriageRecord.from_row(row) for row in rows}
