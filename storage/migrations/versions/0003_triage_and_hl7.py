"""Triage flags of jobs and the HL7 outbox: the ``triage`` and ``hl7_messages`` tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 23:50:00.000000

Self-contained on purpose (no import of storage.models): a revision is a
snapshot and must not change when the models change later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "triage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "flag",
            sa.String(length=128),
            nullable=False,
            comment='e.g. "COVID-19 pattern", "not analysed: <reason>"',
        ),
        sa.Column(
            "priority",
            sa.String(length=16),
            nullable=False,
            comment='"urgent", "high", "routine" or "low"',
        ),
        sa.Column(
            "rank",
            sa.Integer(),
            nullable=False,
            comment="1 urgent, 2 high, 3 routine, 4 low (sort ascending)",
        ),
        sa.Column(
            "rule", sa.String(length=64), nullable=False, comment="Name of the rule that matched"
        ),
        sa.Column("text", sa.Text(), nullable=False, comment="One human-readable line"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_triage_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_triage")),
        sa.UniqueConstraint("job_id", name=op.f("uq_triage_job_id")),
    )
    op.create_index(op.f("ix_triage_rank"), "triage", ["rank"], unique=False)

    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column(
            "destination",
            sa.String(length=64),
            nullable=False,
            comment="HL7 destination name (settings)",
        ),
        sa.Column(
            "control_id",
            sa.String(length=20),
            nullable=False,
            comment="MSH-10 Message Control ID | ST, unique",
        ),
        sa.Column(
            "message",
            sa.Text(),
            nullable=False,
            comment="The ER7-encoded message, segments separated by CR | PHI: never logged",
        ),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "sent",
                "failed",
                name="hl7_message_state",
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
            comment="When the next attempt is due (NULL once sent or failed)",
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column(
            "ack_code",
            sa.String(length=2),
            nullable=True,
            comment="MSA-1 Acknowledgment Code of the last ACK (AA, AE, AR, CA, CE, CR)",
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_hl7_messages_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint("control_id", name=op.f("uq_hl7_messages_control_id")),
    )
    op.create_index(op.f("ix_hl7_messages_job_id"), "hl7_messages", ["job_id"], unique=False)
    op.create_index(
        "ix_hl7_messages_state_next_attempt_at",
        "hl7_messages",
        ["state", "next_attempt_at"],
        unique=False,
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index("ix_hl7_messages_state_next_attempt_at", table_name="hl7_messages")
    op.drop_index(op.f("ix_hl7_messages_job_id"), table_name="hl7_messages")
    op.drop_table("hl7_messages")
    op.drop_index(op.f("ix_triage_rank"), table_name="triage")
    op.drop_table("triage")
