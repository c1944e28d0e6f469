"""Look-alike search: by stored patient (GET, the CLI's shape), by patient or vector with filters
(POST, the full result), by uploaded slide (a background task), and matching tile pairs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
from flask import Blueprint, jsonify, request

from web import browse
from web.api.params import (bool_arg, bool_value, check_object, float_arg, int_arg, int_field, json_body, label_args, service,
                            str_field, tasks)
from web.errors import ApiError

bp = Blueprint("search", __name__)

UPLOAD_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".scn", ".bif", ".svslide", ".png", ".jpg", ".jpeg")
KEEP_UPLOADS = 50
MAX_K = 1000


def _filters_from_args():
    from eagle_index.search import SearchFilters

    labels = label_args("label")
    cohorts = [c for c in request.args.getlist("cohort") if c]
    min_score = float_arg("min_score", None, -1.0, 1.0)
    exclude_site = bool_arg("exclude_site")
    exclude_same = [v for v in request.args.getlist("exclude_same") if v]
    exclude_patients = [v for v in request.args.getlist("exclude_patient") if v]
    if not (labels or cohorts or min_score is not None or exclude_site or exclude_same or exclude_patients):
        return None
    return SearchFilters.build(labels=labels, cohorts=cohorts, min_score=min_score, exclude_patients=exclude_patients,
                               exclude_same_site=exclude_site, site_label=request.args.get("site_label") or "site",
                               exclude_same=exclude_same)


@bp.get("/search")
def search():
    """Hits for a stored patient: the same JSON as `eagle-index search --patient ID --json`
    (a list of hits; {hits, vote} with `vote`)."""
    patient = request.args.get("patient")
    if not patient:
        raise ApiError(400, "patient is required", field="patient")
    k = int_arg("k", 10, 1, MAX_K)
    kind = request.args.get("kind") or "eagle"
    signature = request.args.get("signature") or None
    filters = _filters_from_args()
    explain = bool_arg("explain")
    pairs = int_arg("pairs", 5, 1, 25)
    vote = request.args.get("vote") or None
    svc = service()
    if filters is None and not explain and not vote:
        return jsonify(svc.search_patient(patient, k=k, kind=kind, signature=signature))
    result = svc.searcher.search_patient(patient, k, kind, signature, filters, explain=explain, vote=vote, pairs=pairs)
    return jsonify({"hits": result.hits, "vote": result.vote} if vote else result.hits)


def _filters_from_body(body: dict):
    from eagle_index.errors import InputError
    from eagle_index.search import SearchFilters

    raw = body.get("filters")
    if raw is None:
        return SearchFilters()
    if not isinstance(raw, dict):
        raise ApiError(400, "filters must be an object", field="filters")
    raw = check_object(raw, "filters", lists=("cohorts", "exclude_patients", "exclude_same"), numbers=("min_score",),
                       strings=("site_label",), bools=("exclude_same_site",), mappings=("labels",))
    try:
        return SearchFilters.from_dict(raw)
    except (InputError, TypeError) as exc:
        raise ApiError(400, f"filters: {exc}", field="filters") from None


def decorate(svc, result: dict) -> dict:
    """Add what pages need to render hits: each hit patient's thumbnail URL (None without a slide file)."""
    from eagle_index.store import cohorts_repo

    names = [h["patient"] for h in result["hits"]]
    ids = svc.catalog.patient_ids(names)
    files = cohorts_repo.slide_files(svc.catalog, list(ids.values()))
    for hit in result["hits"]:
        pid = ids.get(hit["patient"])
        has_file = pid is not None and any(p and Path(p).is_file() for _, p in files.get(pid, []))
        hit["thumbnail_url"] = f"/api/v1/patients/{hit['patient']}/thumbnail.png" if has_file else None
    return result


@bp.post("/search")
def search_full():
    """Search by {"patient": ID} or {"vector": [...]}, with filters, explanations and a vote; the full result."""
    body = json_body()
    patient = str_field(body, "patient")
    vector = body.get("vector")
    if (patient is None) == (vector is None):
        raise ApiError(400, "give exactly one query: patient or vector", field="patient")
    k = int_field(body, "k", 10, 1, MAX_K)
    kind = str_field(body, "kind", default="eagle")
    signature = str_field(body, "signature")
    explain = bool_value(body.get("explain"), "explain")
    pairs = int_field(body, "pairs", 5, 1, 25)
    vote = str_field(body, "vote")
    filters = _filters_from_body(body)
    svc = service()
    if patient is not None:
        result = svc.searcher.search_patient(patient, k, kind, signature, filters, explain=explain, vote=vote, pairs=pairs)
        out = decorate(svc, result.as_dict())
        if explain:
            _tile_urls(svc, out["hits"], query=patient)
        return jsonify(out)
    else:
        if not isinstance(vector, list) or not vector or len(vector) > 65536 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise ApiError(400, "vector must be a non-empty list of numbers", field="vector")
        array = np.asarray(vector, dtype=np.float32)
        if not np.all(np.isfinite(array)) or not np.any(array):
            raise ApiError(400, "vector must be finite and not all zeros", field="vector")
        result = svc.searcher.search_vector(array, k, kind, signature, filters, vote=vote)
    return jsonify(decorate(svc, result.as_dict()))


def _store_upload(svc, upload) -> tuple[str, Path]:
    suffix = Path(upload.filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ApiError(400, f"slide files must be one of {', '.join(UPLOAD_SUFFIXES)} (got {suffix or 'no extension'})", field="file")
    folder = svc.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex
    target = folder / f"{upload_id}{suffix}"
    upload.save(target)
    old = sorted((p for p in folder.iterdir() if len(p.stem) == 32 and p.is_file()), key=lambda p: p.stat().st_mtime)
    for stale in old[:-KEEP_UPLOADS]:
        stale.unlink(missing_ok=True)
    return upload_id, target


@bp.post("/search/upload")
def search_upload():
    """Search with an uploaded slide (multipart `file`; fields k, kind, patient, vote, explain, filters as
    JSON). Embedding takes a while: answers 202 with a task to poll at /api/v1/tasks/<id>."""
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ApiError(400, "a slide file is required", field="file")
    form = request.form
    k = int_field(form, "k", 10, 1, MAX_K)
    kind = form.get("kind") or "eagle"
    patient = (form.get("patient") or "").strip()[:200] or None
    vote = (form.get("vote") or "").strip() or None
    explain = bool_value(form.get("explain"), "explain", True)
    pairs = int_field(form, "pairs", 5, 1, 25)
    try:
        filters = _filters_from_body({"filters": json.loads(form["filters"])} if form.get("filters") else {})
    except ValueError:
        raise ApiError(400, "filters must be a JSON object", field="filters") from None
    svc = service()
    upload_id, path = _store_upload(svc, upload)
    original = Path(upload.filename).name[:200]

    def work(progress):
        from eagle_index.errors import EagleIndexError

        progress(0, 2, "embedding the uploaded slide")
        try:
            result = svc.searcher.search_slides([path], k, kind, patient or f"upload-{upload_id[:8]}", filters,
                                                explain=explain, vote=vote, pairs=pairs)
        except EagleIndexError as exc:  # speak of the user's file, never of the server's copy
            message = str(exc).replace(str(path), original).replace(path.name, original).replace(path.stem, Path(original).stem)
            raise type(exc)(message) from None
        progress(1, 2, "searching")
        out = decorate(svc, result.as_dict())
        out["query"]["slides"] = [original]
        out["upload"] = {"id": upload_id, "name": original, "thumbnail_url": f"/api/v1/uploads/{upload_id}/thumbnail.png"}
        _tile_urls(svc, out["hits"], upload_id)
        progress(2, 2, "done")
        return out

    task = tasks().submit("search-upload", work, upload=upload_id, name=original)
    return jsonify({"task": task.id, "upload": upload_id, "status_url": f"/api/v1/tasks/{task.id}"}), 202


def _slide_ids(svc, external_id: str) -> dict[str, int]:
    pid = browse.patient_row(svc.catalog, external_id)
    out: dict[str, int] = {}
    for row in browse.slides_of_patient(svc.catalog, pid):
        if row.status == "done":
            out.setdefault(row.name, row.id)
    return out


def _tile_urls(svc, hits: list[dict], upload_id: str | None = None, query: str | None = None) -> None:
    from web.media import tile_url

    query_slides = _slide_ids(svc, query) if query else {}
    for hit in hits:
        if not hit.get("explanation"):
            continue
        hit_slides = _slide_ids(svc, hit["patient"])
        for pair in hit["explanation"]:
            sid = hit_slides.get(pair["hit_slide"])
            pair["hit_tile_url"] = tile_url(sid, pair["hit_x_um"], pair["hit_y_um"]) if sid else None
            if upload_id:
                pair["query_tile_url"] = f"/api/v1/uploads/{upload_id}/tile.png?x_um={pair['query_x_um']:.3f}&y_um={pair['query_y_um']:.3f}"
            else:
                qid = query_slides.get(pair["query_slide"])
                pair["query_tile_url"] = tile_url(qid, pair["query_x_um"], pair["query_y_um"]) if qid else None


@bp.get("/patients/<patient>/matches/<other>")
def matches(patient: str, other: str):
    """The most similar tile pairs between two patients' selected tiles (greedy one-to-one by cosine)."""
    from eagle_index.search import match_tiles, patient_tiles
    from eagle_index.store import cohorts_repo

    svc = service()
    pairs = int_arg("pairs", 5, 1, 25)
    top_k = svc.settings.eagle.top_k
    tiles = []
    for name in (patient, other):
        pid = browse.patient_row(svc.catalog, name)
        selected = patient_tiles(cohorts_repo.artifact_paths(svc.catalog, pid), top_k)
        if selected is None:
            raise ApiError(404, f"patient {name!r} has no slide artifacts (imported vectors): no tiles to match")
        tiles.append(selected)
    hit = {"patient": other, "explanation": match_tiles(tiles[0], tiles[1], pairs)}
    _tile_urls(svc, [hit], query=patient)
    return jsonify({"patient": patient, "other": other, "pairs": hit["explanation"]})
