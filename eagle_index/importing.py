"""Import what users already have: embedding files, tile-feature files, clinical tables.

Each import parses everything first (errors name the file and dataset), then writes in one
catalog transaction, so a failing file stores nothing. A file (or set of files) imported
before, recognised by content digest, is not imported twice.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eagle_index import aggregation
from eagle_index.config import Settings
from eagle_index.errors import InputError, ModelError, NotFoundError
from eagle_index.formats.embeddings import STAMP_ENCODER_KINDS, read_embedding_file
from eagle_index.formats.features import TileFeatures, align_rows, read_tile_features
from eagle_index.formats.h5util import file_sha256
from eagle_index.formats.tables import SlideRow, read_clinical_table, read_slide_table
from eagle_index.identifiers import check_identifier
from eagle_index.store.catalog import Catalog
from eagle_index import signatures

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    source: str
    already_imported: bool = False
    patients: int = 0
    slides: int = 0
    vectors: dict[str, int] = field(default_factory=dict)
    labels: int = 0
    unknown_patients: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _digest_of(parts: list[str]) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


# -- embeddings -----------------------------------------------------------------------------
def import_embeddings(
    catalog: Catalog,
    paths: list[Path],
    kind: str | None = None,
    signature: str | None = None,
    slide_table: Path | None = None,
) -> ImportReport:
    """EAGLE output files (one dataset per patient) and STAMP v2 slide/patient embedding files."""
    files = _expand(paths, "*.h5")
    report = ImportReport(source=", ".join(str(p) for p in paths))
    slide_to_patient = {row.stem: row.patient for row in read_slide_table(slide_table)} if slide_table else {}
    parsed = [read_embedding_file(p) for p in files]
    if kind is not None:
        for emb in parsed:
            _check_given_kind(catalog, kind, emb)
    groups: dict[tuple[str, str], tuple[list[str], list[np.ndarray], list[Path]]] = {}
    provenances: dict[tuple[str, str], dict] = {}
    for emb in parsed:
        file_kind = kind or STAMP_ENCODER_KINDS.get((emb.encoder or "").lower()) or "eagle"
        # a file written by `eagle-index embed` records the signature of the models that made it:
        # keep it, so its vectors are searched with an archive built by the same models
        stored = emb.attrs.get("signature") if emb.attrs.get("eagle_index_provenance") else None
        file_signature = signature or stored or signatures.imported(file_kind, emb.layout, emb.encoder)
        if provenance_of(emb) is not None:
            provenances.setdefault((file_kind, file_signature), provenance_of(emb))
        ids = emb.ids
        if emb.level == "slide":
            ids = [slide_to_patient.get(i) or signatures.patient_from_name(i) for i in ids]
            if len(files) > 1 and len(set(ids)) < len(ids):
                raise InputError(f"{emb.path}: several slides map to one patient; import patient-level embeddings instead")
        ids = [check_identifier("patient id", i, where=str(emb.path)) for i in ids]  # named by file, before anything is stored
        patients, vectors, sources = groups.setdefault((file_kind, file_signature), ([], [], []))
        for pid, vec in zip(ids, emb.vectors):
            if vectors and vec.shape != vectors[0].shape:
                raise InputError(f"{emb.path}: vectors have {vec.shape[-1]} dimensions, but {sources[0]} has "
                                 f"{vectors[0].shape[-1]}; import files of different sizes separately, with --kind or --signature")
            if pid in patients:
                other = sources[patients.index(pid)]
                raise InputError(f"{emb.path}: patient {pid!r} appears twice (also in {other})")
            patients.append(pid)
            vectors.append(vec)
            sources.append(emb.path)
    digest = _digest_of(sorted(file_sha256(p) for p in files) + [f"{k}|{s}" for k, s in sorted(groups)])

    def write(session) -> ImportReport:
        if catalog.already_imported(session, digest):
            report.already_imported = True
            return report
        all_patients: set[str] = set()
        for (file_kind, file_signature), (patients, vectors, sources) in groups.items():
            ids = [catalog.patient_id(session, p, create=True) for p in patients]
            catalog.put_vectors(session, file_kind, file_signature, ids, np.stack(vectors), source=str(sources[0]),
                                provenance=provenances.get((file_kind, file_signature)))
            report.vectors[file_kind] = report.vectors.get(file_kind, 0) + len(ids)
            all_patients.update(patients)
        report.patients = len(all_patients)
        catalog.record_import(session, digest, files[0], "embeddings", sum(report.vectors.values()))
        return report

    return catalog.write(write)


def _kinds_named_by(emb) -> set[str]:
    """Vector kinds a file's own metadata names: its eagle-index provenance, a `kind` attribute, its STAMP encoder."""
    named = {str(v) for v in ((provenance_of(emb) or {}).get("kind"), emb.attrs.get("kind")) if v}
    if emb.encoder:
        named |= {emb.encoder, emb.encoder.lower(), STAMP_ENCODER_KINDS.get(emb.encoder.lower(), emb.encoder.lower())}
    return named


def _check_given_kind(catalog: Catalog, kind: str, emb) -> None:
    """`--kind` must be a kind eagle-index knows (or the archive holds) or one the file itself names, and must not
    contradict the kind the file's eagle-index provenance records."""
    from eagle_index.models import vector_kinds

    named = _kinds_named_by(emb)
    recorded = (provenance_of(emb) or {}).get("kind")
    if recorded and kind != recorded:
        raise InputError(f"{emb.path}: --kind {kind!r}, but the file's vectors are {recorded!r} vectors "
                         f"(signed {emb.attrs.get('signature') or 'by eagle-index'}); leave out --kind")
    known = set(vector_kinds()) | {s.kind for s in catalog.vector_sets()}
    if kind not in known and kind not in named:
        raise InputError(f"unknown vector kind {kind!r}; known: {', '.join(sorted(known))} "
                         "(a new kind only when the file's own metadata names it)")


def provenance_of(emb) -> dict | None:
    """The provenance `eagle-index embed` wrote into the file, if any (ignored when unreadable)."""
    import json

    text = emb.attrs.get("eagle_index_provenance")
    try:
        value = json.loads(text) if text else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# -- tile features --------------------------------------------------------------------------
@dataclass
class _SlideFeatures:
    row: SlideRow
    ctranspath: TileFeatures
    virchow2: TileFeatures | None
    sha256: str


def _find_feature_file(folder: Path, row: SlideRow) -> Path | None:
    for candidate in (folder / f"{row.stem}.h5", folder / Path(row.filename).name):
        if candidate.suffix == ".h5" and candidate.is_file():
            return candidate
    return None


def import_features(
    catalog: Catalog,
    settings: Settings,
    slide_table: Path,
    ctranspath_dir: Path,
    virchow2_dir: Path | None = None,
    chief=None,
    progress=None,
) -> ImportReport:
    """STAMP v1/v2 tile features grouped into patients by a slide table.

    Always stores `mean-ctranspath`; with a CHIEF model also `chief`; with Virchow2 class-token
    tile features of the same tiles also `eagle` (rows matched by coordinates).
    """
    rows = read_slide_table(slide_table)
    report = ImportReport(source=str(slide_table))
    for folder in filter(None, (ctranspath_dir, virchow2_dir)):
        if not Path(folder).is_dir():
            raise InputError(f"{folder}: feature folder not found")
    missing = [f"{row.filename} ({ctranspath_dir / (row.stem + '.h5')})" for row in rows if _find_feature_file(ctranspath_dir, row) is None]
    if virchow2_dir is not None:
        missing += [f"{row.filename} ({virchow2_dir / (row.stem + '.h5')})" for row in rows if _find_feature_file(virchow2_dir, row) is None]
    if missing:
        shown = "; ".join(missing[:5]) + (f"; and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{slide_table}: {len(missing)} slide(s) have no feature file: {shown}")
    slides: list[_SlideFeatures] = []
    for number, row in enumerate(rows, 1):
        if progress is not None:
            progress(number, len(rows), f"reading {row.filename}")
        ctp_path = _find_feature_file(ctranspath_dir, row)
        ctp = read_tile_features(ctp_path)
        vir = None
        if virchow2_dir is not None:
            vir_path = _find_feature_file(virchow2_dir, row)
            vir = read_tile_features(vir_path)
            vir.feats = vir.feats[align_rows(ctp, vir)]
            vir.x_um, vir.y_um = ctp.x_um, ctp.y_um
        slides.append(_SlideFeatures(row, ctp, vir, file_sha256(ctp_path)))
    dims = {s.ctranspath.feats.shape[1] for s in slides}
    if len(dims) != 1:
        raise InputError(f"{slide_table}: feature files have different dimensions {sorted(dims)}")

    by_patient: dict[str, list[_SlideFeatures]] = {}
    for s in slides:
        by_patient.setdefault(s.row.patient, []).append(s)
    for group in by_patient.values():
        group.sort(key=lambda s: s.row.stem)

    extractor = slides[0].ctranspath.extractor
    kinds: dict[str, tuple[str, list[np.ndarray]]] = {"mean-ctranspath": (signatures.imported("mean-ctranspath", "stamp", extractor), [])}
    for group in by_patient.values():
        kinds["mean-ctranspath"][1].append(aggregation.mean_pooled(np.concatenate([s.ctranspath.feats for s in group])))
    if chief is not None and chief.spec.input_dim != dims.copy().pop():
        report.notes.append(f"CHIEF expects {chief.spec.input_dim}-d features, these are {dims.pop()}-d: chief/eagle vectors skipped")
        chief = None
    if chief is None:
        report.notes.append("no CHIEF model: stored mean-ctranspath only")
    else:
        _add_chief_and_eagle(settings, chief, by_patient, kinds, extractor, report)

    digest = _digest_of(sorted(s.sha256 for s in slides) + [file_sha256(slide_table)] + [f"{k}|{sig}" for k, (sig, _) in sorted(kinds.items())])
    def write(session) -> bool:
        if catalog.already_imported(session, digest):
            report.already_imported = True
            return False
        patient_ids = [catalog.patient_id(session, p, create=True) for p in by_patient]
        for pid, group in zip(patient_ids, by_patient.values()):
            for s in group:
                catalog.add_slide(
                    session, pid, s.row.stem, f"features-sha256:{s.sha256}", path=s.row.filename,
                    mpp=s.row.mpp, n_tiles=len(s.ctranspath), status="imported",
                )
        for kind, (signature, vectors) in kinds.items():
            if vectors:
                catalog.put_vectors(session, kind, signature, patient_ids, np.stack(vectors), source=str(slide_table))
                report.vectors[kind] = len(vectors)
        catalog.record_import(session, digest, Path(slide_table), "features", len(slides))
        return True

    if catalog.write(write):
        report.patients, report.slides = len(by_patient), len(slides)
    return report


def _add_chief_and_eagle(settings, chief, by_patient, kinds, extractor, report) -> None:
    top_k = settings.eagle.top_k
    chief_vectors, eagle_vectors = [], []
    has_virchow = all(s.virchow2 is not None for group in by_patient.values() for s in group)
    for group in by_patient.values():
        scores = [chief.raw_attention(s.ctranspath.feats) for s in group]
        chief_vectors.append(aggregation.attention_pooled(np.concatenate(scores), np.concatenate([s.ctranspath.feats for s in group])))
        if has_virchow:
            candidates = []
            for s, sc in zip(group, scores):
                cand = aggregation.slide_candidates(s.row.stem, sc, s.ctranspath.x_um, s.ctranspath.y_um, top_k)
                rows = np.lexsort((s.ctranspath.x_um, s.ctranspath.y_um))[cand.tile_index]
                cand.class_tokens = s.virchow2.feats[rows].astype(np.float32)
                candidates.append(cand)
            vector, _ = aggregation.eagle_patient_vector(candidates, top_k)
            eagle_vectors.append(vector)
    kinds["chief"] = (signatures.imported("chief", "stamp", extractor, chief=chief), chief_vectors)
    if has_virchow:
        vir_extractor = next(iter(by_patient.values()))[0].virchow2.extractor
        kinds["eagle"] = (signatures.imported("eagle", "stamp", extractor, chief=chief, virchow2_extractor=vir_extractor), eagle_vectors)
    else:
        report.notes.append("no Virchow2 tile features (--virchow2): eagle vectors skipped")


# -- labels ---------------------------------------------------------------------------------
def import_labels(catalog: Catalog, path: Path, create_missing: bool = False, source: str | None = None) -> ImportReport:
    table = read_clinical_table(path)
    report = ImportReport(source=str(path))
    digest = _digest_of([file_sha256(path), f"create={create_missing}"])

    def write(session) -> bool:
        if catalog.already_imported(session, digest):
            report.already_imported = True
            return False
        for patient, values in table.labels.items():
            try:
                pid = catalog.patient_id(session, patient, create=create_missing)
            except NotFoundError:  # reported below, not stored
                report.unknown_patients.append(patient)
                continue
            report.patients += 1
            for name, value in values.items():
                catalog.put_label(session, pid, name, value, source or Path(path).name)
                report.labels += 1
        catalog.record_import(session, digest, Path(path), "labels", report.labels)
        return True

    if not catalog.write(write):
        return report
    if report.unknown_patients:
        report.notes.append(
            f"{len(report.unknown_patients)} patient(s) in {path} are not in the catalog and were not stored "
            f"(use --create-missing to add them): {', '.join(report.unknown_patients[:10])}"
        )
    return report


def _expand(paths: list[Path], pattern: str) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(path.rglob(pattern))
            if not found:
                raise InputError(f"{path}: no {pattern} files in this folder")
            files.extend(found)
        else:
            files.append(path)
    if not files:
        raise InputError("no files given")
    return files


__all__ = ["ImportReport", "import_embeddings", "import_features", "import_labels", "ModelError"]
