"""Look-alike search: by stored patient (GET, the CLI's shape), by patient or vector with filters
(POST, the full result), by uploaded slide (a background task), and matching tile pairs."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
from flask import Blueprint, jsonify, request

from eagle_index.formats.suffixes import UPLOAD_SUFFIXES
from eagle_index.limits import MAX_K  # one limit for the CLI, the API and the service
from web.api.params import (bool_arg, bool_value, check_object, float_arg, identifier_field, int_arg, int_field, json_body,
                            label_args, service, str_field, tasks)
from web.errors import ApiError, user_named

bp = Blueprint("search", __name__)

KEEP_UPLOADS = 50


def _filters_from_args():
    from eagle_index.search import SearchFilters

    labels = label_args("label")
    cohorts = [c for c in request.args.getlist("cohort") if c]
    min_score = float_arg("min_score", None, -1.0, 1.0)
    exclude_site = bool_arg("exclude_site")
    exclude_same = [v for v in request.args.getlist("exclude_same") if v]
    exclude_patients = [v for v in request.args.getlist("exclude_patient") if v]
    in_annotation = [v for v in request.args.getlist("in_annotation") if v]
    if not (labels or cohorts or min_score is not None or exclude_site or exclude_same or exclude_patients or in_annotation):
        return None
    return SearchFilters.build(labels=labels, cohorts=cohorts, min_score=min_score, exclude_patients=exclude_patients,
                               exclude_same_site=exclude_site, site_label=request.args.get("site_label") or "site",
                               exclude_same=exclude_same, in_annotation=in_annotation)


@bp.get("/search")
def search():
    """Hits for a stored patient: always {"hits": [...], "vote": {...} | null}; each hit is the JSON
    `eagle-index search --patient ID --json` prints."""
    patient = request.args.get("patient")
    if not patient:
        raise ApiError(400, "patient is required", field="patient")
    k = int_arg("k", 10, 1, MAX_K)
    kind = request.args.get("kind") or None
    signature = request.args.get("signature") or None
    filters = _filters_from_args()
    explain = bool_arg("explain")
    pairs = int_arg("pairs", 5, 1, 25)
    vote = request.args.get("vote") or None
    result = service().search(patient=patient, k=k, kind=kind, signature=signature, filters=filters, explain=explain,
                              vote=vote, pairs=pairs)
    return jsonify({"hits": [h.as_dict() for h in result.hits], "vote": result.vote})


@bp.get("/eval/retrieval")
def eval_retrieval():
    """Leave-one-patient-out Acc@k, MV@k, mAP@k over the patients with `label` (k: comma-separated)."""
    label = request.args.get("label")
    if not label:
        raise ApiError(400, "label is required", field="label")
    try:
        ks = [int(v) for v in (request.args.get("k") or "1,3,5").split(",") if v.strip()]
    except ValueError:
        raise ApiError(400, "k must be comma-separated whole numbers", field="k") from None
    if not ks or any(k < 1 or k > MAX_K for k in ks):
        raise ApiError(400, f"k values must be between 1 and {MAX_K}", field="k")
    report = service().searcher.evaluate_retrieval(
        label, ks, request.args.get("kind") or None, request.args.get("signature") or None,
        request.args.get("cohort") or None, bool_arg("exclude_site"), request.args.get("site_label") or "site")
    return jsonify(report)


def _filters_from_body(body: dict):
    from eagle_index.errors import InputError
    from eagle_index.search import SearchFilters

    raw = body.get("filters")
    if raw is None:
        return SearchFilters()
    if not isinstance(raw, dict):
        raise ApiError(400, "filters must be an object", field="filters")
    raw = check_object(raw, "filters", lists=("cohorts", "exclude_patients", "exclude_same", "in_annotation"), numbers=("min_score",),
                       strings=("site_label",), bools=("exclude_same_site",), mappings=("labels",))
    min_score = raw.get("min_score")
    if min_score is not None and not -1.0 <= min_score <= 1.0:  # the bounds GET's min_score has: a cosine
        raise ApiError(400, f"filters.min_score must be between -1 and 1 (a cosine), got {min_score!r}", field="filters")
    try:
        return SearchFilters.from_dict(raw)
    except (InputError, TypeError) as exc:
        raise ApiError(400, f"filters: {exc}", field="filters") from None


def render(svc, result, upload_id: str | None = None) -> dict:
    """The page/API JSON of a search result: its dict, plus image URLs (thumbnails, matching tiles)."""
    out = result.as_dict()
    with_files = svc.browse.with_slide_files([h.patient for h in result.hits])
    for hit in out["hits"]:
        hit["thumbnail_url"] = f"/api/v1/patients/{hit['patient']}/thumbnail.png" if hit["patient"] in with_files else None
        for pair in hit.get("explanation") or ():
            _pair_urls(pair, upload_id)
    return out


@bp.post("/search")
def search_full():
    """Search by {"patient": ID} or {"vector": [...]}, with filters, explanations and a vote; the full result."""
    body = json_body()
    patient = str_field(body, "patient")
    vector = body.get("vector")
    if (patient is None) == (vector is None):
        raise ApiError(400, "give exactly one query: patient or vector", field="patient")
    k = int_field(body, "k", 10, 1, MAX_K)
    kind = str_field(body, "kind")
    signature = str_field(body, "signature")
    explain = bool_value(body.get("explain"), "explain")
    pairs = int_field(body, "pairs", 5, 1, 25)
    vote = str_field(body, "vote")
    filters = _filters_from_body(body)
    svc = service()
    if patient is not None:
        result = svc.search(patient=patient, k=k, kind=kind, signature=signature, filters=filters, explain=explain,
                            vote=vote, pairs=pairs)
    else:
        if not isinstance(vector, list) or not vector or len(vector) > 65536 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in vector):
            raise ApiError(400, "vector must be a non-empty list of numbers", field="vector")
        wide = np.asarray(vector, dtype=np.float64)
        if np.isfinite(wide).all() and np.abs(wide).max() > np.finfo(np.float32).max:
            raise ApiError(400, f"vector: value {wide[np.abs(wide).argmax()]:.3g} is too large for float32 "
                                "(vectors are searched as float32, |x| at most 3.4e+38)", field="vector")
        with np.errstate(under="ignore"):
            array = wide.astype(np.float32)
        if not np.all(np.isfinite(array)) or not np.any(array):
            raise ApiError(400, "vector must be finite and not all zeros", field="vector")
        result = svc.search(vector=array, k=k, kind=kind, signature=signature, filters=filters, vote=vote)
    return jsonify(render(svc, result))


def _store_upload(svc, upload) -> tuple[str, Path]:
    suffix = Path(upload.filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ApiError(400, f"slide files must be one of {', '.join(UPLOAD_SUFFIXES)} (got {suffix or 'no extension'})", field="file")
    folder = svc.settings.data_dir / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    upload_id = uuid.uuid4().hex
    target = folder / f"{upload_id}{suffix}"
    try:
        upload.save(target)
    except BaseException:  # client gone mid-upload, disk full: nothing half-written stays
        target.unlink(missing_ok=True)
        raise
    if suffix in (".png", ".jpg", ".jpeg"):  # plain images are decoded whole: a decompression bomb is a 400 now
        from eagle_index.errors import InputError
        from eagle_index.limits import ImageTooLarge, open_image, slide_image_pixels

        try:
            open_image(target, Path(upload.filename).name[:200], slide_image_pixels()).close()
        except ImageTooLarge as exc:
            target.unlink(missing_ok=True)
            raise ApiError(400, str(exc), field="file") from None
        except InputError:  # unreadable: the embedding task reports it, as for any other slide
            pass
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
    kind = form.get("kind") or None
    patient = identifier_field(form, "patient", "patient")  # the identifier rule (was cut to 200 characters)
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
            result = svc.search(slides=[path], k=k, kind=kind, patient=patient or f"upload-{upload_id[:8]}", filters=filters,
                                explain=explain, vote=vote, pairs=pairs)
        except BaseException as exc:
            path.unlink(missing_ok=True)  # a failed upload is not kept
            if isinstance(exc, EagleIndexError):  # name the user's file, never the server's path
                raise type(exc)(user_named(str(exc), path, original)) from None
            raise
        progress(1, 2, "searching")
        out = render(svc, result, upload_id)
        out["query"]["slides"] = [original]
        out["upload"] = {"id": upload_id, "name": original, "thumbnail_url": f"/api/v1/uploads/{upload_id}/thumbnail.png"}
        progress(2, 2, "done")
        return out

    task = tasks().submit("search-upload", work, upload=upload_id, name=original)
    return jsonify({"task": task.id, "upload": upload_id, "status_url": f"/api/v1/tasks/{task.id}"}), 202


def _pair_urls(pair: dict, upload_id: str | None = None) -> dict:
    """Tile image URLs of a matching pair (a query tile of an uploaded slide comes from the upload)."""
    from web.urls import tile_url

    sid = pair.get("hit_slide_id")
    pair["hit_tile_url"] = tile_url(sid, pair["hit_x_um"], pair["hit_y_um"]) if sid else None
    if upload_id:
        pair["query_tile_url"] = f"/api/v1/uploads/{upload_id}/tile.png?x_um={pair['query_x_um']:.3f}&y_um={pair['query_y_um']:.3f}"
    else:
        qid = pair.get("query_slide_id")
        pair["query_tile_url"] = tile_url(qid, pair["query_x_um"], pair["query_y_um"]) if qid else None
    return pair


@bp.get("/patients/<patient>/matches/<other>")
def matches(patient: str, other: str):
    """The most similar tile pairs between two patients' selected tiles (greedy one-to-one by cosine)."""
    pairs = service().searcher.match_patients(patient, other, int_arg("pairs", 5, 1, 25))
    return jsonify({"patient": patient, "other": other, "pairs": [_pair_urls(p.as_dict()) for p in pairs]})
