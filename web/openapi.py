"""The OpenAPI 3.1 document of `/api/v1` (served at /api/v1/openapi.json).

Written by hand, one entry per route; `tests/test_web_api.py` checks that every route the
app registers is documented here with its methods, and nothing more.
"""

from __future__ import annotations

from functools import lru_cache

JSON = "application/json"


def _param(spec: str) -> dict:
    """'name:in:type[:required]' (type integer, number, string, boolean, array) -> parameter object."""
    name, where, kind, *rest = spec.split(":")
    schema = {"type": "array", "items": {"type": "string"}} if kind == "array" else {"type": kind}
    param = {"name": name, "in": where, "schema": schema, "required": where == "path" or rest == ["required"]}
    if kind == "array":
        param.update(style="form", explode=True)
    return param


FILTER_PARAMS = ["label:query:array", "cohort:query:array", "min_score:query:number", "exclude_site:query:boolean",
                 "site_label:query:string", "exclude_same:query:array", "exclude_patient:query:array", "in_annotation:query:array"]
PAGE = ["limit:query:integer", "offset:query:integer"]

# (method, path, tag, summary, parameters, request body kind, success status, success media type)
ROUTES = [
    ("get", "/health", "server", "Liveness (no token needed)", [], None, 200, JSON),
    ("get", "/stats", "server", "Counts of patients, slides, labels, vectors", [], None, 200, JSON),
    ("get", "/status", "ingestion", "Queue counts, running jobs with progress, failures, throughput, index sizes", [], None, 200, JSON),
    ("get", "/meta", "server", "Vector sets, labels, cohorts, probes, probe models, export formats", [], None, 200, JSON),
    ("get", "/tasks/{task_id}", "server", "A background task: state, progress, result or error", ["task_id:path:string"], None, 200, JSON),
    ("get", "/openapi.json", "server", "This document", [], None, 200, JSON),
    ("get", "/patients", "catalog", "Patients (type-ahead q, label/cohort/kind filters, paging)",
     ["q:query:string", "label:query:array", "cohort:query:array", "kind:query:string", *PAGE], None, 200, JSON),
    ("get", "/patients/{patient}", "catalog", "A patient: labels, slides, vectors, cohorts, selected tiles", ["patient:path:string"], None, 200, JSON),
    ("get", "/patients/{patient}/labels", "labels", "A patient's labels", ["patient:path:string"], None, 200, JSON),
    ("post", "/patients/{patient}/labels", "labels", "Add or replace one label {name, value}", ["patient:path:string"], "label", 200, JSON),
    ("get", "/patients/{patient}/thumbnail.png", "images", "Thumbnail of the patient's main slide with its selected tile boxes",
     ["patient:path:string", "size:query:integer"], None, 200, "image/png"),
    ("get", "/patients/{patient}/matches/{other}", "search", "Most similar tile pairs between two patients",
     ["patient:path:string", "other:path:string", "pairs:query:integer"], None, 200, JSON),
    ("get", "/slides", "catalog", "Slides (patient, status, name filters, paging)",
     ["patient:query:string", "status:query:string", "q:query:string", *PAGE], None, 200, JSON),
    ("get", "/slides/{slide_id}", "catalog", "A slide with its candidate tiles (all_tiles=1: every tissue tile)",
     ["slide_id:path:integer", "all_tiles:query:integer"], None, 200, JSON),
    ("get", "/slides/{slide_id}/thumbnail.png", "images", "Slide thumbnail (boxes=selected|none)",
     ["slide_id:path:integer", "size:query:integer", "boxes:query:string"], None, 200, "image/png"),
    ("get", "/slides/{slide_id}/tile.png", "images", "A tile the pipeline read, by top-left µm coordinates",
     ["slide_id:path:integer", "x_um:query:number:required", "y_um:query:number:required"], None, 200, "image/png"),
    ("get", "/labels", "labels", "Label names with their values and counts", [], None, 200, JSON),
    ("post", "/labels", "labels", "Import a clinical table (multipart: file, create_missing)", [], "labels-upload", 200, JSON),
    ("get", "/search", "search", "Top-k look-alikes of a stored patient: always {hits, vote}; each hit as the CLI's --json prints it",
     ["patient:query:string:required", "k:query:integer", "kind:query:string", "signature:query:string", *FILTER_PARAMS,
      "explain:query:boolean", "pairs:query:integer", "vote:query:string"], None, 200, JSON),
    ("post", "/search", "search", "Search by patient or vector with filters; full result (hits, vote, notes)", [], "search", 200, JSON),
    ("post", "/search/upload", "search", "Search by an uploaded slide (multipart); 202 with a task", [], "slide-upload", 202, JSON),
    ("post", "/search/tiles", "search", "Region search: tiles like a stored tile or slide region (JSON) or an image (multipart), "
     "grouped by patient", [], "tiles", 200, JSON),
    ("get", "/uploads/{upload_id}/thumbnail.png", "images", "Thumbnail of an uploaded query slide",
     ["upload_id:path:string", "size:query:integer"], None, 200, "image/png"),
    ("get", "/uploads/{upload_id}/tile.png", "images", "A tile of an uploaded query slide",
     ["upload_id:path:string", "x_um:query:number:required", "y_um:query:number:required"], None, 200, "image/png"),
    ("get", "/cohorts", "cohorts", "Saved cohorts", [], None, 200, JSON),
    ("post", "/cohorts", "cohorts", "Create (materialise) a cohort {name, definition, replace}", [], "cohort", 201, JSON),
    ("post", "/cohorts/preview", "cohorts", "Member count of a definition without saving it", [], "cohort-definition", 200, JSON),
    ("get", "/cohorts/{name}", "cohorts", "A cohort's definition and members (paged)", ["name:path:string", *PAGE], None, 200, JSON),
    ("delete", "/cohorts/{name}", "cohorts", "Delete a cohort", ["name:path:string"], None, 200, JSON),
    ("post", "/cohorts/{name}/refresh", "cohorts", "Materialise the saved definition again", ["name:path:string"], None, 200, JSON),
    ("get", "/cohorts/{name}/members", "cohorts", "Members (paged)", ["name:path:string", *PAGE], None, 200, JSON),
    ("get", "/cohorts/{name}/export/{fmt}", "cohorts", "Download: stamp | clinical | eagle-h5 | parquet",
     ["name:path:string", "fmt:path:string", "kind:query:string"], None, 200, "application/octet-stream"),
    ("get", "/cohorts/{name}/map", "cohorts", "2-D map (UMAP, else PCA) of the members, with cohort membership",
     ["name:path:string", "kind:query:string", "signature:query:string", "seed:query:integer"], None, 200, JSON),
    ("get", "/quality/duplicates", "cohorts", "Near-duplicate patients with label conflicts",
     ["threshold:query:number", "kind:query:string", "cohort:query:string"], None, 200, JSON),
    ("get", "/eval/retrieval", "search", "Leave-one-patient-out retrieval metrics (the CLI's `eval retrieval --json`)",
     ["label:query:string:required", "k:query:string", "kind:query:string", "signature:query:string", "cohort:query:string",
      "exclude_site:query:boolean", "site_label:query:string"], None, 200, JSON),
    ("get", "/quality/leakage", "cohorts", "Leakage between two cohorts",
     ["a:query:string:required", "b:query:string:required", "threshold:query:number", "kind:query:string"], None, 200, JSON),
    ("get", "/probes", "probes", "Probes with status and training progress", [], None, 200, JSON),
    ("post", "/probes", "probes", "Train a probe in the background; 202 with a task", [], "probe", 202, JSON),
    ("get", "/probes/{name}", "probes", "A probe: status, progress, metrics (mean ± sd), per fold", ["name:path:string"], None, 200, JSON),
    ("delete", "/probes/{name}", "probes", "Delete a probe and its scores", ["name:path:string"], None, 200, JSON),
    ("get", "/probes/{name}/roc", "probes", "ROC curves of the out-of-fold predictions (pooled and per fold)", ["name:path:string"], None, 200, JSON),
    ("get", "/probes/{name}/training-set", "probes", "Training patients, labels, folds, out-of-fold probabilities",
     ["name:path:string"], None, 200, JSON),
    ("post", "/probes/{name}/apply", "probes", "Score the archive or a cohort; the top candidates", ["name:path:string"], "apply", 200, JSON),
    ("get", "/probes/{name}/candidates", "probes", "Ranked candidates of the latest application (paged)",
     ["name:path:string", "exclude_training:query:boolean", *PAGE], None, 200, JSON),
    ("get", "/probes/{name}/candidates.csv", "probes", "Ranked candidates as CSV (all of them)",
     ["name:path:string", "exclude_training:query:boolean"], None, 200, "text/csv"),
    ("post", "/fewshot", "probes", "Few-shot curve (k labelled patients per class); 202 with a task", [], "fewshot", 202, JSON),
    ("post", "/compare", "probes", "Two probes per label on the same folds (DeLong, Benjamini-Hochberg); 202 with a task",
     [], "compare", 202, JSON),
    ("get", "/jobs", "ingestion", "Ingestion jobs", ["state:query:string", "limit:query:integer"], None, 200, JSON),
    ("post", "/jobs", "ingestion", "Queue slide files inside the server's ingest folders", [], "jobs", 202, JSON),
    ("post", "/jobs/{job_id}/retry", "ingestion", "Re-queue a failed job", ["job_id:path:integer"], None, 200, JSON),
    ("get", "/slides/{slide_id}/dzi", "viewer", "Deep Zoom descriptor of a slide (format=jpeg|png)",
     ["slide_id:path:integer", "format:query:string"], None, 200, "application/xml"),
    ("get", "/slides/{slide_id}/tiles/{level}/{col}_{row}.{fmt}", "viewer", "A Deep Zoom tile (ETag; out of range: 404)",
     ["slide_id:path:integer", "level:path:integer", "col:path:integer", "row:path:integer", "fmt:path:string"], None, 200, "image/jpeg"),
    ("get", "/slides/{slide_id}/overlays", "viewer", "Viewer overlays: tissue tiles with attention, selected tiles (µm and px)",
     ["slide_id:path:integer"], None, 200, JSON),
    ("get", "/patients/{patient}/viewer", "viewer", "A patient's slides for the viewer and its selected tiles",
     ["patient:path:string"], None, 200, JSON),
    ("get", "/compare", "viewer", "Two patients side by side with the matching tile pairs",
     ["query:query:string:required", "hit:query:string:required", "pairs:query:integer"], None, 200, JSON),
    # annotations (issue 23): <slide> is a slide name, or a slide id (digits that name no slide)
    ("get", "/slides/{slide}/annotations", "annotations", "A slide's annotations (GeoJSON geometry in level-0 px)",
     ["slide:path:string"], None, 200, JSON),
    ("post", "/slides/{slide}/annotations", "annotations", "Draw one {geometry, name, class_name, color}; 201 + the annotation",
     ["slide:path:string"], "annotation", 201, JSON),
    ("post", "/slides/{slide}/annotations/import", "annotations", "Import QuPath GeoJSON (multipart file, or the GeoJSON as body)",
     ["slide:path:string"], "geojson-upload", 200, JSON),
    ("get", "/slides/{slide}/annotations.geojson", "annotations", "The slide's annotations as a QuPath FeatureCollection (download)",
     ["slide:path:string"], None, 200, "application/geo+json"),
    ("get", "/annotations", "annotations", "Every annotation, or one slide's (?slide=)", ["slide:query:string", "limit:query:integer"],
     None, 200, JSON),
    ("get", "/annotations/{annotation_id}", "annotations", "One annotation", ["annotation_id:path:integer"], None, 200, JSON),
    ("put", "/annotations/{annotation_id}", "annotations", "Change any of name, class_name, color, geometry",
     ["annotation_id:path:integer"], "annotation-edit", 200, JSON),
    ("delete", "/annotations/{annotation_id}", "annotations", "Delete one annotation", ["annotation_id:path:integer"], None, 200, JSON),
    ("post", "/annotations/delete", "annotations", "Delete several {ids}: all or none", [], "annotation-ids", 200, JSON),
]

BODIES = {
    "label": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "value": {"type": ["string", "number", "null"]}}},
    "search": {"type": "object", "properties": {
        "patient": {"type": "string"}, "vector": {"type": "array", "items": {"type": "number"}}, "k": {"type": "integer"},
        "kind": {"type": "string"}, "signature": {"type": "string"}, "filters": {"$ref": "#/components/schemas/Filters"},
        "explain": {"type": "boolean"}, "pairs": {"type": "integer"}, "vote": {"type": "string"}}},
    "cohort-definition": {"type": "object", "properties": {"definition": {"$ref": "#/components/schemas/CohortDefinition"}}},
    "cohort": {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "definition": {"$ref": "#/components/schemas/CohortDefinition"}, "replace": {"type": "boolean"}}},
    "probe": {"type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "kind": {"type": "string"}, "model": {"type": "string", "enum": ["logreg", "mlp"]},
        "folds": {"type": "integer"}, "seed": {"type": "integer"}, "name": {"type": "string"}, "positive": {"type": "string"},
        "vs_rest": {"type": "boolean"}, "cohort": {"type": "string"}}},
    "apply": {"type": "object", "properties": {"cohort": {"type": "string"}, "top": {"type": "integer"}, "exclude_training": {"type": "boolean"}}},
    "fewshot": {"type": "object", "required": ["label"], "properties": {
        "label": {"type": "string"}, "kind": {"type": "string"}, "ks": {"type": "array", "items": {"type": "integer"}},
        "draws": {"type": "integer"}, "seed": {"type": "integer"}, "positive": {"type": "string"}, "vs_rest": {"type": "boolean"},
        "cohort": {"type": "string"}, "signature": {"type": "string"}}},
    "compare": {"type": "object", "required": ["labels"], "properties": {
        "labels": {"type": "array", "items": {"type": "string"}}, "kind": {"type": "string"}, "against": {"type": "string"},
        "model": {"type": "string", "enum": ["logreg", "mlp"]}, "against_model": {"type": "string", "enum": ["logreg", "mlp"]},
        "folds": {"type": "integer"}, "seed": {"type": "integer"}, "signature": {"type": "string"},
        "against_signature": {"type": "string"}, "positive": {"type": "string"}}},
    "jobs": {"type": "object", "required": ["paths"], "properties": {
        "paths": {"type": "array", "items": {"type": "string"}}, "patient": {"type": "string"}}},
    "annotation": {"type": "object", "required": ["geometry"], "properties": {
        "geometry": {"type": "object", "description": "GeoJSON Polygon, MultiPolygon, Point, ... in level-0 px"},
        "name": {"type": "string"}, "class_name": {"type": "string"}, "color": {"type": "string", "description": "#rrggbb"}}},
    "annotation-edit": {"type": "object", "properties": {
        "geometry": {"type": "object"}, "name": {"type": ["string", "null"]}, "class_name": {"type": ["string", "null"]},
        "color": {"type": ["string", "null"]}}},
    "annotation-ids": {"type": "object", "required": ["ids"], "properties": {"ids": {"type": "array", "items": {"type": "integer"}}}},
}
MULTIPART = {
    "labels-upload": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "create_missing": {"type": "boolean"}}},
    "geojson-upload": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "QuPath GeoJSON (FeatureCollection or feature list)"}}},
    "slide-upload": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary"}, "k": {"type": "integer"}, "kind": {"type": "string"},
        "patient": {"type": "string"}, "vote": {"type": "string"}, "explain": {"type": "boolean"}, "pairs": {"type": "integer"},
        "filters": {"type": "string", "description": "JSON object, as in POST /search"}}},
}
# POST /search/tiles takes either body (region search, eagle_index/region_search.py)
TILES_BODIES = {
    JSON: {"type": "object", "description": "one query: patient + tile, slide (name) or slide_id + x_um + y_um, or slide/slide_id + box",
           "properties": {
               "patient": {"type": "string"}, "tile": {"type": "integer", "description": "rank of the patient's selected tile"},
               "slide": {"type": "string"}, "slide_id": {"type": "integer"}, "x_um": {"type": "number"}, "y_um": {"type": "number"},
               "annotation": {"type": ["integer", "string"], "description": "an annotation of the slide (id or name): its tissue tiles"},
               "format": {"type": "string", "enum": ["json", "geojson"], "description": "geojson: the hits as a QuPath FeatureCollection"},
               "box": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4, "description": "[x_um, y_um, w_um, h_um]"},
               "k": {"type": "integer", "description": "tiles returned (default 20)"},
               "per_patient": {"type": "integer", "description": "at most this many tiles per patient (default 3)"},
               "include_same_patient": {"type": "boolean"}, "filters": {"$ref": "#/components/schemas/Filters"}}},
    "multipart/form-data": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "PNG/JPEG/TIFF image of a region"},
        "mpp": {"type": "number", "description": "µm/px of the image (required unless the file records a resolution)"},
        "k": {"type": "integer"}, "per_patient": {"type": "integer"}, "include_same_patient": {"type": "boolean"},
        "filters": {"type": "string", "description": "JSON object, as in POST /search"}}},
}
SCHEMAS = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["status", "message"], "properties": {
        "status": {"type": "integer"}, "message": {"type": "string"}, "field": {"type": "string"}}}}},
    "Filters": {"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "cohorts": {"type": "array", "items": {"type": "string"}}, "min_score": {"type": "number"},
        "exclude_patients": {"type": "array", "items": {"type": "string"}}, "exclude_same_site": {"type": "boolean"},
        "site_label": {"type": "string"}, "exclude_same": {"type": "array", "items": {"type": "string"}},
        "in_annotation": {"type": "array", "items": {"type": "string"},
                          "description": "annotation classes: a selected tile of the patient lies inside one"}}},
    "CohortDefinition": {"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
        "cohorts": {"type": "array", "items": {"type": "string"}}, "seeds": {"type": "array", "items": {"type": "string"}},
        "min_similarity": {"type": "number"}, "probe": {"type": "string"}, "min_probability": {"type": "number"},
        "kind": {"type": "string"}, "signature": {"type": "string"}}},
}


def _error(description: str) -> dict:
    return {"description": description, "content": {JSON: {"schema": {"$ref": "#/components/schemas/Error"}}}}


@lru_cache(maxsize=1)
def document() -> dict:
    paths: dict[str, dict] = {}
    for method, path, tag, summary, params, body, status, media in ROUTES:
        operation = {
            "tags": [tag], "summary": summary, "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '').replace('.', '_').replace('-', '_')}",
            "parameters": [_param(p) for p in params],
            "responses": {str(status): {"description": "success", "content": {media: {}}}, "400": _error("bad input (the field and reason)"),
                          "401": _error("access token required"), "404": _error("unknown id"), "500": _error("internal error")},
        }
        if path == "/health":
            operation["security"] = []
            del operation["responses"]["401"]
        if body in BODIES:
            operation["requestBody"] = {"required": True, "content": {JSON: {"schema": BODIES[body]}}}
        elif body == "tiles":
            operation["requestBody"] = {"required": True, "content": {m: {"schema": schema} for m, schema in TILES_BODIES.items()}}
            operation["responses"]["413"] = _error("upload larger than the server's limit")
        elif body in MULTIPART:
            operation["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": MULTIPART[body]}}}
            operation["responses"]["413"] = _error("upload larger than the server's limit")
        if method != "get":
            operation["responses"]["403"] = _error("CSRF token missing (browser requests)")
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "eagle-index API", "version": "1",
                 "description": "Look-alike search, cohorts and probes over an EAGLE embedding catalog. "
                                "Errors: {\"error\": {\"status\", \"message\", \"field\"?}}."},
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearer": []}],
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                                           "description": "only when the server has an access token"}}},
        "paths": paths,
    }
