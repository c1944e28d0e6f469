"""SQLAlchemy 2 models of the catalog (the source of truth, vectors included).

The schema is created and changed only by the Alembic revisions in `migrations/`; these
classes describe the schema at head for the ORM and must match those revisions (a test
compares them). DuckDB has no SERIAL, so integer keys come from explicit sequences.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    BigInteger,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


patient_id_seq = Sequence("patient_id_seq", metadata=Base.metadata)
slide_id_seq = Sequence("slide_id_seq", metadata=Base.metadata)
vector_id_seq = Sequence("vector_id_seq", metadata=Base.metadata)
label_id_seq = Sequence("label_id_seq", metadata=Base.metadata)
vector_set_id_seq = Sequence("vector_set_id_seq", metadata=Base.metadata)
import_id_seq = Sequence("import_id_seq", metadata=Base.metadata)
job_id_seq = Sequence("job_id_seq", metadata=Base.metadata)
cohort_id_seq = Sequence("cohort_id_seq", metadata=Base.metadata)
probe_id_seq = Sequence("probe_id_seq", metadata=Base.metadata)


class Patient(Base):
    """One patient (or case): the unit EAGLE embeds and search returns."""

    __tablename__ = "patients"
    id: Mapped[int] = mapped_column(Integer, patient_id_seq, primary_key=True)
    external_id: Mapped[str] = mapped_column(String, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Slide(Base):
    """One slide file (or, for imported features, the slide the features came from)."""

    __tablename__ = "slides"
    id: Mapped[int] = mapped_column(Integer, slide_id_seq, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String)
    path: Mapped[str | None] = mapped_column(String, nullable=True)
    fingerprint: Mapped[str] = mapped_column(String, unique=True)
    format: Mapped[str | None] = mapped_column(String, nullable=True)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    width_px: Mapped[int | None] = mapped_column(Integer, nullable=True)
    height_px: Mapped[int | None] = mapped_column(Integer, nullable=True)
    mpp: Mapped[float | None] = mapped_column(Float, nullable=True)
    mpp_source: Mapped[str | None] = mapped_column(String, nullable=True)
    n_tiles: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String, default="registered")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_path: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Vector(Base):
    """One embedding of a patient: at most one per (patient, kind, signature)."""

    __tablename__ = "vectors"
    __table_args__ = (UniqueConstraint("patient_id", "kind", "signature", name="uq_vectors_patient_kind_signature"),)
    id: Mapped[int] = mapped_column(Integer, vector_id_seq, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String)
    signature: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    source: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Label(Base):
    """A clinical or curated label of a patient (one value per name)."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("patient_id", "name", name="uq_labels_patient_name"),)
    id: Mapped[int] = mapped_column(Integer, label_id_seq, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, index=True)
    name: Mapped[str] = mapped_column(String)
    value: Mapped[str | None] = mapped_column(String, nullable=True)
    source: Mapped[str | None] = mapped_column(String, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class VectorSet(Base):
    """All vectors of one (kind, signature): what one FAISS index holds.

    `generation` grows with every change to the set, in the same transaction, so an index
    file saved at an older generation is recognised as stale.
    """

    __tablename__ = "vector_sets"
    __table_args__ = (UniqueConstraint("kind", "signature", name="uq_vector_sets_kind_signature"),)
    id: Mapped[int] = mapped_column(Integer, vector_set_id_seq, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    signature: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    provenance: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ImportRecord(Base):
    """A file already imported (by content digest), so importing it again adds nothing."""

    __tablename__ = "imports"
    id: Mapped[int] = mapped_column(Integer, import_id_seq, primary_key=True)
    sha256: Mapped[str] = mapped_column(String, unique=True)
    path: Mapped[str] = mapped_column(String)
    what: Mapped[str] = mapped_column(String)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    imported_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Base):
    """One slide file to ingest: a queue entry with a lease (revision 0003).

    States: queued -> running -> done | failed | skipped; a running job whose lease expired
    (its worker died) goes back to queued. Keyed by content fingerprint: one job per slide.
    """

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, job_id_seq, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String, unique=True)
    path: Mapped[str] = mapped_column(String)
    patient: Mapped[str | None] = mapped_column(String, nullable=True)
    mpp: Mapped[float | None] = mapped_column(Float, nullable=True)
    state: Mapped[str] = mapped_column(String, default="queued", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    progress: Mapped[str | None] = mapped_column(Text, nullable=True)
    slide_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Cohort(Base):
    """A saved cohort definition (JSON) and when its members were last materialised (revision 0004)."""

    __tablename__ = "cohorts"
    id: Mapped[int] = mapped_column(Integer, cohort_id_seq, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    definition: Mapped[str] = mapped_column(Text)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    materialized_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class CohortMember(Base):
    """A patient in a cohort's materialised member list (score: similarity or probe score, if any)."""

    __tablename__ = "cohort_members"
    cohort_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)


class Probe(Base):
    """A trained biomarker probe: definition, CV results and parameters (revision 0004).

    `model_blob` holds the fitted parameters as safetensors bytes (never pickle).
    """

    __tablename__ = "probes"
    id: Mapped[int] = mapped_column(Integer, probe_id_seq, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    label: Mapped[str] = mapped_column(String)
    kind: Mapped[str] = mapped_column(String)
    signature: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(String, default="done")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    params: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: hyper-parameters, seed, folds
    classes: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON list
    training_set: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: patient ids, labels, fold of each
    metrics: Mapped[str | None] = mapped_column(Text, nullable=True)  # JSON: per-fold and mean ± sd
    model_blob: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class ProbeScore(Base):
    """A probe applied to a patient: probability of the target class, ranked (revision 0004)."""

    __tablename__ = "probe_scores"
    probe_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    probability: Mapped[float] = mapped_column(Float)
    predicted: Mapped[str | None] = mapped_column(String, nullable=True)
    rank: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


tile_set_id_seq = Sequence("tile_set_id_seq", metadata=Base.metadata)
tile_token_id_seq = Sequence("tile_token_id_seq", metadata=Base.metadata)


class TileSet(Base):
    """All tile tokens of one signature: what one tile index holds (revision 0005).

    `generation` grows with every change to the set's tokens, in the same transaction.
    """

    __tablename__ = "tile_sets"
    __table_args__ = (UniqueConstraint("signature", name="uq_tile_sets_signature"),)
    id: Mapped[int] = mapped_column(Integer, tile_set_id_seq, primary_key=True)
    signature: Mapped[str] = mapped_column(String)
    dim: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class TileToken(Base):
    """The Virchow2 class token of one stored candidate tile of a slide (revision 0005).

    slide_rank: 1-based position in the slide's candidates (by CHIEF attention); patient_rank:
    1-based rank among the patient's selected tiles (the ones its EAGLE vector averages), or
    None when the tile is a candidate of its slide but not selected for the patient.
    """

    __tablename__ = "tile_tokens"
    id: Mapped[int] = mapped_column(Integer, tile_token_id_seq, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, index=True)
    slide_id: Mapped[int] = mapped_column(Integer, index=True)
    signature: Mapped[str] = mapped_column(String)
    x_um: Mapped[float] = mapped_column(Float)
    y_um: Mapped[float] = mapped_column(Float)
    slide_rank: Mapped[int] = mapped_column(Integer)
    patient_rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attention: Mapped[float] = mapped_column(Float)
    dim: Mapped[int] = mapped_column(Integer)
    token: Mapped[bytes] = mapped_column(LargeBinary)


annotation_id_seq = Sequence("annotation_id_seq", metadata=Base.metadata)


class Annotation(Base):
    """A region drawn on a slide: QuPath GeoJSON geometry in level-0 pixels (revision 0006).

    The slide is named by (patient_id, slide_name), so re-ingesting it, or new content stored at
    its path (the old row superseded), keeps its annotations; slide_id is the row it was made on.
    shape: rectangle | polygon | multipolygon | point | multipoint | line | multiline.
    properties: the GeoJSON feature's other properties as imported (JSON), feature_id its `id`.
    """

    __tablename__ = "annotations"
    id: Mapped[int] = mapped_column(Integer, annotation_id_seq, primary_key=True)
    patient_id: Mapped[int] = mapped_column(Integer, index=True)
    slide_name: Mapped[str] = mapped_column(String)
    slide_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    name: Mapped[str | None] = mapped_column(String, nullable=True)
    class_name: Mapped[str | None] = mapped_column(String, nullable=True, index=True)
    color: Mapped[str | None] = mapped_column(String, nullable=True)
    shape: Mapped[str] = mapped_column(String)
    geometry: Mapped[str] = mapped_column(Text)
    properties: Mapped[str | None] = mapped_column(Text, nullable=True)
    feature_id: Mapped[str | None] = mapped_column(String, nullable=True)
    source: Mapped[str | None] = mapped_column(String, nullable=True)
    x0_px: Mapped[float] = mapped_column(Float)
    y0_px: Mapped[float] = mapped_column(Float)
    x1_px: Mapped[float] = mapped_column(Float)
    y1_px: Mapped[float] = mapped_column(Float)
    x0_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    y0_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    x1_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    y1_um: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
