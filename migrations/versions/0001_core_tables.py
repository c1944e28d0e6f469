"""Core tables: patients, slides, vectors, labels.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SEQUENCES = ("patient_id_seq", "slide_id_seq", "vector_id_seq", "label_id_seq")


def upgrade() -> None:
    for name in SEQUENCES:
        op.execute(CreateSequence(Sequence(name)))
    op.create_table(
        "patients",
        sa.Column("id", sa.Integer, sa.Sequence("patient_id_seq"), primary_key=True),
        sa.Column("external_id", sa.String, nullable=False),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_patients"),
        sa.UniqueConstraint("external_id", name="uq_patients_external_id"),
    )
    op.create_table(
        "slides",
        sa.Column("id", sa.Integer, sa.Sequence("slide_id_seq"), primary_key=True),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("path", sa.String),
        sa.Column("fingerprint", sa.String, nullable=False),
        sa.Column("format", sa.String),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("width_px", sa.Integer),
        sa.Column("height_px", sa.Integer),
        sa.Column("mpp", sa.Float),
        sa.Column("mpp_source", sa.String),
        sa.Column("status", sa.String, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_slides"),
        sa.UniqueConstraint("fingerprint", name="uq_slides_fingerprint"),
    )
    op.create_index("ix_slides_patient_id", "slides", ["patient_id"])
    op.create_table(
        "vectors",
        sa.Column("id", sa.Integer, sa.Sequence("vector_id_seq"), primary_key=True),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("signature", sa.String, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("source", sa.String),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_vectors"),
        sa.UniqueConstraint("patient_id", "kind", "signature", name="uq_vectors_patient_kind_signature"),
    )
    op.create_index("ix_vectors_patient_id", "vectors", ["patient_id"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, sa.Sequence("label_id_seq"), primary_key=True),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String, nullable=False),
        sa.Column("value", sa.String),
        sa.Column("source", sa.String),
        sa.Column("created_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_labels"),
        sa.UniqueConstraint("patient_id", "name", name="uq_labels_patient_name"),
    )
    op.create_index("ix_labels_patient_id", "labels", ["patient_id"])


def downgrade() -> None:
    for table in ("labels", "vectors", "slides", "patients"):
        op.drop_table(table)
    for name in SEQUENCES:
        op.execute(DropSequence(Sequence(name)))
