"""Vector sets with generation numbers, import records, slide artifacts.

Existing vectors are grouped into vector sets (generation 1), so an index file written
before this revision is seen as stale and rebuilt.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateSequence(Sequence("vector_set_id_seq")))
    op.execute(CreateSequence(Sequence("import_id_seq")))
    op.create_table(
        "vector_sets",
        sa.Column("id", sa.Integer, sa.Sequence("vector_set_id_seq"), primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("signature", sa.String, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("provenance", sa.Text),
        sa.Column("updated_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_vector_sets"),
        sa.UniqueConstraint("kind", "signature", name="uq_vector_sets_kind_signature"),
    )
    op.create_table(
        "imports",
        sa.Column("id", sa.Integer, sa.Sequence("import_id_seq"), primary_key=True),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("path", sa.String, nullable=False),
        sa.Column("what", sa.String, nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("imported_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_imports"),
        sa.UniqueConstraint("sha256", name="uq_imports_sha256"),
    )
    op.add_column("slides", sa.Column("n_tiles", sa.Integer))
    op.add_column("slides", sa.Column("artifact_path", sa.String))
    op.execute(
        "INSERT INTO vector_sets (id, kind, signature, dim, generation, updated_at) "
        "SELECT nextval('vector_set_id_seq'), kind, signature, max(dim), 1, now() "
        "FROM vectors GROUP BY kind, signature"
    )


def downgrade() -> None:
    op.drop_column("slides", "artifact_path")
    op.drop_column("slides", "n_tiles")
    op.drop_table("imports")
    op.drop_table("vector_sets")
    op.execute(DropSequence(Sequence("import_id_seq")))
    op.execute(DropSequence(Sequence("vector_set_id_seq")))
