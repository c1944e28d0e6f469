"""Annotations: regions a pathologist drew (QuPath GeoJSON, the viewer), per slide.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

`annotations` holds one row per annotation: its GeoJSON geometry in the slide's level-0 pixels
(text), the feature's other properties as imported (so an export gives QuPath back what it
wrote), class name, colour, name, source, and its bounding box in pixels and µm for filtering.
A row names its slide by (patient_id, slide_name): a slide re-ingested or superseded by new
content at its path keeps its annotations; they are removed with the slide (see
eagle_index/store/annotations_repo.py).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateSequence(Sequence("annotation_id_seq")))
    op.create_table(
        "annotations",
        sa.Column("id", sa.Integer, sa.Sequence("annotation_id_seq"), primary_key=True),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("slide_name", sa.String, nullable=False),
        sa.Column("slide_id", sa.Integer),
        sa.Column("name", sa.String),
        sa.Column("class_name", sa.String),
        sa.Column("color", sa.String),
        sa.Column("shape", sa.String, nullable=False),
        sa.Column("geometry", sa.Text, nullable=False),
        sa.Column("properties", sa.Text),
        sa.Column("feature_id", sa.String),
        sa.Column("source", sa.String),
        sa.Column("x0_px", sa.Float, nullable=False),
        sa.Column("y0_px", sa.Float, nullable=False),
        sa.Column("x1_px", sa.Float, nullable=False),
        sa.Column("y1_px", sa.Float, nullable=False),
        sa.Column("x0_um", sa.Float),
        sa.Column("y0_um", sa.Float),
        sa.Column("x1_um", sa.Float),
        sa.Column("y1_um", sa.Float),
        sa.Column("created_at", sa.DateTime),
        sa.Column("updated_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_annotations"),
    )
    op.create_index("ix_annotations_patient_id", "annotations", ["patient_id"])
    op.create_index("ix_annotations_class_name", "annotations", ["class_name"])


def downgrade() -> None:
    op.drop_index("ix_annotations_class_name", "annotations")
    op.drop_index("ix_annotations_patient_id", "annotations")
    op.drop_table("annotations")
    op.execute(DropSequence(Sequence("annotation_id_seq")))
