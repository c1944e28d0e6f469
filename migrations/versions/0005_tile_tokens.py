"""Tile tokens: the Virchow2 class tokens of every slide's stored candidate tiles (region search).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

`tile_tokens` holds one row per (slide, candidate tile, signature); `tile_sets` one row per
signature with a generation bumped in the same transaction as any change to its tokens (the
tile index's staleness check, like `vector_sets`). The rows of slides embedded before this
revision are filled in from their artifacts by `eagle-index reindex` (and on the first region
search or server start): see eagle_index/store/tiles_repo.py.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.schema import CreateSequence, DropSequence, Sequence

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(CreateSequence(Sequence("tile_set_id_seq")))
    op.execute(CreateSequence(Sequence("tile_token_id_seq")))
    op.create_table(
        "tile_sets",
        sa.Column("id", sa.Integer, sa.Sequence("tile_set_id_seq"), primary_key=True),
        sa.Column("signature", sa.String, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime),
        sa.PrimaryKeyConstraint("id", name="pk_tile_sets"),
        sa.UniqueConstraint("signature", name="uq_tile_sets_signature"),
    )
    op.create_table(
        "tile_tokens",
        sa.Column("id", sa.Integer, sa.Sequence("tile_token_id_seq"), primary_key=True),
        sa.Column("patient_id", sa.Integer, nullable=False),
        sa.Column("slide_id", sa.Integer, nullable=False),
        sa.Column("signature", sa.String, nullable=False),
        sa.Column("x_um", sa.Float, nullable=False),
        sa.Column("y_um", sa.Float, nullable=False),
        sa.Column("slide_rank", sa.Integer, nullable=False),
        sa.Column("patient_rank", sa.Integer),
        sa.Column("attention", sa.Float, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("token", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tile_tokens"),
    )
    op.create_index("ix_tile_tokens_slide_id", "tile_tokens", ["slide_id"])
    op.create_index("ix_tile_tokens_patient_id", "tile_tokens", ["patient_id"])


def downgrade() -> None:
    op.drop_index("ix_tile_tokens_patient_id", "tile_tokens")
    op.drop_index("ix_tile_tokens_slide_id", "tile_tokens")
    op.drop_table("tile_tokens")
    op.drop_table("tile_sets")
    op.execute(DropSequence(Sequence("tile_token_id_seq")))
    op.execute(DropSequence(Sequence("tile_set_id_seq")))
