"""SQLAlchemy 2.0 models of the node's database.

Tables::

    studies 1--n series 1--n instances          what peers sent
                  series 1--n jobs 1--n job_events    one trip through the node each
                               jobs 1--1 results       JSON summary of the model's output
                               jobs 1--n result_objects 1--n exports 1--n export_attempts
                               jobs 1--1 triage        flag + priority of the result
                               jobs 1--n hl7_messages  HL7 ORU^R01 outbox
    associations                 audit: every incoming connection/association (no PHI)

DICOM columns carry a comment with the tag, keyword, VR, VM and whether the
value is unique (``U``) or required (``R``), as in pynetdicom's qrscp. UIDs
are ``String(64)``. Times are timezone-aware UTC (:class:`UTCDateTime`).
Patient name and ID are stored (they are needed to check that a series
belongs to its study) but are PHI: they are never logged.

The schema is created and changed only by the Alembic migrations in
``storage/migrations`` (:func:`storage.db.upgrade_database`); a test checks
that the migrations and these models agree.
"""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from storage.states import JobState

LOGGER = logging.getLogger(__name__)

__all__ = [
    "AssociationOutcome",
    "AssociationRow",
    "Base",
    "ExportAttemptRow",
    "ExportRow",
    "ExportStatus",
    "HL7MessageRow",
    "HL7MessageState",
    "InstanceRow",
    "JobEventRow",
    "JobRow",
    "ResultObjectRow",
    "ResultRow",
    "SeriesRow",
    "StudyRow",
    "TriageRow",
    "UTCDateTime",
]

#: Constraint and index names (stable across back ends, needed by Alembic).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC ``datetime`` on every back end.

    PostgreSQL stores ``timestamp with time zone``; SQLite has no time zones,
    so values are stored as naive UTC and made aware again when read. Naive
    datetimes are refused on write.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Convert to UTC (naive UTC for SQLite)."""
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError(f"should be a timezone-aware datetime, got {value!r}")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Return aware UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class ExportStatus(str, enum.Enum):
    """State of one (result object, destination) export."""

    PENDING = "pending"
    """Not yet acknowledged; retried at ``next_attempt_at``."""
    DELIVERED = "delivered"
    """The destination acknowledged the C-STORE with a success status."""
    FAILED = "failed"
    """Gave up after the retry policy's ``max_attempts``."""


class HL7MessageState(str, enum.Enum):
    """State of one HL7 message of the outbox (:class:`HL7MessageRow`)."""

    PENDING = "pending"
    """Not yet acknowledged; retried at ``next_attempt_at``."""
    SENT = "sent"
    """The receiver acknowledged it with MSA-1 ``AA`` or ``CA``."""
    FAILED = "failed"
    """Gave up after the retry policy's ``max_attempts``."""


class AssociationOutcome(str, enum.Enum):
    """How an incoming association ended (audit trail, :class:`AssociationRow`)."""

    ACCEPTED = "accepted"
    """Accepted and still open (or the node stopped before it ended)."""
    RELEASED = "released"
    """Accepted and released normally."""
    ABORTED = "aborted"
    """Aborted by either side, or the connection dropped, after the request."""
    REJECTED = "rejected"
    """A-ASSOCIATE-RJ sent (see ``reason``)."""
    FAILED = "failed"
    """The connection closed before an association request: TLS handshake
    failed, timed out, or a port probe (see ``reason``)."""


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


class Base(DeclarativeBase):
    """Declarative base with the naming convention and the UTC time type."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class StudyRow(Base):
    """A study, created by its first instance."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(
        String(64), unique=True, comment="(0020,000D) Study Instance UID | VR UI, VM 1, U"
    )
    patient_id: Mapped[str | None] = mapped_column(
        String(64), comment="(0010,0020) Patient ID | VR LO, VM 1, R | PHI: never logged"
    )
    patient_name: Mapped[str | None] = mapped_column(
        String(324), comment="(0010,0010) Patient's Name | VR PN, VM 1, R | PHI: never logged"
    )
    study_date: Mapped[str | None] = mapped_column(
        String(8), comment="(0008,0020) Study Date | VR DA, VM 1, R"
    )
    accession_number: Mapped[str | None] = mapped_column(
        String(16), comment="(0008,0050) Accession Number | VR SH, VM 1, R"
    )
    study_description: Mapped[str | None] = mapped_column(
        String(64), comment="(0008,1030) Study Description | VR LO, VM 1, O"
    )
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    series: Mapped[list[SeriesRow]] = relationship(back_populates="study")


class SeriesRow(Base):
    """A series; its instances and jobs hang off it."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(
        String(64), unique=True, comment="(0020,000E) Series Instance UID | VR UI, VM 1, U"
    )
    modality: Mapped[str | None] = mapped_column(
        String(16), comment="(0008,0060) Modality | VR CS, VM 1, R"
    )
    series_description: Mapped[str | None] = mapped_column(
        String(64), comment="(0008,103E) Series Description | VR LO, VM 1, O"
    )
    series_number: Mapped[int | None] = mapped_column(
        Integer, comment="(0020,0011) Series Number | VR IS, VM 1, R"
    )
    frame_of_reference_uid: Mapped[str | None] = mapped_column(
        String(64), comment="(0020,0052) Frame of Reference UID | VR UI, VM 1, O"
    )
    instance_count: Mapped[int] = mapped_column(default=0)
    first_received_at: Mapped[datetime]
    last_received_at: Mapped[datetime] = mapped_column(index=True)
    calling_ae_title: Mapped[str | None] = mapped_column(
        String(16), comment="Calling AE title of the association that sent the last instance"
    )

    study: Mapped[StudyRow] = relationship(back_populates="series")
    instances: Mapped[list[InstanceRow]] = relationship(back_populates="series")
    jobs: Mapped[list[JobRow]] = relationship(back_populates="series")


class InstanceRow(Base):
    """A received SOP instance and the file that holds it."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(
        String(64), unique=True, comment="(0008,0018) SOP Instance UID | VR UI, VM 1, U"
    )
    sop_class_uid: Mapped[str] = mapped_column(
        String(64), comment="(0008,0016) SOP Class UID | VR UI, VM 1, R"
    )
    transfer_syntax_uid: Mapped[str | None] = mapped_column(
        String(64), comment="(0002,0010) Transfer Syntax UID | VR UI, VM 1, R"
    )
    image_type: Mapped[str | None] = mapped_column(
        String(256), comment="(0008,0008) Image Type | VR CS, VM 2-n, R | values joined by '\\'"
    )
    instance_number: Mapped[int | None] = mapped_column(
        Integer, comment="(0020,0013) Instance Number | VR IS, VM 1, R"
    )
    file_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), comment="SHA-256 of the file, hex")
    size: Mapped[int] = mapped_column(BigInteger, comment="File size in bytes")
    received_at: Mapped[datetime]
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))

    series: Mapped[SeriesRow] = relationship(back_populates="instances")


class JobRow(Base):
    """One trip of a series through the node (:mod:`storage.states`)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_queued_at", "state", "queued_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"))
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(comment="Time of the last state change")
    completed_at: Mapped[datetime | None] = mapped_column(comment="Last entered complete")
    queued_at: Mapped[datetime | None] = mapped_column(comment="Last entered queued")
    started_at: Mapped[datetime | None] = mapped_column(comment="Last entered running")
    written_at: Mapped[datetime | None] = mapped_column(comment="Entered written")
    finished_at: Mapped[datetime | None] = mapped_column(comment="Entered a terminal state")
    worker_id: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[datetime | None]
    run_count: Mapped[int] = mapped_column(default=0, comment="How often a worker claimed it")

    series: Mapped[SeriesRow] = relationship(back_populates="jobs")
    events: Mapped[list[JobEventRow]] = relationship(
        back_populates="job", order_by="JobEventRow.id"
    )
    result: Mapped[ResultRow | None] = relationship(back_populates="job")
    result_objects: Mapped[list[ResultObjectRow]] = relationship(back_populates="job")


class JobEventRow(Base):
    """Audit trail: one row per job state change."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    from_state: Mapped[JobState | None] = mapped_column(
        _enum(JobState, "from_state"), comment="NULL when the job was created"
    )
    to_state: Mapped[JobState] = mapped_column(_enum(JobState, "to_state"))
    reason: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime]

    job: Mapped[JobRow] = relationship(back_populates="events")


class ResultRow(Base):
    """The model's output summary of a job (class probabilities etc.)."""

    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime]

    job: Mapped[JobRow] = relationship(back_populates="result")


class ResultObjectRow(Base):
    """A DICOM object the node wrote for a job (SEG, SR, later SC/GSPS).

    Its UIDs also identify the node's own output, which it never processes.
    """

    __tablename__ = "result_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8), comment='"seg", "sr", later "sc", "gsps"')
    sop_class_uid: Mapped[str] = mapped_column(
        String(64), comment="(0008,0016) SOP Class UID | VR UI, VM 1, R"
    )
    sop_instance_uid: Mapped[str] = mapped_column(
        String(64), unique=True, comment="(0008,0018) SOP Instance UID | VR UI, VM 1, U"
    )
    series_instance_uid: Mapped[str] = mapped_column(
        String(64), index=True, comment="(0020,000E) Series Instance UID | VR UI, VM 1, R"
    )
    study_instance_uid: Mapped[str] = mapped_column(
        String(64), comment="(0020,000D) Study Instance UID | VR UI, VM 1, R"
    )
    file_path: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime]

    job: Mapped[JobRow] = relationship(back_populates="result_objects")
    exports: Mapped[list[ExportRow]] = relationship(back_populates="result_object")


class ExportRow(Base):
    """Delivery of one result object to one destination."""

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("result_object_id", "destination"),
        Index("ix_exports_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    result_object_id: Mapped[int] = mapped_column(
        ForeignKey("result_objects.id", ondelete="CASCADE"), index=True
    )
    destination: Mapped[str] = mapped_column(String(64), comment="Destination name (settings)")
    status: Mapped[ExportStatus] = mapped_column(_enum(ExportStatus, "export_status"))
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        comment="When the next attempt is due (NULL once delivered or failed)"
    )
    delivered_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]

    result_object: Mapped[ResultObjectRow] = relationship(back_populates="exports")
    attempts: Mapped[list[ExportAttemptRow]] = relationship(
        back_populates="export", order_by="ExportAttemptRow.attempt_number"
    )


class ExportAttemptRow(Base):
    """One C-STORE attempt of an export."""

    __tablename__ = "export_attempts"
    __table_args__ = (UniqueConstraint("export_id", "attempt_number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    attempt_number: Mapped[int]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(
        Integer, comment="(0000,0900) Status of the C-STORE response | VR US; NULL: no response"
    )
    error: Mapped[str | None] = mapped_column(Text)
    success: Mapped[bool | None] = mapped_column(Boolean, comment="NULL while in progress")

    export: Mapped[ExportRow] = relationship(back_populates="attempts")


class AssociationRow(Base):
    """Audit trail: one row per incoming connection to the SCP.

    Written by :mod:`pacs_node.audit` when the association is accepted,
    rejected or ends. Results sent are audited by ``export_attempts``.
    Holds no patient data.
    """

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae_title: Mapped[str | None] = mapped_column(
        String(16), comment="Calling AE Title of the A-ASSOCIATE-RQ | NULL: no request"
    )
    called_ae_title: Mapped[str | None] = mapped_column(
        String(16), comment="Called AE Title of the A-ASSOCIATE-RQ | NULL: no request"
    )
    peer_address: Mapped[str] = mapped_column(String(64), comment="Peer IP address")
    peer_port: Mapped[int | None] = mapped_column(Integer, comment="Peer TCP port")
    tls: Mapped[bool] = mapped_column(Boolean, comment="Whether the connection used DICOM TLS")
    tls_peer: Mapped[str | None] = mapped_column(
        String(256), comment="Subject of the peer's verified TLS client certificate"
    )
    started_at: Mapped[datetime] = mapped_column(index=True, comment="Connection opened")
    ended_at: Mapped[datetime | None] = mapped_column(comment="Connection or association ended")
    outcome: Mapped[AssociationOutcome] = mapped_column(
        _enum(AssociationOutcome, "association_outcome")
    )
    reason: Mapped[str | None] = mapped_column(
        Text, comment="Why it was rejected, failed or aborted"
    )
    instances_stored: Mapped[int] = mapped_column(
        default=0, comment="C-STORE requests answered with Success"
    )
    instances_warning: Mapped[int] = mapped_column(
        default=0, comment="C-STORE requests answered with a Warning status"
    )
    instances_refused: Mapped[int] = mapped_column(
        default=0, comment="C-STORE requests answered with a failure status"
    )


class TriageRow(Base):
    """Triage of a job: the flag and priority the triage rules gave its result.

    Written in the same transaction as the job's state change (``written``,
    ``rejected`` or ``failed``); replaced when a retried job ends again.
    """

    __tablename__ = "triage"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    flag: Mapped[str] = mapped_column(
        String(128), comment='e.g. "COVID-19 pattern", "not analysed: <reason>"'
    )
    priority: Mapped[str] = mapped_column(
        String(16), comment='"urgent", "high", "routine" or "low"'
    )
    rank: Mapped[int] = mapped_column(
        Integer, index=True, comment="1 urgent, 2 high, 3 routine, 4 low (sort ascending)"
    )
    rule: Mapped[str] = mapped_column(String(64), comment="Name of the rule that matched")
    text: Mapped[str] = mapped_column(Text, comment="One human-readable line")
    created_at: Mapped[datetime]


class HL7MessageRow(Base):
    """Outbox of HL7 v2 messages (ORU^R01) to one RIS/worklist destination each.

    Inserted in the same transaction as the triage record, so nothing is lost
    when the node stops before sending; :mod:`pacs_node.hl7.sender` sends it.
    The message text holds PHI (patient ID): never logged.
    """

    __tablename__ = "hl7_messages"
    __table_args__ = (
        Index("ix_hl7_messages_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(
        String(64), comment="HL7 destination name (settings)"
    )
    control_id: Mapped[str] = mapped_column(
        String(20), unique=True, comment="MSH-10 Message Control ID | ST, unique"
    )
    message: Mapped[str] = mapped_column(
        Text,
        comment="The ER7-encoded message, segments separated by CR | PHI: never logged",
    )
    state: Mapped[HL7MessageState] = mapped_column(_enum(HL7MessageState, "hl7_message_state"))
    attempt_count: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(
        comment="When the next attempt is due (NULL once sent or failed)"
    )
    last_error: Mapped[str | None] = mapped_column(Text)
    ack_code: Mapped[str | None] = mapped_column(
        String(2), comment="MSA-1 Acknowledgment Code of the last ACK (AA, AE, AR, CA, CE, CR)"
    )
    created_at: Mapped[datetime]
    sent_at: Mapped[datetime | None]
