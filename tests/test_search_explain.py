"""Explanations (matching tile pairs from slide artifacts) and queries by slide file."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eagle_index.aggregation import SlideCandidates
from eagle_index.config import Settings
from eagle_index.pipeline import SlideResult
from eagle_index.search import TileSelection, match_tiles
from eagle_index.service import EagleService
from eagle_index.store.artifacts import write_slide_artifact
from slide_fixtures import write_pyramidal_tiff

BOX = 448.0


def _artifact(path, name, tokens, x_um, scores):
    n = len(tokens)
    cand = SlideCandidates(name, np.arange(n), np.asarray(x_um, float), np.zeros(n), np.asarray(scores, np.float32),
                           np.asarray(tokens, np.float32))
    result = SlideResult(name=name, x_um=cand.x_um, y_um=cand.y_um, feats=np.ones((n, 4), np.float32), scores=cand.scores,
                         candidates=cand, tile_um=448.0, tile_px=224)
    return write_slide_artifact(path, result)


def _store(service, patient, vector, slides=()):
    def _tx(session):
        pid = service.catalog.patient_id(session, patient, create=True)
        service.catalog.put_vectors(session, "eagle", "sig", [pid], np.asarray(vector, np.float32)[None, :], source="test")
        for name, path in slides:
            service.catalog.add_slide(session, pid, name, f"test:{name}", status="done", artifact_path=str(path))

    service.catalog.write(_tx)


def test_match_tiles_greedy_one_to_one():
    eye = np.eye(3, dtype=np.float32)
    q = TileSelection(["a"] * 3, np.array([0.0, 1, 2]), np.zeros(3), np.zeros(3), eye)
    h = TileSelection(["b"] * 3, np.array([10.0, 11, 12]), np.zeros(3), np.zeros(3), eye[[2, 0, 1]])
    pairs = match_tiles(q, h, pairs=5)
    assert len(pairs) == 3 and all(p.similarity == pytest.approx(1.0) for p in pairs)
    assert {(p.query_x_um, p.hit_x_um) for p in pairs} == {(0.0, 11.0), (1.0, 12.0), (2.0, 10.0)}
    one = match_tiles(q, TileSelection(["b"], np.array([5.0]), np.zeros(1), np.zeros(1), eye[:1]), pairs=5)
    assert len(one) == 1 and one[0].query_x_um == 0.0  # each hit tile used once


def test_explanations_from_artifacts(service, tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(6, 16)).astype(np.float32)
    # query: two slides; hit: the same tiles in another order on one slide (+ noise); other: imported vector only
    q1 = _artifact(tmp_path / "q1.h5", "Q-DX1", tokens[:4], [0, 448, 896, 1344], [9, 8, 7, 6])
    q2 = _artifact(tmp_path / "q2.h5", "Q-DX2", tokens[4:], [0, 448], [5, 4])
    perm = np.array([3, 5, 0, 1, 4, 2])
    h1 = _artifact(tmp_path / "h1.h5", "H-DX1", tokens[perm] + 0.01 * rng.normal(size=(6, 16)), np.arange(6) * 1000.0, np.arange(6)[::-1])
    _store(service, "Q", tokens.mean(0), [("Q-DX1", q1), ("Q-DX2", q2)])
    _store(service, "H", tokens.mean(0) + 0.01, [("H-DX1", h1)])
    _store(service, "OTHER", tokens.mean(0) + 0.5 * rng.normal(size=16))
    hits = service.search_patient("Q", k=2, explain=True, pairs=3)
    assert [h.patient for h in hits] == ["H", "OTHER"]
    assert hits[1].explanation is None  # imported: no artifacts
    pairs = [p.as_dict() for p in hits[0].explanation]
    assert len(pairs) == 3 and [p["similarity"] for p in pairs] == sorted((p["similarity"] for p in pairs), reverse=True)
    query_pos = {("Q-DX1", 0.0): 0, ("Q-DX1", 448.0): 1, ("Q-DX1", 896.0): 2, ("Q-DX1", 1344.0): 3, ("Q-DX2", 0.0): 4, ("Q-DX2", 448.0): 5}
    for p in pairs:
        assert p["similarity"] > 0.99 and p["hit_slide"] == "H-DX1"
        token_row = query_pos[(p["query_slide"], p["query_x_um"])]
        assert perm[int(p["hit_x_um"] // 1000)] == token_row
    plain = service.searcher.search_patient("OTHER", k=1, explain=True)
    assert plain.notes and "no explanation" in plain.notes[0]


@pytest.fixture(scope="module")
def slide_archive(tmp_path_factory):
    """Tiny-model catalog with two ingested patients, and a third patient's slide kept aside."""
    folder = tmp_path_factory.mktemp("slides")
    boxes = {"TCGA-AA-0001-01Z-00-DX1": ("cells", 0.5, 1), "TCGA-BB-0002-01Z-00-DX1": ("fat", 1.0, 2),
             "TCGA-CC-0003-01Z-00-DX1": ("cells", 0.5, 3)}
    paths = {}
    for name, (texture, mpp, seed) in boxes.items():
        paths[name] = write_pyramidal_tiff(folder / f"{name}.tiff", mpp=mpp, size_um=(6 * BOX, 5 * BOX), seed=seed,
                                           tissue_boxes_um=[(BOX, BOX, 3 * BOX, 3 * BOX)], texture=texture).path
    settings = Settings(data_dir=tmp_path_factory.mktemp("data"), models="tiny", device="cpu")
    with EagleService(settings) as service:
        service.ingest([paths["TCGA-AA-0001-01Z-00-DX1"], paths["TCGA-BB-0002-01Z-00-DX1"]])
    return settings, paths


def test_query_by_slide_is_not_stored_and_never_returns_itself(slide_archive):
    settings, paths = slide_archive
    with EagleService(settings) as service:
        before = service.stats()
        stored = service.search_patient("TCGA-AA-0001", k=5)
        # the same slide as a query: same vector, its own patient excluded
        again = service.searcher.search_slides([paths["TCGA-AA-0001-01Z-00-DX1"]], k=5, explain=True)
        assert [h.patient for h in again.hits] == [h.patient for h in stored]
        np.testing.assert_allclose([h.score for h in again.hits], [h.score for h in stored], rtol=1e-5)
        assert "TCGA-AA-0001" not in [h.patient for h in again.hits]
        assert again.query["stored"] is False and len(again.query["selection"]) > 0
        assert again.hits[0].explanation and {"query_slide", "hit_slide", "similarity"} <= set(again.hits[0].explanation[0].as_dict())
        new = service.searcher.search_slides([paths["TCGA-CC-0003-01Z-00-DX1"]], k=5)
        assert {h.patient for h in new.hits} == {"TCGA-AA-0001", "TCGA-BB-0002"}
        # a vote on a label the archive does not have is an error naming it (issue 21 item 2)
        from eagle_index.errors import NotFoundError

        with pytest.raises(NotFoundError, match="unknown label 'none'"):
            service.searcher.search_slides([paths["TCGA-CC-0003-01Z-00-DX1"]], k=5, vote="none")
        assert service.stats() == before  # nothing stored
        explained = service.search_patient("TCGA-BB-0002", k=1, explain=True, pairs=2)
        assert len(explained[0].explanation) == 2


def test_query_by_slide_cli_with_store(slide_archive, tmp_path):
    settings, paths = slide_archive
    run = [sys.executable, "-m", "eagle_index", "search", "--slide", paths["TCGA-CC-0003-01Z-00-DX1"], "--models", "tiny",
           "--data-dir", settings.data_dir, "--json"]
    out = subprocess.run([str(a) for a in run + ["--store", "--explain"]], capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    hits = json.loads(out.stdout)
    assert {h["patient"] for h in hits} == {"TCGA-AA-0001", "TCGA-BB-0002"} and all("explanation" in h for h in hits)
    with EagleService(settings) as service:
        assert service.stats()["patients"] == 3
        # stored again: nothing new, so the query patient is found by the slide's content (Catalog.patients_holding)
        again = service.searcher.search_slides([Path(paths["TCGA-CC-0003-01Z-00-DX1"])], k=5, store=True)
        assert {h.patient for h in again.hits} == {"TCGA-AA-0001", "TCGA-BB-0002"} and again.query["patient"] == "TCGA-CC-0003"
