"""Job states: the one state machine every later feature builds on.

A job is one series' trip through the node::

    received -> complete -> queued -> running -> written -> exported
         \\          \\          \\          \\          \\
          `----------`----------`----------`----------`--> rejected | failed

``received``
    Instances of the series are arriving; the quiet timer is running.
``complete``
    The quiet timer expired; selection rules not yet applied.
``queued``
    The series is a candidate; waiting for a worker.
``running``
    A worker is building the volume and running the model.
``written``
    SEG and SR are encoded, stored in the file store and recorded; waiting
    for (or in the middle of) export to the destinations.
``exported``
    Every destination acknowledged every result object.
``rejected``
    The series is not one the node processes (selection rules, bad geometry,
    undecodable pixels...). ``reason`` says why. Terminal, not an error.
``failed``
    Something went wrong that should not have (model crash, disk full...).
    ``reason`` says what. Terminal until an operator retries it.

On restart, ``running`` jobs go back to ``queued`` and ``written`` jobs keep
exporting; nothing that was acknowledged is processed twice or lost.
"""
from __future__ import annotations

import enum

__all__ = ["JobState", "TERMINAL_STATES", "ALLOWED_TRANSITIONS"]


class JobState(str, enum.Enum):
    """States of a job (values are stored in the database)."""

    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    RUNNING = "running"
    WRITTEN = "written"
    EXPORTED = "exported"
    REJECTED = "rejected"
    FAILED = "failed"


#: States a job does not leave on its own.
TERMINAL_STATES = frozenset({JobState.EXPORTED, JobState.REJECTED, JobState.FAILED})

#: Legal transitions. ``received`` is re-entered when new instances arrive for
#: a series whose job has not started running; a finished job whose series
#: changes (late or replaced instances) gets a *new* job.
ALLOWED_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVED: frozenset({JobState.RECEIVED, JobState.COMPLETE, JobState.FAILED}),
    JobState.COMPLETE: frozenset(
        {JobState.RECEIVED, JobState.QUEUED, JobState.REJECTED, JobState.FAILED}
    ),
    JobState.QUEUED: frozenset({JobState.RECEIVED, JobState.RUNNING, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.WRITTEN, JobState.REJECTED, JobState.FAILED}
    ),
    JobState.WRITTEN: frozenset({JobState.EXPORTED, JobState.FAILED}),
    JobState.EXPORTED: frozenset(),
    JobState.REJECTED: frozenset(),
    JobState.FAILED: frozenset({JobState.QUEUED}),
}
