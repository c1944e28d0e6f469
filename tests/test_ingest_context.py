"""Ingestion steps take their collaborators explicitly (`IngestContext`), never the service."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import numpy as np
import pytest

from eagle_index.config import Settings
from eagle_index.errors import ModelError
from slide_fixtures import write_pyramidal_tiff

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "eagle_index" / "ingest" / "steps.py"


def test_steps_do_not_import_the_service():
    imported = set()
    for node in ast.walk(ast.parse(STEPS.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    assert not {m for m in imported if m.startswith(("eagle_index.service", "eagle_index.server"))}, imported


def test_every_step_parameter_is_typed_and_none_is_a_service():
    from eagle_index.ingest import steps

    for name in ("ingest_files", "write_artifact", "embed_to_artifact", "store_slide", "reaggregate_patient"):
        params = inspect.signature(getattr(steps, name)).parameters
        first = next(iter(params.values()))
        assert first.name == "ctx" and first.annotation in ("IngestContext", steps.IngestContext), (name, first)
        assert "service" not in params, name


@pytest.fixture
def slide(tmp_path):
    return write_pyramidal_tiff(tmp_path / "CTX-0001.tiff", mpp=0.5, size_um=(6 * 448.0, 4 * 448.0),
                                tissue_boxes_um=[(448.0, 448.0, 3 * 448.0, 2 * 448.0)]).path


def test_a_worker_identity_stores_without_loading_the_owners_models(tmp_path, slide, monkeypatch):
    """The Ray owner's path: results and a `ModelIdentity` come from a worker; the context must
    not load models (they may not even be present on the owner)."""
    from eagle_index.fingerprint import slide_fingerprint
    from eagle_index.ingest.steps import ModelIdentity, SlideJob, compute_slide
    from eagle_index.ingest.worker import store_job_result
    from eagle_index.models import load_models
    from eagle_index.service import EagleService

    settings = Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")
    models = load_models(settings)  # "the worker"
    result = compute_slide(models, settings, SlideJob(slide, "CTX-0001", None))
    identity = ModelIdentity.of(models)

    def no_models(_self):
        raise ModelError("the owner has no weights")

    monkeypatch.setattr(EagleService, "models", property(no_models))
    with EagleService(settings) as service:
        with pytest.raises(ModelError):  # the context's models are loaded on demand only ...
            service.ingest_context().models
        service.jobs.enqueue(slide_fingerprint(slide), str(slide), "CTX-0001")
        claimed = service.jobs.claim()
        slide_id = store_job_result(service.ingest_context(), claimed, result, 1.0, identity=identity)  # ... and not needed here
        assert slide_id > 0
        hits = service.search_patient("CTX-0001", k=1)  # the only patient: no neighbours, but its vector is stored
        assert hits == ()
        sets = {s.kind: s for s in service.catalog.vector_sets()}
        assert sets["eagle"].signature == identity.signature("eagle") and sets["eagle"].count == 1


def test_ingest_through_the_context_equals_embed(tmp_path, slide):
    from eagle_index.service import EagleService

    settings = Settings(data_dir=tmp_path / "data", models="tiny", device="cpu")
    with EagleService(settings) as service:
        embedded = service.embed([slide], patient="CTX-0001")["CTX-0001"]
        report = service.ingest([slide], patient="CTX-0001")
        assert [i.slide for i in report.ingested] == ["CTX-0001"] and report.patients == ("CTX-0001",)
        ids, vectors = service.catalog.load_vectors("eagle", service.models.signature("eagle"))
        assert len(ids) == 1
        stored = vectors[0]
        np.testing.assert_allclose(stored / np.linalg.norm(stored), embedded.eagle / np.linalg.norm(embedded.eagle), atol=1e-5)
