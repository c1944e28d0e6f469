"""Cohorts: create (with a live preview of the member count), list, members, refresh, delete,
export downloads, the 2-D map, and the duplicate and leakage reports."""

from __future__ import annotations

import json

import re
import uuid

from flask import Blueprint, jsonify, request, send_file

from web.api.params import bool_value, check_object, choice, float_arg, identifier_field, int_arg, json_body, page_args, service
from web.errors import ApiError

bp = Blueprint("cohorts", __name__)

EXPORT_SUFFIX = {"stamp": ".csv", "clinical": ".csv", "eagle-h5": ".h5", "parquet": ".parquet"}
EXPORT_MIME = {".csv": "text/csv", ".h5": "application/x-hdf5", ".parquet": "application/vnd.apache.parquet"}


def _definition(body: dict):
    from eagle_index.cohorts import CohortDefinition
    from eagle_index.errors import InputError

    raw = body.get("definition", {})
    if not isinstance(raw, dict):
        raise ApiError(400, "definition must be an object", field="definition")
    raw = check_object(raw, "definition", lists=("cohorts", "seeds"), numbers=("min_similarity", "min_probability", "version"),
                       strings=("probe", "kind", "signature"), mappings=("labels",))
    try:
        return CohortDefinition.from_dict(raw)
    except (InputError, TypeError, ValueError) as exc:
        raise ApiError(400, f"definition: {exc}", field="definition") from None


def _member_page(svc, name: str, limit: int, offset: int) -> dict:
    shown = svc.cohorts.show(name, limit=offset + limit)
    members = shown["members"][offset:offset + limit]
    return {"cohort": name, "total": shown["member_count"], "limit": limit, "offset": offset, "members": members}


@bp.get("/cohorts")
def cohorts():
    return jsonify(service().cohorts.list())


@bp.post("/cohorts")
def create():
    """{"name", "definition": {labels, cohorts, seeds, min_similarity, probe, min_probability, kind, signature}, "replace"}."""
    body = json_body()
    name = identifier_field(body, "name", "cohort name", required=True)  # one URL path segment: /cohorts/<name>
    definition = _definition(body)
    replace = bool_value(body.get("replace"), "replace")
    return jsonify(service().cohorts.create(name, definition, replace=replace)), 201


@bp.post("/cohorts/preview")
def preview():
    """Materialise a definition without saving it: the member count and the first members (live count)."""
    return jsonify(service().cohorts.preview(_definition(json_body())))


@bp.get("/cohorts/<name>")
def show(name: str):
    svc = service()
    limit, offset = page_args(100, 10000)
    shown = svc.cohorts.show(name, limit=offset + limit).as_dict()
    shown["members"] = shown["members"][offset:offset + limit]
    shown.update(limit=limit, offset=offset)
    return jsonify(shown)


@bp.delete("/cohorts/<name>")
def delete(name: str):
    service().cohorts.delete(name)
    return jsonify({"deleted": name})


@bp.post("/cohorts/<name>/refresh")
def refresh(name: str):
    return jsonify(service().cohorts.refresh(name))


@bp.get("/cohorts/<name>/members")
def members(name: str):
    limit, offset = page_args(100, 10000)
    return jsonify(_member_page(service(), name, limit, offset))


@bp.get("/cohorts/<name>/export/<fmt>")
def export(name: str, fmt: str):
    """Download the cohort as a STAMP slide table, clinical table, EAGLE-layout .h5 or Parquet."""
    svc = service()
    fmt = choice(fmt, "format", tuple(EXPORT_SUFFIX))
    kind = request.args.get("kind") or None  # None: the cohort's own kind
    suffix = EXPORT_SUFFIX[fmt]
    folder = svc.settings.data_dir / "cache" / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{uuid.uuid4().hex}{suffix}"
    report = svc.cohorts.export(name, fmt, out, kind=kind)
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "cohort"
    response = send_file(out, mimetype=EXPORT_MIME[suffix], as_attachment=True, download_name=f"{safe}-{fmt}{suffix}", max_age=0)
    response.headers["X-Export-Rows"] = str(report.get("rows", 0))
    response.headers["X-Export-Members"] = str(report.get("members", 0))
    response.headers["X-Export-Notes"] = json.dumps(report.get("notes", []), ensure_ascii=True)
    response.call_on_close(lambda: out.unlink(missing_ok=True))
    return response


@bp.get("/cohorts/<name>/map")
def cohort_map(name: str):
    """2-D UMAP (PCA without umap-learn) of the members; each point lists the saved cohorts it belongs to."""
    svc = service()
    kind = request.args.get("kind") or None  # None: the cohort's kind, as in `cohort umap`
    signature = request.args.get("signature") or None
    seed = int_arg("seed", 0, 0, 2**31 - 1)
    result = svc.cohorts.umap(name, kind=kind, signature=signature, seed=seed)
    membership: dict[str, list[str]] = {}
    for other in svc.cohorts.list():
        for patient in svc.cohorts.members(other["name"]):
            membership.setdefault(patient, []).append(other["name"])
    for point in result["points"]:
        point["cohorts"] = membership.get(point["patient"], [])
    result.pop("path", None)  # a server path is of no use to a client
    return jsonify(result)


@bp.get("/quality/duplicates")
def duplicates():
    """Near-duplicate patients (cosine >= threshold) in the archive or one cohort, with label conflicts."""
    threshold = float_arg("threshold", 0.95, -1.0, 1.0)
    kind = request.args.get("kind") or "eagle"
    cohort = request.args.get("cohort") or None
    return jsonify(service().cohorts.duplicates(threshold=threshold, kind=kind, cohort=cohort))


@bp.get("/quality/leakage")
def leakage():
    """Patients shared by two cohorts and near-duplicate pairs across them."""
    a, b = request.args.get("a"), request.args.get("b")
    if not a:
        raise ApiError(400, "a (the first cohort) is required", field="a")
    if not b:
        raise ApiError(400, "b (the second cohort) is required", field="b")
    if a == b:
        raise ApiError(400, f"a and b are the same cohort ({a!r}): every member would count as leaked; choose two cohorts", field="b")
    threshold = float_arg("threshold", 0.95, -1.0, 1.0)
    kind = request.args.get("kind") or "eagle"
    return jsonify(service().cohorts.leakage(a, b, threshold=threshold, kind=kind))
