"""The small archive the web tests use, built once per test session and copied per module.

Five generated slides of four patients (CASE-001 has two), embedded with the tiny models, and
36 patients with imported EAGLE vectors of the same signature in three clusters (no slide
files: the UI shows placeholders). IMP-001 and IMP-002 are near-duplicates, so IMP-002 is
IMP-001's top hit. Labels: TISSUE (dense/pale/fatty), SITE (site-A/B), MSI (high/low, tied to
the clusters so a probe has something to find; unknown for IMP-025..036, the candidates).

Run as a script to build a playground: `python tests/test_web_fixtures.py DIR`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

TILE_UM = 448.0
TISSUES = ("dense", "pale", "fatty")
SLIDED = [("CASE-001", "dense", 2), ("CASE-002", "dense", 1), ("CASE-003", "fatty", 1), ("CASE-004", "pale", 1)]
IMPORTED = 36
MSI_KNOWN = 24  # imported patients with an MSI value; the other 12 are what a probe should rank


def _write_slides(folder: Path) -> Path:
    from eagle_index.demo import TISSUE_TYPES
    from eagle_index.slides.synthetic import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    rows = ["PATIENT,FILENAME"]
    seed = 0
    for patient, tissue, count in SLIDED:
        texture, palette = TISSUE_TYPES[tissue]
        for n in range(count):
            seed += 1
            path = folder / f"{patient}-S{n + 1}.tiff"
            cols, nrows = 5 + (seed % 2), 4
            write_pyramidal_tiff(path, mpp=1.0, size_um=(cols * TILE_UM, nrows * TILE_UM),
                                 tissue_boxes_um=[(TILE_UM, TILE_UM, (cols - 2) * TILE_UM, (nrows - 2) * TILE_UM)],
                                 texture=texture, palette=palette, seed=seed)
            rows.append(f"{patient},{path.name}")
    table = folder / "slides.csv"
    table.write_text("\n".join(rows) + "\n")
    return table


def imported_vectors(dim: int, seed: int = 7) -> tuple[list[str], list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim))
    names, tissues, rows = [], [], []
    for i in range(IMPORTED):
        tissue = i % 3
        names.append(f"IMP-{i + 1:03d}")
        tissues.append(TISSUES[tissue])
        rows.append(centers[tissue] + 0.45 * rng.normal(size=dim))
    matrix = np.asarray(rows, dtype=np.float32)
    matrix[1] = matrix[0] + 0.01 * rng.normal(size=dim)  # IMP-002: a near-duplicate of IMP-001 (a rescan)
    return names, tissues, matrix


def build_archive(root: Path) -> Path:
    """Build (or reuse) the archive under `root`; returns its data dir."""
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = root / "data"
    if (root / "ready").exists():
        return data
    shutil.rmtree(root, ignore_errors=True)
    table = _write_slides(root / "slides")
    with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as service:
        report = service.ingest([root / "slides"], slide_table=table)
        assert not report.failed, report.failed
        eagle = next(s for s in service.catalog.vector_sets("eagle"))
        names, tissues, matrix = imported_vectors(eagle.dim)
        def _tx(session):
            ids = [service.catalog.patient_id(session, n, create=True) for n in names]
            service.catalog.put_vectors(session, "eagle", eagle.signature, ids, matrix, source="test-import")

        service.catalog.write(_tx)
        service.vectors.sync_all()
        lines = ["PATIENT,TISSUE,SITE,MSI"]
        for i, (patient, tissue, _) in enumerate(SLIDED):
            lines.append(f"{patient},{tissue},site-{'AB'[i % 2]},{'high' if tissue == 'dense' else 'low'}")
        for i, (patient, tissue) in enumerate(zip(names, tissues)):  # MSI unknown for the last 12: candidates
            msi = ("high" if tissue == "dense" else "low") if i < MSI_KNOWN else ""
            lines.append(f"{patient},{tissue},site-{'AB'[i % 2]},{msi}")
        (root / "clinical.csv").write_text("\n".join(lines) + "\n")
        service.import_labels(root / "clinical.csv")
    (root / "ready").write_text("ok\n")
    return data


def archive_copy(tmp_path_factory, name: str) -> Path:
    """A private copy of the session's archive data dir (slides and artifacts are shared, read-only)."""
    source = build_archive(tmp_path_factory.getbasetemp() / "web-archive")
    target = tmp_path_factory.mktemp(name) / "data"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("cache", "uploads", "owner.*"))
    return target


# -- helpers of the API test modules ---------------------------------------------------------------
PNG = b"\x89PNG\r\n\x1a\n"
# (method, rule) of every /api/v1 route requested from an api_env app -> node ids of the tests that
# requested it (the route-coverage check counts only the API modules' own tests that passed).
CALLED: dict[tuple[str, str], set[str]] = {}


def rule_path(rule: str) -> str:
    """A Flask rule as an OpenAPI path under /api/v1: /api/v1/slides/<int:slide_id> -> /slides/{slide_id}."""
    import re

    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)[len("/api/v1"):]


def api_env(tmp_path_factory, name: str):
    """A service on a private archive copy and an app whose API calls are recorded in CALLED (a generator)."""
    import os

    from flask import request

    from eagle_index.config import Settings
    from eagle_index.service import EagleService
    from web import create_app

    data = archive_copy(tmp_path_factory, name)
    inbox = tmp_path_factory.mktemp(f"{name}-inbox")
    outside = tmp_path_factory.mktemp(f"{name}-outside")
    service = EagleService(Settings(data_dir=data, models="tiny", device="cpu"))
    app = create_app(service=service, owner={"role": "serve", "roots": [inbox]})

    @app.after_request
    def _record(response):
        if request.url_rule is not None and request.url_rule.rule.startswith("/api/v1"):
            test = os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0]  # "path::name (call)"
            CALLED.setdefault((request.method, request.url_rule.rule), set()).add(test)
        return response

    yield {"app": app, "client": app.test_client(), "service": service, "data": data, "inbox": inbox, "outside": outside,
           "slides": tmp_path_factory.getbasetemp() / "web-archive" / "slides"}
    service.close()


def error_of(response, status: int, field: str | None = None) -> str:
    """Assert the one JSON error shape (no traceback) with this status (and field); the message."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["status"] == status
    assert "Traceback" not in response.get_data(as_text=True)
    if field is not None:
        assert body["error"]["field"] == field, body
    return body["error"]["message"]


def wait_task(client, task_id: str, timeout: float = 120) -> dict:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        task = client.get(f"/api/v1/tasks/{task_id}").get_json()
        if task["state"] in ("done", "failed"):
            return task
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish")


def test_archive_has_slides_imports_and_labels(tmp_path_factory):
    from eagle_index.config import Settings
    from eagle_index.service import EagleService

    data = archive_copy(tmp_path_factory, "archive-check")
    with EagleService(Settings(data_dir=data, models="tiny", device="cpu")) as service:
        stats = service.stats()
        assert stats["patients"] == len(SLIDED) + IMPORTED and stats["slides"] == 5
        assert stats["vectors"]["eagle"] == len(SLIDED) + IMPORTED
        assert service.search_patient("IMP-001", k=1)[0].patient == "IMP-002"


if __name__ == "__main__":
    print(build_archive(Path(sys.argv[1])))
