"""Cohorts with materialised members; probes with their scores.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateSequence(Sequence("cohort_id_seq")))
    op.execute(CreateSequence(Sequence("probe_id_seq")))
    op.create_table(
        "cohorts",
        sa.Column("id", sa.Integer, sa.Sequence("cohort_id_seq"), primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("member_count", sa.Integer, nullable=False),
        sa.Column("materialized_at", sa.DateTime),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_cohorts"),
        sa.UniqueConstraint("name", name="uq_cohorts_name"),
    )
    op.create_table(
        "cohort_members",
        sa.Column("cohort_id", sa.Integer, nullable=False),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("score", sa.Float),
        sa.PrimaryKeyConstraint("cohort_id", "patient_id", name="pk_cohort_members"),
    )
    op.create_table(
        "probes",
        sa.Column("id", sa.Integer, sa.Sequence("probe_id_seq"), primary_key=True),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("label", sa.String, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("signature", sa.String, nullable=False),
        sa.Column("model", sa.String, nullable=False),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("params", sa.Text),
        sa.Column("classes", sa.Text),
        sa.Column("training_set", sa.Text),
        sa.Column("metrics", sa.Text),
        sa.Column("model_blob", sa.LargeBinary),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_probes"),
        sa.UniqueConstraint("name", name="uq_probes_name"),
    )
    op.create_table(
        "probe_scores",
        sa.Column("probe_id", sa.Integer, nullable=False),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("probability", sa.Float, nullable=False),
        sa.Column("predicted", sa.String),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("probe_id", "patient_id", name="pk_probe_scores"),
    )


def downgrade() -> None:
    for table in ("probe_scores", "probes", "cohort_members", "cohorts"):
        op.drop_table(table)
    op.execute(DropSequence(Sequence("probe_id_seq")))
    op.execute(DropSequence(Sequence("cohort_id_seq")))
