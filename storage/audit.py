"""Audit trail: incoming associations and result objects sent.

* Associations: one ``associations`` row per incoming connection, written by
  :mod:`pacs_node.audit` through :func:`record_association` (when accepted,
  rejected or failed) and :func:`finish_association` (when it ends).
* Results sent: every C-STORE attempt of a result object is already an
  ``export_attempts`` row (:func:`storage.record_export_attempt`);
  :func:`recent_result_sends` reads them with the destination and the SOP
  Instance UID, so nothing is recorded twice.

No patient data is stored or returned here: AE titles, addresses, times,
UIDs and counts only. Functions take a session and never commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.errors import NotFoundError
from storage.models import (
    AssociationOutcome,
    AssociationRow,
    ExportAttemptRow,
    ExportRow,
    ResultObjectRow,
)
from storage.text import clip_text

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationRecord",
    "ResultSendRecord",
    "finish_association",
    "recent_associations",
    "recent_result_sends",
    "record_association",
]


def _counts(counts: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(counts) != 3 or any(
        isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in counts
    ):
        raise ValueError(
            f'Argument "counts" should be three integers >= 0 (stored, warning, refused), '
            f"got {counts!r}"
        )
    return counts


@dataclass(frozen=True)
class AssociationRecord:
    """One audited incoming association (a row of ``associations``)."""

    id: int
    calling_ae_title: str | None
    called_ae_title: str | None
    peer_address: str
    peer_port: int | None
    tls: bool
    tls_peer: str | None
    started_at: datetime
    ended_at: datetime | None
    outcome: AssociationOutcome
    reason: str | None
    instances_stored: int
    instances_warning: int
    instances_refused: int

    @classmethod
    def from_row(cls, row: AssociationRow) -> AssociationRecord:
        """Convert an ORM row."""
        return cls(
            id=row.id,
            calling_ae_title=row.calling_ae_title,
            called_ae_title=row.called_ae_title,
            peer_address=row.peer_address,
            peer_port=row.peer_port,
            tls=row.tls,
            tls_peer=row.tls_peer,
            started_at=row.started_at,
            ended_at=row.ended_at,
            outcome=AssociationOutcome(row.outcome),
            reason=row.reason,
            instances_stored=row.instances_stored,
            instances_warning=row.instances_warning,
            instances_refused=row.instances_refused,
        )


@dataclass(frozen=True)
class ResultSendRecord:
    """One C-STORE attempt of a result object to a destination (``export_attempts``)."""

    attempt_id: int
    job_id: int
    destination: str
    kind: str
    sop_instance_uid: str
    series_instance_uid: str
    attempt_number: int
    started_at: datetime
    finished_at: datetime | None
    success: bool | None
    status_code: int | None
    error: str | None


def record_association(
    session: Session,
    *,
    peer_address: str,
    peer_port: int | None,
    started_at: datetime,
    outcome: AssociationOutcome | str,
    calling_ae_title: str | None = None,
    called_ae_title: str | None = None,
    tls: bool = False,
    tls_peer: str | None = None,
    ended_at: datetime | None = None,
    reason: str | None = None,
    counts: tuple[int, int, int] = (0, 0, 0),
) -> int:
    """Insert an audit row for an incoming association.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        Not committed here.
    peer_address, peer_port: str, int | None
        The peer's IP address and TCP port.
    started_at: datetime.datetime
        When the connection opened (timezone-aware).
    outcome: storage.models.AssociationOutcome | str
        ``accepted`` (still open), ``rejected``, ``failed``...
    calling_ae_title, called_ae_title: str | None
        From the A-ASSOCIATE-RQ; ``None`` when none arrived. Clipped to 16
        characters.
    tls: bool
        Whether the connection used TLS.
    tls_peer: str | None
        Subject of the peer's verified client certificate.
    ended_at: datetime.datetime | None
        When it ended (``None`` while open).
    reason: str | None
        Why it was rejected, failed or aborted.
    counts: tuple[int, int, int]
        C-STORE requests answered with success, warning, failure.

    Returns
    -------
    int
        The row id (for :func:`finish_association`).

    Raises
    ------
    ValueError
        If `outcome` or `counts` is invalid, or a time is naive.
    """
    stored, warned, refused = _counts(counts)
    row = AssociationRow(
        calling_ae_title=clip_text(calling_ae_title, 16),
        called_ae_title=clip_text(called_ae_title, 16),
        peer_address=str(peer_address)[:64],
        peer_port=peer_port,
        tls=bool(tls),
        tls_peer=clip_text(tls_peer, 256),
        started_at=started_at,
        ended_at=ended_at,
        outcome=AssociationOutcome(outcome),
        reason=reason,
        instances_stored=stored,
        instances_warning=warned,
        instances_refused=refused,
    )
    session.add(row)
    session.flush()
    return row.id


def finish_association(
    session: Session,
    association_id: int,
    *,
    ended_at: datetime,
    outcome: AssociationOutcome | str,
    counts: tuple[int, int, int],
    reason: str | None = None,
) -> AssociationRecord:
    """Record the end of an audited association.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        Not committed here.
    association_id: int
        From :func:`record_association`.
    ended_at: datetime.datetime
        When it ended.
    outcome: storage.models.AssociationOutcome | str
        ``released`` or ``aborted``.
    counts: tuple[int, int, int]
        C-STORE requests answered with success, warning, failure.
    reason: str | None
        Why it was aborted (kept when ``None``).

    Returns
    -------
    AssociationRecord
        The updated row.

    Raises
    ------
    storage.errors.NotFoundError
        If there is no such row.
    ValueError
        If `outcome` or `counts` is invalid.
    """
    stored, warned, refused = _counts(counts)
    row = session.get(AssociationRow, association_id)
    if row is None:
        raise NotFoundError(f"no association audit row with id {association_id}")
    row.ended_at = ended_at
    row.outcome = AssociationOutcome(outcome)
    row.instances_stored, row.instances_warning, row.instances_refused = stored, warned, refused
    if reason is not None:
        row.reason = reason
    session.flush()
    return AssociationRecord.from_row(row)


def recent_associations(
    session: Session,
    limit: int = 20,
    *,
    outcome: AssociationOutcome | str | None = None,
    calling_ae_title: str | None = None,
) -> list[AssociationRecord]:
    """The most recent audited associations, newest first.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        Any session.
    limit: int
        Rows to return at most.
    outcome: storage.models.AssociationOutcome | str | None
        Only this outcome (e.g. ``"rejected"``).
    calling_ae_title: str | None
        Only this calling AE title.

    Returns
    -------
    list[AssociationRecord]
        Newest first (by start time, then id).
    """
    query = select(AssociationRow).order_by(
        AssociationRow.started_at.desc(), AssociationRow.id.desc()
    )
    if outcome is not None:
        query = query.where(AssociationRow.outcome == AssociationOutcome(outcome))
    if calling_ae_title is not None:
        query = query.where(AssociationRow.calling_ae_title == calling_ae_title)
    rows = session.scalars(query.limit(max(0, int(limit)))).all()
    return [AssociationRecord.from_row(row) for row in rows]


def recent_result_sends(session: Session, limit: int = 20) -> list[ResultSendRecord]:
    """The most recent C-STORE attempts of result objects, newest first.

    Parameters
    ----------
    session: sqlalchemy.orm.Session
        Any session.
    limit: int
        Attempts to return at most.

    Returns
    -------
    list[ResultSendRecord]
        Destination, object kind and SOP Instance UID, times and outcome of
        each attempt.
    """
    query = (
        select(ExportAttemptRow, ExportRow, ResultObjectRow)
        .join(ExportRow, ExportAttemptRow.export_id == ExportRow.id)
        .join(ResultObjectRow, ExportRow.result_object_id == ResultObjectRow.id)
        .order_by(ExportAttemptRow.started_at.desc(), ExportAttemptRow.id.desc())
        .limit(max(0, int(limit)))
    )
    return [
        ResultSendRecord(
            attempt_id=attempt.id,
            job_id=result_object.job_id,
            destination=export.destination,
            kind=result_object.kind,
            sop_instance_uid=result_object.sop_instance_uid,
            series_instance_uid=result_object.series_instance_uid,
            attempt_number=attempt.attempt_number,
            started_at=attempt.started_at,
            finished_at=attempt.finished_at,
            success=attempt.success,
            status_code=attempt.status_code,
            error=attempt.error,
        )
        for attempt, export, result_object in session.execute(query).all()
    ]
