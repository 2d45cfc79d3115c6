"""Initial schema: studies, series, instances, jobs, job events, results, exports.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 14:30:57.048302

Self-contained on purpose (no import of storage.models): a revision is a
snapshot and must not change when the models change later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "studies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "study_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0020,000D) Study Instance UID | VR UI, VM 1, U",
        ),
        sa.Column(
            "patient_id",
            sa.String(length=64),
            nullable=True,
            comment="(0010,0020) Patient ID | VR LO, VM 1, R | PHI: never logged",
        ),
        sa.Column(
            "patient_name",
            sa.String(length=324),
            nullable=True,
            comment="(0010,0010) Patient's Name | VR PN, VM 1, R | PHI: never logged",
        ),
        sa.Column(
            "study_date",
            sa.String(length=8),
            nullable=True,
            comment="(0008,0020) Study Date | VR DA, VM 1, R",
        ),
        sa.Column(
            "accession_number",
            sa.String(length=16),
            nullable=True,
            comment="(0008,0050) Accession Number | VR SH, VM 1, R",
        ),
        sa.Column(
            "study_description",
            sa.String(length=64),
            nullable=True,
            comment="(0008,1030) Study Description | VR LO, VM 1, O",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studies")),
        sa.UniqueConstraint("study_instance_uid", name=op.f("uq_studies_study_instance_uid")),
    )
    op.create_table(
        "series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column(
            "series_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0020,000E) Series Instance UID | VR UI, VM 1, U",
        ),
        sa.Column(
            "modality",
            sa.String(length=16),
            nullable=True,
            comment="(0008,0060) Modality | VR CS, VM 1, R",
        ),
        sa.Column(
            "series_description",
            sa.String(length=64),
            nullable=True,
            comment="(0008,103E) Series Description | VR LO, VM 1, O",
        ),
        sa.Column(
            "series_number",
            sa.Integer(),
            nullable=True,
            comment="(0020,0011) Series Number | VR IS, VM 1, R",
        ),
        sa.Column(
            "frame_of_reference_uid",
            sa.String(length=64),
            nullable=True,
            comment="(0020,0052) Frame of Reference UID | VR UI, VM 1, O",
        ),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("first_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "calling_ae_title",
            sa.String(length=16),
            nullable=True,
            comment="Calling AE title of the association that sent the last instance",
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["studies.id"],
            name=op.f("fk_series_study_id_studies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
        sa.UniqueConstraint("series_instance_uid", name=op.f("uq_series_series_instance_uid")),
    )
    op.create_index(
        op.f("ix_series_last_received_at"), "series", ["last_received_at"], unique=False
    )
    op.create_index(op.f("ix_series_study_id"), "series", ["study_id"], unique=False)

    op.create_table(
        "instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column(
            "sop_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0008,0018) SOP Instance UID | VR UI, VM 1, U",
        ),
        sa.Column(
            "sop_class_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0008,0016) SOP Class UID | VR UI, VM 1, R",
        ),
        sa.Column(
            "transfer_syntax_uid",
            sa.String(length=64),
            nullable=True,
            comment="(0002,0010) Transfer Syntax UID | VR UI, VM 1, R",
        ),
        sa.Column(
            "image_type",
            sa.String(length=256),
            nullable=True,
            comment="(0008,0008) Image Type | VR CS, VM 2-n, R | values joined by '\\'",
        ),
        sa.Column(
            "instance_number",
            sa.Integer(),
            nullable=True,
            comment="(0020,0013) Instance Number | VR IS, VM 1, R",
        ),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column(
            "sha256", sa.String(length=64), nullable=False, comment="SHA-256 of the file, hex"
        ),
        sa.Column("size", sa.BigInteger(), nullable=False, comment="File size in bytes"),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("calling_ae_title", sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["series.id"],
            name=op.f("fk_instances_series_id_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_instances_sop_instance_uid")),
    )
    op.create_index(op.f("ix_instances_series_id"), "instances", ["series_id"], unique=False)

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "received",
                "complete",
                "queued",
                "running",
                "written",
                "exported",
                "rejected",
                "failed",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            nullable=False,
            comment="Time of the last state change",
        ),
        sa.Column(
            "completed_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Last entered complete",
        ),
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), nullable=True, comment="Last entered queued"
        ),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=True, comment="Last entered running"
        ),
        sa.Column(
            "written_at", sa.DateTime(timezone=True), nullable=True, comment="Entered written"
        ),
        sa.Column(
            "finished_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Entered a terminal state",
        ),
        sa.Column("worker_id", sa.String(length=128), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "run_count", sa.Integer(), nullable=False, comment="How often a worker claimed it"
        ),
        sa.ForeignKeyConstraint(
            ["series_id"], ["series.id"], name=op.f("fk_jobs_series_id_series"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    op.create_index(op.f("ix_jobs_series_id"), "jobs", ["series_id"], unique=False)
    op.create_index("ix_jobs_state_queued_at", "jobs", ["state", "queued_at"], unique=False)

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "from_state",
            sa.Enum(
                "received",
                "complete",
                "queued",
                "running",
                "written",
                "exported",
                "rejected",
                "failed",
                name="from_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=True,
            comment="NULL when the job was created",
        ),
        sa.Column(
            "to_state",
            sa.Enum(
                "received",
                "complete",
                "queued",
                "running",
                "written",
                "exported",
                "rejected",
                "failed",
                name="to_state",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_events_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_events")),
    )
    op.create_index(op.f("ix_job_events_job_id"), "job_events", ["job_id"], unique=False)

    op.create_table(
        "result_objects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "kind", sa.String(length=8), nullable=False, comment='"seg", "sr", later "sc", "gsps"'
        ),
        sa.Column(
            "sop_class_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0008,0016) SOP Class UID | VR UI, VM 1, R",
        ),
        sa.Column(
            "sop_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0008,0018) SOP Instance UID | VR UI, VM 1, U",
        ),
        sa.Column(
            "series_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0020,000E) Series Instance UID | VR UI, VM 1, R",
        ),
        sa.Column(
            "study_instance_uid",
            sa.String(length=64),
            nullable=False,
            comment="(0020,000D) Study Instance UID | VR UI, VM 1, R",
        ),
        sa.Column("file_path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_result_objects_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_objects")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_result_objects_sop_instance_uid")),
    )
    op.create_index(op.f("ix_result_objects_job_id"), "result_objects", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_result_objects_series_instance_uid"),
        "result_objects",
        ["series_instance_uid"],
        unique=False,
    )

    op.create_table(
        "results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_results_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_results")),
        sa.UniqueConstraint("job_id", name=op.f("uq_results_job_id")),
    )
    op.create_table(
        "exports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("result_object_id", sa.Integer(), nullable=False),
        sa.Column(
            "destination",
            sa.String(length=64),
            nullable=False,
            comment="Destination name (settings)",
        ),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "delivered",
                "failed",
                name="export_status",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the next attempt is due (NULL once delivered or failed)",
        ),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["result_object_id"],
            ["result_objects.id"],
            name=op.f("fk_exports_result_object_id_result_objects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_exports")),
        sa.UniqueConstraint(
            "result_object_id", "destination", name=op.f("uq_exports_result_object_id_destination")
        ),
    )
    op.create_index(
        op.f("ix_exports_result_object_id"), "exports", ["result_object_id"], unique=False
    )
    op.create_index(
        "ix_exports_status_next_attempt_at", "exports", ["status", "next_attempt_at"], unique=False
    )

    op.create_table(
        "export_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("export_id", sa.Integer(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "status_code",
            sa.Integer(),
            nullable=True,
            comment="(0000,0900) Status of the C-STORE response | VR US; NULL: no response",
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True, comment="NULL while in progress"),
        sa.ForeignKeyConstraint(
            ["export_id"],
            ["exports.id"],
            name=op.f("fk_export_attempts_export_id_exports"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_attempts")),
        sa.UniqueConstraint(
            "export_id", "attempt_number", name=op.f("uq_export_attempts_export_id_attempt_number")
        ),
    )
    op.create_index(
        op.f("ix_export_attempts_export_id"), "export_attempts", ["export_id"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_export_attempts_export_id"), table_name="export_attempts")

    op.drop_table("export_attempts")
    op.drop_index("ix_exports_status_next_attempt_at", table_name="exports")
    op.drop_index(op.f("ix_exports_result_object_id"), table_name="exports")

    op.drop_table("exports")
    op.drop_table("results")
    op.drop_index(op.f("ix_result_objects_series_instance_uid"), table_name="result_objects")
    op.drop_index(op.f("ix_result_objects_job_id"), table_name="result_objects")

    op.drop_table("result_objects")
    op.drop_index(op.f("ix_job_events_job_id"), table_name="job_events")

    op.drop_table("job_events")
    op.drop_index("ix_jobs_state_queued_at", table_name="jobs")
    op.drop_index(op.f("ix_jobs_series_id"), table_name="jobs")

    op.drop_table("jobs")
    op.drop_index(op.f("ix_instances_series_id"), table_name="instances")

    op.drop_table("instances")
    op.drop_index(op.f("ix_series_study_id"), table_name="series")
    op.drop_index(op.f("ix_series_last_received_at"), table_name="series")

    op.drop_table("series")
    op.drop_table("studies")
