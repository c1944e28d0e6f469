"""SQL of the tile tokens (region search): the Virchow2 class tokens of every slide's stored candidates.

What is stored. For every embedded slide, its top-k candidate tiles (the tiles the EAGLE
pipeline ran Virchow2 on: `candidates` in the slide artifact) with their class tokens,
µm coordinates, CHIEF attention, rank within the slide and, for the patient's selected
tiles (the ones its EAGLE vector averages), their rank within the patient. All candidates,
not only the patient's selected 25: a patient with several slides then has up to 25 tiles
per slide in the index, so a region that is rare in a multi-slide case stays findable even
when other slides hold the patient's highest-attention tiles; for one-slide patients the two
sets are the same.

Signatures. Rows carry the signature of the EAGLE vectors of the same models (the tile set
depends on CTransPath + CHIEF for the choice of tiles and on Virchow2 for the tokens); one
tile index per signature, never mixed.

Consistency. Rows are written in the same transaction as the slide row and the patient's
vectors (`put_patient_tiles`, called from re-aggregation). A slide's rows are replaced only
when its candidates changed (tokens of a given slide never change otherwise), ranks are
updated in place. Any insert or delete bumps `tile_sets.generation` and records a
`TileChange` for the tile index to follow after the commit.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import Integer, case, cast, delete, func, select, update
from sqlalchemy.orm import Session

from eagle_index.errors import NotFoundError
from eagle_index.store.models import Patient, Slide, TileSet, TileToken, tile_token_id_seq, utcnow
from eagle_index.tiles import Tile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSetInfo:
    signature: str
    dim: int
    generation: int
    count: int


@dataclass(frozen=True)
class TileChange:
    """Tile tokens were added/removed, moving the set from one generation to the next."""

    signature: str
    old_generation: int
    new_generation: int
    added: tuple[int, ...]
    removed: tuple[int, ...]


# -- writes ---------------------------------------------------------------------------------
def put_patient_tiles(session: Session, patient_id: int, signature: str, slides: list[tuple[int, object]], top_k: int) -> None:
    """Make the patient's tile rows of `signature` match its slides' candidates; inside the caller's transaction.

    slides: (slide id, SlideCandidates with class_tokens) of every embedded slide of the patient.
    """
    put_patients_tiles(session, signature, [(patient_id, slides)], top_k)


def put_patients_tiles(session: Session, signature: str, patients: list[tuple[int, list[tuple[int, object]]]], top_k: int) -> None:
    """`put_patient_tiles` for several patients (distinct ids) at once, in a handful of statements
    whatever the number of patients and tiles (it runs inside the catalog's exclusive write): the
    rows' light columns are read (no tokens), removed rows go in one DELETE, new rows get their
    ids from the sequence in one query and their patient ranks before one INSERT, changed ranks
    of kept rows are one UPDATE, and the tile set's generation moves on once."""
    from eagle_index import aggregation

    patients = [(pid, [(sid, c) for sid, c in slides if c.class_tokens is not None and len(c)]) for pid, slides in patients]
    existing: dict[tuple[int, int], list] = {}  # (patient id, slide id) -> its rows by slide rank
    for row in session.execute(select(TileToken.id, TileToken.patient_id, TileToken.slide_id, TileToken.x_um, TileToken.y_um,
                                      TileToken.patient_rank)
                               .where(TileToken.patient_id.in_([pid for pid, _ in patients]), TileToken.signature == signature)
                               .order_by(TileToken.patient_id, TileToken.slide_id, TileToken.slide_rank)):
        existing.setdefault((row.patient_id, row.slide_id), []).append(row)
    removed: list[int] = []
    changed: dict[int, int | None] = {}  # kept row id -> its new patient rank
    fresh: list[tuple[int, int, object, dict]] = []  # (patient id, slide id, candidates, row -> rank) to insert
    for pid, slides in patients:
        wanted = {sid for sid, _ in slides}
        removed += [r.id for (p, sid), rows in existing.items() if p == pid and sid not in wanted for r in rows]
        # patient ranks: the same selection (and tie rule) as the patient's EAGLE vector
        ranks: dict[tuple[int, int], int] = {}  # (slide id, row in its candidates) -> rank
        if slides:
            selection = aggregation.select_patient_tiles([c for _, c in slides], top_k)
            for rank, (s, r) in enumerate(zip(selection.slide, selection.row), start=1):
                ranks[(slides[int(s)][0], int(r))] = rank
        for sid, cand in slides:
            rows = existing.get((pid, sid), [])
            same = len(rows) == len(cand) and all(
                abs(r.x_um - float(x)) < 1e-3 and abs(r.y_um - float(y)) < 1e-3 for r, x, y in zip(rows, cand.x_um, cand.y_um))
            if same:
                changed.update({r.id: ranks.get((sid, i)) for i, r in enumerate(rows) if r.patient_rank != ranks.get((sid, i))})
            else:
                removed += [r.id for r in rows]
                fresh.append((pid, sid, cand, {i: ranks.get((sid, i)) for i in range(len(cand))}))
    added: list[dict] = []
    n_new = sum(len(cand) for _, _, cand, _ in fresh)
    if n_new:
        ids = iter(sorted(int(i) for i in session.scalars(select(tile_token_id_seq.next_value()).select_from(func.range(n_new)))))
        for pid, sid, cand, ranks_of in fresh:
            tokens = np.asarray(cand.class_tokens, dtype=np.float32)
            added += [dict(id=next(ids), patient_id=pid, slide_id=sid, signature=signature, x_um=float(cand.x_um[i]),
                           y_um=float(cand.y_um[i]), slide_rank=i + 1, patient_rank=ranks_of[i],
                           attention=float(cand.scores[i]), dim=int(tokens.shape[1]), token=tokens[i].tobytes())
                      for i in range(len(cand))]
    table = TileToken.__table__
    if removed:
        session.execute(delete(table).where(table.c.id.in_(removed)))
    if added:
        _insert_columns(session, added)
    if changed:  # one statement (an UPDATE per row costs DuckDB about a millisecond each)
        session.execute(update(table).where(table.c.id.in_(list(changed)))
                        .values(patient_rank=cast(case(changed, value=table.c.id), Integer)))
    if added or removed:
        _bump(session, signature, added[0]["dim"] if added else None, tuple(r["id"] for r in added), tuple(int(i) for i in removed))


_COLUMNS = ("id", "patient_id", "slide_id", "signature", "x_um", "y_um", "slide_rank", "patient_rank", "attention", "dim",
            "token")


def _insert_columns(session: Session, rows: list[dict]) -> None:
    """INSERT the new tile rows in one statement over an Arrow table, in the session's transaction.

    The same rows as `session.execute(insert(table), rows)`, whose executemany costs DuckDB a
    statement per row (200 rows with their 5 KB tokens: about 21 CPU-ms against 9 this way, on the
    writer thread, under the exclusive lock). Only inside `Catalog.write` (the tile set's
    generation is bumped through the ORM right after, which the writer checks)."""
    import pyarrow as pa

    types = {"id": pa.int64(), "patient_id": pa.int64(), "slide_id": pa.int64(), "signature": pa.string(), "x_um": pa.float64(),
             "y_um": pa.float64(), "slide_rank": pa.int64(), "patient_rank": pa.int64(), "attention": pa.float64(),
             "dim": pa.int64(), "token": pa.binary()}
    frame = pa.table({c: pa.array([r[c] for r in rows], types[c]) for c in _COLUMNS})
    raw = session.connection().connection.driver_connection  # the session's DuckDB connection: same transaction
    name = f"_new_tile_tokens_{threading.get_ident()}"
    raw.register(name, frame)
    try:
        columns = ", ".join(_COLUMNS)
        raw.execute(f"INSERT INTO {TileToken.__tablename__} ({columns}) SELECT {columns} FROM {name}")
    finally:
        raw.unregister(name)


def remove_slides_tiles(session: Session, slide_ids: list[int]) -> None:
    """Drop every tile row of these slides (all signatures), inside the caller's transaction: a
    slide that left its patient (superseded by new content at its path) leaves the tile index."""
    ids = [int(i) for i in slide_ids]
    if not ids:
        return
    by_signature: dict[str, list[int]] = {}
    for tid, sig in session.execute(select(TileToken.id, TileToken.signature).where(TileToken.slide_id.in_(ids))):
        by_signature.setdefault(sig, []).append(int(tid))
    table = TileToken.__table__
    for sig, removed in by_signature.items():
        session.execute(delete(table).where(table.c.id.in_(removed)))
        _bump(session, sig, None, (), tuple(removed))


def _bump(session: Session, signature: str, dim: int | None, added: tuple[int, ...], removed: tuple[int, ...]) -> None:
    tile_set = session.scalar(select(TileSet).where(TileSet.signature == signature))
    if tile_set is None:
        if dim is None:
            return
        tile_set = TileSet(signature=signature, dim=dim, generation=0)
        session.add(tile_set)
    tile_set.generation += 1
    tile_set.updated_at = utcnow()
    session.flush()
    session.info.setdefault("tile_changes", []).append(
        TileChange(signature, tile_set.generation - 1, tile_set.generation, added, removed))


def sync_patient_from_artifacts(session: Session, patient_id: int, top_k: int, signature: str | None = None) -> int:
    """Write the patient's tile rows from its slides' artifacts (their candidates); returns tiles stored.

    signature None: the EAGLE signature recorded in each artifact's provenance (artifacts
    without one are skipped). Used by re-aggregation (with the models' signature) and by the
    backfill of catalogs made before revision 0005.
    """
    from eagle_index.store.artifacts import artifact_provenance, read_slide_candidates

    rows = session.execute(select(Slide.id, Slide.artifact_path).where(
        Slide.patient_id == patient_id, Slide.status == "done", Slide.artifact_path.is_not(None)).order_by(Slide.name, Slide.id)).all()
    by_signature: dict[str, list[tuple[int, object]]] = {}
    for slide_id, path in rows:
        if not Path(path).is_file():
            log.warning("slide id %d: artifact %s missing: its tiles are not in the tile index", slide_id, path)
            continue
        sig = signature
        if sig is None:
            sig = artifact_provenance(Path(path)).get("signature")
            if not sig:
                log.warning("artifact %s records no signature: its tiles are not in the tile index", path)
                continue
        by_signature.setdefault(sig, []).append((int(slide_id), read_slide_candidates(Path(path))))
    if signature is not None:
        by_signature.setdefault(signature, [])
    for sig, slides in by_signature.items():
        put_patient_tiles(session, patient_id, sig, slides, top_k)
    return sum(len(c) for slides in by_signature.values() for _, c in slides)


def patients_missing_tiles(catalog) -> list[int]:
    """Patients with an embedded slide (artifact) that has no tile rows (catalogs older than 0005)."""
    with catalog.transaction() as session:
        has_rows = select(TileToken.slide_id).distinct()
        query = (select(Slide.patient_id).where(Slide.status == "done", Slide.artifact_path.is_not(None),
                                                Slide.id.not_in(has_rows)).distinct().order_by(Slide.patient_id))
        return [int(p) for p in session.scalars(query)]


# -- reads ----------------------------------------------------------------------------------
def tile_sets(catalog) -> list[TileSetInfo]:
    with catalog.transaction() as session:
        query = (select(TileSet.signature, TileSet.dim, TileSet.generation, func.count(TileToken.id))
                 .join(TileToken, TileToken.signature == TileSet.signature, isouter=True)
                 .group_by(TileSet.signature, TileSet.dim, TileSet.generation).order_by(TileSet.signature))
        return [TileSetInfo(sig, int(dim), int(gen), int(n)) for sig, dim, gen, n in session.execute(query)]


def tile_set(catalog, signature: str) -> TileSetInfo:
    for info in tile_sets(catalog):
        if info.signature == signature:
            return info
    raise NotFoundError(f"no stored tiles with signature {signature!r}")


def tile_ids(catalog, signature: str) -> tuple[np.ndarray, np.ndarray]:
    """(tile ids, their patient ids) of one set, sorted by tile id."""
    with catalog.transaction() as session:
        rows = session.execute(select(TileToken.id, TileToken.patient_id).where(TileToken.signature == signature)
                               .order_by(TileToken.id)).all()
    return (np.fromiter((r[0] for r in rows), np.int64, len(rows)), np.fromiter((r[1] for r in rows), np.int64, len(rows)))


def load_tokens(catalog, signature: str, ids=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tile ids, patient ids, raw tokens float32 [N, D]) of one set (or of `ids` in it), by tile id."""
    with catalog.transaction() as session:
        query = select(TileToken.id, TileToken.patient_id, TileToken.dim, TileToken.token).where(TileToken.signature == signature)
        if ids is not None:
            query = query.where(TileToken.id.in_([int(i) for i in ids]))
        rows = session.execute(query.order_by(TileToken.id)).all()
    tids = np.fromiter((r[0] for r in rows), np.int64, len(rows))
    pids = np.fromiter((r[1] for r in rows), np.int64, len(rows))
    if not rows:
        return tids, pids, np.zeros((0, 0), np.float32)
    return tids, pids, np.frombuffer(b"".join(r[3] for r in rows), np.float32).reshape(len(rows), rows[0][2])


def _rows(session: Session, query) -> list[Tile]:
    """Stored tiles (no token) with their row id, patient and slide: what a region-search hit shows."""
    query = query.join(Slide, Slide.id == TileToken.slide_id).join(Patient, Patient.id == TileToken.patient_id)
    return [Tile(name, float(t.x_um), float(t.y_um), float(t.attention), slide_id=int(t.slide_id),
                 patient_rank=None if t.patient_rank is None else int(t.patient_rank), slide_rank=int(t.slide_rank),
                 id=int(t.id), patient_id=int(t.patient_id), patient=ext)
            for t, ext, name in session.execute(query.add_columns(Patient.external_id, Slide.name))]


def tile_rows(catalog, ids) -> dict[int, Tile]:
    ids = [int(i) for i in ids]
    if not ids:
        return {}
    with catalog.transaction() as session:
        return {r.id: r for r in _rows(session, select(TileToken).where(TileToken.id.in_(ids)))}


def load_tokens_by_id(catalog, ids) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(ids, signatures, raw tokens) of tiles given by id, in the order given."""
    ids = [int(i) for i in ids]
    with catalog.transaction() as session:
        rows = {r[0]: r for r in session.execute(select(TileToken.id, TileToken.signature, TileToken.dim, TileToken.token)
                                                 .where(TileToken.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFoundError(f"unknown tile id(s) {missing}")
    return (np.asarray(ids, np.int64), [rows[i][1] for i in ids],
            np.stack([np.frombuffer(rows[i][3], np.float32) for i in ids]) if ids else np.zeros((0, 0), np.float32))


def stored_patient_tiles(catalog, patient_id: int, signature: str | None = None) -> list[Tile]:
    """A patient's stored tiles (selected ones first by rank, then the other candidates)."""
    with catalog.transaction() as session:
        query = select(TileToken).where(TileToken.patient_id == patient_id)
        if signature is not None:
            query = query.where(TileToken.signature == signature)
        rows = _rows(session, query)
    return sorted(rows, key=lambda r: (r.patient_rank is None, r.patient_rank or 0, r.slide, r.slide_rank))


def slide_tiles(catalog, slide_id: int) -> list[tuple[Tile, str]]:
    """(row, signature) of every stored tile of one slide."""
    with catalog.transaction() as session:
        sigs = dict(session.execute(select(TileToken.id, TileToken.signature).where(TileToken.slide_id == slide_id)).all())
        rows = _rows(session, select(TileToken).where(TileToken.slide_id == slide_id))
    return [(r, sigs[r.id]) for r in rows]


@dataclass(frozen=True)
class SlideInfo:
    id: int
    name: str
    patient_id: int
    patient: str
    path: str | None
    mpp: float | None
    status: str
    artifact_path: str | None


def slides_named(catalog, name: str) -> list[SlideInfo]:
    with catalog.transaction() as session:
        rows = session.execute(select(Slide, Patient.external_id).join(Patient, Patient.id == Slide.patient_id)
                               .where(Slide.name == name).order_by(Slide.id)).all()
        return [SlideInfo(s.id, s.name, s.patient_id, ext, s.path, s.mpp, s.status, s.artifact_path) for s, ext in rows]


def slide_info(catalog, slide_id: int) -> SlideInfo:
    with catalog.transaction() as session:
        row = session.execute(select(Slide, Patient.external_id).join(Patient, Patient.id == Slide.patient_id)
                              .where(Slide.id == int(slide_id))).first()
        if row is None:
            raise NotFoundError(f"unknown slide id {slide_id}")
        s, ext = row
        return SlideInfo(s.id, s.name, s.patient_id, ext, s.path, s.mpp, s.status, s.artifact_path)
