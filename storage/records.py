"""Small frozen dataclasses that cross the repository boundary.

Callers of :mod:`storage.repository` and :mod:`storage.exports` get these
instead of ORM rows, so nothing lazy-loads after the session closed. Patient
name and ID are left out of ``repr`` (PHI must not reach logs).
"""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from storage.models import ExportStatus
from storage.states import JobState
from storage.uids import validate_uid

LOGGER = logging.getLogger(__name__)

__all__ = [
    "BackoffPolicy",
    "DueExport",
    "ExportRecord",
    "ExportTarget",
    "InstanceAttributes",
    "InstanceOutcome",
    "InstanceRecord",
    "JobAction",
    "JobEventRecord",
    "JobRecord",
    "RecordedInstance",
    "RecoverySummary",
    "ResultObjectRecord",
    "ResultObjectSpec",
    "SeriesRecord",
    "StatusOverview",
]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def _attribute(dataset: Any, keyword: str) -> Any:
    """``getattr(dataset, keyword, None)``, or ``None`` when the element cannot be decoded.

    pydicom converts a received element on first access and raises for a
    malformed one (an unknown VR, a length that is no multiple of the value
    size, ...) with exception types that share no base class. A record keeps
    what it can: such an attribute is recorded as absent (found by
    ``tests/test_fuzz_ingest.py``; before, the C-STORE was answered 0xC211
    with the value's bytes in the logged traceback).
    """
    try:
        return getattr(dataset, keyword, None)
    except Exception as exc:  # pydicom's conversion errors have no common base class
        LOGGER.debug("%s cannot be decoded (%s); recorded as absent", keyword, type(exc).__name__)
        return None


def _without_nul(value: object) -> str:
    """``str(value)`` without NUL characters.

    No DICOM text VR allows NUL (PS3.5 6.1.2.3), PostgreSQL text cannot hold
    it, and psycopg2 raises ``ValueError`` (not a database error) for it: a
    received Series Description with an embedded NUL made the C-STORE fail
    with 0xC211 on PostgreSQL.
    """
    return str(value).replace("\x00", "")


def _check_aware(value: datetime, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise ValueError(f'Argument "{name}" should be a timezone-aware datetime, got {value!r}')


def _check_sha256(value: str, name: str) -> None:
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise ValueError(f'Argument "{name}" should be 64 lower-case hex digits, got {value!r}')


class InstanceOutcome(str, enum.Enum):
    """What :func:`~storage.repository.record_instance` did with an instance."""

    STORED = "stored"
    """A new SOP instance."""
    DUPLICATE = "duplicate"
    """Same SOP Instance UID and same content hash: nothing changed."""
    REPLACED = "replaced"
    """Same SOP Instance UID, different content: the row now describes the new file."""


class JobAction(str, enum.Enum):
    """What happened to the series' job when an instance was recorded."""

    CREATED = "created"
    """A new job in ``received`` (first instance, or late instance after processing began)."""
    RESTARTED = "restarted"
    """The ``complete``/``queued`` job went back to ``received``."""
    EXTENDED = "extended"
    """The job was already ``received``; its quiet timer restarted."""
    UNCHANGED = "unchanged"
    """Duplicate instance: nothing to do."""


class BackoffPolicy(Protocol):
    """Retry policy of exports (``config.RetryPolicy`` fits)."""

    @property
    def max_attempts(self) -> int | None:
        """Attempts before giving up; ``None``: never."""

    @property
    def initial_backoff(self) -> float:
        """Seconds after the first failure."""

    @property
    def max_backoff(self) -> float:
        """Longest delay in seconds."""


class ExportTarget(Protocol):
    """A destination as the repository needs it (``config.Destination`` fits)."""

    @property
    def name(self) -> str:
        """Unique destination name."""

    @property
    def objects(self) -> Sequence[str]:
        """Result object kinds it receives, e.g. ``("seg", "sr")``."""


@dataclass(frozen=True)
class InstanceAttributes:
    """What the node keeps about a received instance (input of ``record_instance``).

    Parameters
    ----------
    study_instance_uid, series_instance_uid, sop_instance_uid, sop_class_uid: str
        UIDs, validated (:class:`~storage.errors.InvalidUIDError`).
    file_path: str
        Where the file store wrote it.
    sha256: str
        Hex SHA-256 of the file.
    size: int
        File size in bytes.
    transfer_syntax_uid: str | None
        Transfer syntax of the stored file.
    modality, series_description: str | None
        Series-level attributes.
    series_number, instance_number: int | None
        Series Number, Instance Number.
    image_type: tuple[str, ...]
        Image Type values.
    frame_of_reference_uid: str | None
        Frame of Reference UID.
    patient_id, patient_name: str | None
        PHI: stored, never logged, not in ``repr``.
    study_date, accession_number, study_description: str | None
        Study-level attributes.
    calling_ae_title: str | None
        AE title of the peer that sent it.
    """

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    file_path: str
    sha256: str
    size: int
    transfer_syntax_uid: str | None = None
    modality: str | None = None
    series_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    image_type: tuple[str, ...] = ()
    frame_of_reference_uid: str | None = None
    patient_id: str | None = field(default=None, repr=False)
    patient_name: str | None = field(default=None, repr=False)
    study_date: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    calling_ae_title: str | None = None

    def __post_init__(self) -> None:
        for name in (
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "sop_class_uid",
        ):
            object.__setattr__(self, name, validate_uid(getattr(self, name), name))
        for name in ("transfer_syntax_uid", "frame_of_reference_uid"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, validate_uid(getattr(self, name), name))
        _check_sha256(self.sha256, "sha256")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f'Argument "size" should be an integer >= 0, got {self.size!r}')
        if not isinstance(self.file_path, str) or not self.file_path:
            raise ValueError(
                f'Argument "file_path" should be a non-empty string, got {self.file_path!r}'
            )
        object.__setattr__(self, "image_type", tuple(str(v) for v in self.image_type))

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        *,
        file_path: str,
        sha256: str,
        size: int,
        transfer_syntax_uid: str | None = None,
        calling_ae_title: str | None = None,
    ) -> InstanceAttributes:
        """Take the attributes from a pydicom ``Dataset`` (tolerant: missing -> ``None``).

        Raises
        ------
        InvalidUIDError
            If a required UID is missing or invalid.
        """

        def text(keyword: str) -> str | None:
            value = _attribute(dataset, keyword)
            value = None if value is None else _without_nul(value)
            return None if value is None or value == "" else value

        def integer(keyword: str) -> int | None:
            value = _attribute(dataset, keyword)
            try:
                return None if value is None or str(value).strip() == "" else int(value)
            except (TypeError, ValueError):
                return None

        image_type = _attribute(dataset, "ImageType")
        if image_type is None:
            image_types: tuple[str, ...] = ()
        elif isinstance(image_type, str):
            image_types = tuple(_without_nul(image_type).split("\\"))
        else:
            image_types = tuple(_without_nul(v) for v in image_type)
        if transfer_syntax_uid is None:
            meta = getattr(dataset, "file_meta", None)
            value = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
            transfer_syntax_uid = str(value) if value else None
        return cls(
            study_instance_uid=str(_attribute(dataset, "StudyInstanceUID") or ""),
            series_instance_uid=str(_attribute(dataset, "SeriesInstanceUID") or ""),
            sop_instance_uid=str(_attribute(dataset, "SOPInstanceUID") or ""),
            sop_class_uid=str(_attribute(dataset, "SOPClassUID") or ""),
            file_path=file_path,
            sha256=sha256,
            size=size,
            transfer_syntax_uid=transfer_syntax_uid,
            modality=text("Modality"),
            series_description=text("SeriesDescription"),
            series_number=integer("SeriesNumber"),
            instance_number=integer("InstanceNumber"),
            image_type=image_types,
            frame_of_reference_uid=text("FrameOfReferenceUID"),
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            study_date=text("StudyDate"),
            accession_number=text("AccessionNumber"),
            study_description=text("StudyDescription"),
            calling_ae_title=calling_ae_title,
        )


@dataclass(frozen=True)
class JobRecord:
    """A job as callers see it."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    state: JobState
    reason: str | None
    created_at: datetime
    updated_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker_id: str | None = None
    heartbeat_at: datetime | None = None
    run_count: int = 0


@dataclass(frozen=True)
class RecordedInstance:
    """Outcome of ``record_instance``: what happened and what the job needs.

    Parameters
    ----------
    outcome: InstanceOutcome
        Stored, duplicate or replaced.
    job_action: JobAction
        What happened to the series' job.
    job: JobRecord
        The series' current job after the call.
    series_instance_count: int
        Instances of the series now recorded.
    previous_file_path: str | None
        For a replaced instance whose file moved: the old file, which the
        caller may delete after commit. ``None`` otherwise.
    """

    outcome: InstanceOutcome
    job_action: JobAction
    job: JobRecord
    series_instance_count: int
    previous_file_path: str | None = None


@dataclass(frozen=True)
class SeriesRecord:
    """A series' bookkeeping and the attributes the selection rules use."""

    id: int
    series_instance_uid: str
    study_instance_uid: str
    modality: str | None
    series_description: str | None
    series_number: int | None
    frame_of_reference_uid: str | None
    instance_count: int
    first_received_at: datetime
    last_received_at: datetime
    calling_ae_title: str | None


@dataclass(frozen=True)
class InstanceRecord:
    """A recorded instance and its file."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str | None
    image_type: tuple[str, ...]
    instance_number: int | None
    file_path: str
    sha256: str
    size: int
    received_at: datetime


@dataclass(frozen=True)
class JobEventRecord:
    """One audit-trail entry of a job."""

    job_id: int
    from_state: JobState | None
    to_state: JobState
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class ResultObjectSpec:
    """A result object the worker wrote (input of ``record_results``).

    Parameters
    ----------
    kind: str
        ``"seg"``, ``"sr"`` (later ``"sc"``, ``"gsps"``): 1-8 lower-case letters.
    sop_class_uid, sop_instance_uid, series_instance_uid, study_instance_uid: str
        Its UIDs (validated).
    file_path: str
        Where the result store wrote it.
    sha256: str
        Hex SHA-256 of the file.
    size: int
        Its size in bytes.
    """

    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    file_path: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not re.fullmatch(r"[a-z]{1,8}", self.kind):
            raise ValueError(f'Argument "kind" should be 1-8 lower-case letters, got {self.kind!r}')
        for name in (
            "sop_class_uid",
            "sop_instance_uid",
            "series_instance_uid",
            "study_instance_uid",
        ):
            object.__setattr__(self, name, validate_uid(getattr(self, name), name))
        _check_sha256(self.sha256, "sha256")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise ValueError(f'Argument "size" should be an integer >= 0, got {self.size!r}')


@dataclass(frozen=True)
class ResultObjectRecord:
    """A recorded result object."""

    id: int
    job_id: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    file_path: str
    sha256: str
    size: int


@dataclass(frozen=True)
class ExportRecord:
    """One (result object, destination) export after a change.

    ``job_state`` is the job's state after the export bookkeeping (it turns
    ``exported`` when every export is delivered).
    """

    id: int
    job_id: int
    result_object_id: int
    destination: str
    status: ExportStatus
    attempt_count: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_error: str | None
    job_state: JobState


@dataclass(frozen=True)
class DueExport:
    """An export whose next attempt is due, with what the sender needs."""

    export_id: int
    job_id: int
    destination: str
    attempt_count: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    file_path: str
    sha256: str


@dataclass(frozen=True)
class RecoverySummary:
    """What :func:`~storage.repository.recover_after_restart` found and did.

    Parameters
    ----------
    requeued: tuple[int, ...]
        Jobs moved from ``running`` back to ``queued``.
    to_evaluate: tuple[int, ...]
        Jobs in ``complete``: the caller applies the selection rules again.
    exporting: tuple[int, ...]
        Jobs in ``written`` whose exports continue.
    pending_exports: int
        Exports still to deliver (kept as they are).
    """

    requeued: tuple[int, ...]
    to_evaluate: tuple[int, ...]
    exporting: tuple[int, ...]
    pending_exports: int


@dataclass(frozen=True)
class StatusOverview:
    """Data for ``deepsc-node status``.

    Parameters
    ----------
    job_counts: dict[JobState, int]
        Jobs per state, every state present (0 if none).
    recent_jobs: tuple[JobRecord, ...]
        Most recently changed jobs first.
    export_counts: dict[ExportStatus, int]
        Exports per status, every status present.
    """

    job_counts: dict[JobState, int]
    recent_jobs: tuple[JobRecord, ...]
    export_counts: dict[ExportStatus, int]
