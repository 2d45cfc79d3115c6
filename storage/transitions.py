"""Job state changes at the row level, shared by the repository modules.

:func:`apply_transition` checks a change against
:data:`storage.states.ALLOWED_TRANSITIONS`, sets the per-state timestamps
and adds the ``job_events`` row. Callers lock the job row first. Use
:func:`storage.repository.transition_job` from outside the package.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.orm import Session

from storage.errors import IllegalTransitionError
from storage.models import JobEventRow, JobRow
from storage.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, JobState

LOGGER = logging.getLogger(__name__)

__all__ = ["apply_transition", "check_now"]


def check_now(now: datetime, name: str = "now") -> None:
    """Raise ``ValueError`` unless `now` is a timezone-aware datetime."""
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise ValueError(f'Argument "{name}" should be a timezone-aware datetime, got {now!r}')


def apply_transition(
    session: Session, job: JobRow, to_state: JobState, reason: str | None, now: datetime
) -> None:
    """Change the state of a locked job row and record the event.

    Parameters
    ----------
    session: Session
        The caller's session.
    job: JobRow
        The job row (locked by the caller).
    to_state: JobState
        Target state.
    reason: str | None
        Stored on the job and in the event.
    now: datetime
        Time of the change.

    Raises
    ------
    IllegalTransitionError
        If the change is not in ``ALLOWED_TRANSITIONS``.
    """
    from_state = JobState(job.state)
    if to_state not in ALLOWED_TRANSITIONS[from_state]:
        raise IllegalTransitionError(job.id, from_state.value, to_state.value)
    job.state = to_state
    job.reason = reason
    job.updated_at = now
    if to_state == JobState.COMPLETE:
        job.completed_at = now
    elif to_state == JobState.QUEUED:
        job.queued_at = now
        job.heartbeat_at = None
    elif to_state == JobState.RUNNING:
        job.started_at = now
        job.heartbeat_at = now
    elif to_state == JobState.WRITTEN:
        job.written_at = now
    if to_state in TERMINAL_STATES:
        job.finished_at = now
    session.add(
        JobEventRow(job_id=job.id, from_state=from_state, to_state=to_state, reason=reason, at=now)
    )
