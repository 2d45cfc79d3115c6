"""Errors raised by the :mod:`storage` package.

Domain failures derive from :class:`StorageError`; argument errors use the
built-in ``ValueError`` / ``TypeError``. Database driver errors
(``sqlalchemy.exc.SQLAlchemyError``) and file-system errors (``OSError``)
are not wrapped: they propagate to the caller, who decides the DIMSE status
or job state.
"""

from __future__ import annotations

__all__ = [
    "ExportStateError",
    "IllegalTransitionError",
    "InvalidUIDError",
    "NotFoundError",
    "StorageError",
]


class StorageError(Exception):
    """Base class of the storage package's domain errors."""


class InvalidUIDError(StorageError, ValueError):
    """A value is not a valid DICOM UID (PS3.5 section 9.1) and is never used in a path.

    Parameters
    ----------
    argument: str
        Name of the argument that held the value, e.g. ``"sop_instance_uid"``.
    uid: object
        The value refused.
    rule: str
        Which rule it breaks.
    """

    def __init__(self, argument: str, uid: object, rule: str) -> None:
        self.argument = argument
        self.uid = uid
        self.rule = rule
        super().__init__(f'Argument "{argument}" should be a valid DICOM UID ({rule}), got {uid!r}')


class IllegalTransitionError(StorageError):
    """A job state change that :data:`storage.states.ALLOWED_TRANSITIONS` forbids.

    Parameters
    ----------
    job_id: int
        The job.
    from_state: str
        Its current state.
    to_state: str
        The state asked for.
    """

    def __init__(self, job_id: int, from_state: str, to_state: str) -> None:
        self.job_id = job_id
        self.from_state = from_state
        self.to_state = to_state
        super().__init__(f"job {job_id}: transition {from_state} -> {to_state} is not allowed")


class NotFoundError(StorageError, LookupError):
    """A row that the caller named (job, export...) does not exist."""


class ExportStateError(StorageError):
    """An export attempt was recorded for an export that is no longer pending."""
