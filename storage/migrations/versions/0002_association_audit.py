"""Audit trail of incoming associations: the ``associations`` table.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 20:45:00.000000

Self-contained on purpose (no import of storage.models): a revision is a
snapshot and must not change when the models change later. Results sent are
audited by the ``export_attempts`` table of revision 0001.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "associations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column(
            "calling_ae_title",
            sa.String(length=16),
            nullable=True,
            comment="Calling AE Title of the A-ASSOCIATE-RQ | NULL: no request",
        ),
        sa.Column(
            "called_ae_title",
            sa.String(length=16),
            nullable=True,
            comment="Called AE Title of the A-ASSOCIATE-RQ | NULL: no request",
        ),
        sa.Column("peer_address", sa.String(length=64), nullable=False, comment="Peer IP address"),
        sa.Column("peer_port", sa.Integer(), nullable=True, comment="Peer TCP port"),
        sa.Column(
            "tls", sa.Boolean(), nullable=False, comment="Whether the connection used DICOM TLS"
        ),
        sa.Column(
            "tls_peer",
            sa.String(length=256),
            nullable=True,
            comment="Subject of the peer's verified TLS client certificate",
        ),
        sa.Column(
            "started_at", sa.DateTime(timezone=True), nullable=False, comment="Connection opened"
        ),
        sa.Column(
            "ended_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Connection or association ended",
        ),
        sa.Column(
            "outcome",
            sa.Enum(
                "accepted",
                "released",
                "aborted",
                "rejected",
                "failed",
                name="association_outcome",
                native_enum=False,
                create_constraint=True,
                length=16,
            ),
            nullable=False,
        ),
        sa.Column(
            "reason", sa.Text(), nullable=True, comment="Why it was rejected, failed or aborted"
        ),
        sa.Column(
            "instances_stored",
            sa.Integer(),
            nullable=False,
            comment="C-STORE requests answered with Success",
        ),
        sa.Column(
            "instances_warning",
            sa.Integer(),
            nullable=False,
            comment="C-STORE requests answered with a Warning status",
        ),
        sa.Column(
            "instances_refused",
            sa.Integer(),
            nullable=False,
            comment="C-STORE requests answered with a failure status",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_associations")),
    )
    op.create_index(
        op.f("ix_associations_started_at"), "associations", ["started_at"], unique=False
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index(op.f("ix_associations_started_at"), table_name="associations")
    op.drop_table("associations")
