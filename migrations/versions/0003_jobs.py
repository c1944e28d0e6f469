"""Ingestion job queue.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateSequence(Sequence("job_id_seq")))
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, sa.Sequence("job_id_seq"), primary_key=True),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("patient", sa.String),
        sa.Column("mpp", sa.Float),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("worker_id", sa.String),
        sa.Column("lease_until", sa.DateTime),
        sa.Column("next_attempt_at", sa.DateTime),
        sa.Column("progress", sa.Text),
        sa.Column("slide_id", sa.Integer),
        sa.Column("duration_s", sa.Float),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("fingerprint", name="uq_jobs_fingerprint"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.execute(DropSequence(Sequence("job_id_seq")))
